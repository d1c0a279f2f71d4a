package memory

import (
	"context"

	"github.com/comfygate/comfygate/state"
)

// List implements state.Lister. The embedded backend serves one replica
// with its records in this process: it filters them all, under the lock
// that every save takes, which is its atomic step. (The Redis backend,
// which must stay cheap at millions of records, keeps indexes.)
func (b *Backend) List(ctx context.Context, q state.ListQuery) (state.ListPage, error) {
	if err := ctx.Err(); err != nil {
		return state.ListPage{}, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.now()
	var found []*state.Record
	for _, e := range b.records {
		if now.Before(e.expires) && q.Matches(e.rec) && q.After.Before(e.rec.CreatedMs(), e.rec.RequestID) {
			found = append(found, e.rec)
		}
	}
	state.SortNewestFirst(found)
	page := state.ListPage{}
	if len(found) > q.Limit {
		found = found[:q.Limit]
		page.Next = found[len(found)-1].Cursor()
	}
	page.Records = make([]*state.Record, len(found))
	for i, r := range found {
		page.Records[i] = r.Clone()
	}
	return page, nil
}
