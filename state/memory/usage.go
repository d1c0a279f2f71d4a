package memory

import (
	"context"
	"time"

	"github.com/comfygate/comfygate/state"
)

// countEnd adds a request's end to its owner's bucket of the hour it
// ended; b.mu is held (the save's own step).
func (b *Backend) countEnd(r *state.Record) {
	hours := b.usage[r.Owner]
	if hours == nil {
		hours = map[int64]map[string]int64{}
		b.usage[r.Owner] = hours
	}
	h := state.UsageHour(r)
	fields := hours[h]
	if fields == nil {
		fields = map[string]int64{}
		hours[h] = fields
	}
	for _, inc := range state.UsageIncrements(r) {
		fields[inc.Field] += inc.By
	}
}

// sweepUsage drops the buckets older than state.UsageRetention.
func (b *Backend) sweepUsage(now time.Time) {
	oldest := now.Add(-state.UsageRetention).Unix() / 3600
	for owner, hours := range b.usage {
		for h := range hours {
			if h < oldest {
				delete(hours, h)
			}
		}
		if len(hours) == 0 {
			delete(b.usage, owner)
		}
	}
}

// Usage implements state.UsageReader.
func (b *Backend) Usage(ctx context.Context, q state.UsageQuery) (state.Usage, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	u := state.Usage{}
	first, end := q.Hours()
	for h, fields := range b.usage[q.Owner] {
		if h >= first && h < end {
			u.Add(fields, q.DeploymentID)
		}
	}
	return u, nil
}
