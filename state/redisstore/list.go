package redisstore

import (
	"cmp"
	"context"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/comfygate/comfygate/state"
)

// listScript finds the next entries of a listing in one atomic read of all
// the indexes it spans, so that a record moving between two of them (a new
// state) is seen in exactly one. KEYS: the indexes; ARGV: 1 the highest
// score (ms) taken, 2 the lowest, 3 the cursor's score (” at the start), 4
// the cursor's id, 5 how many. Each index is read from the top score down,
// past the entries at the cursor's score that were listed already (ties);
// returns up to n (id, score) pairs, newest first, ties by id descending.
const listScript = `
local n = tonumber(ARGV[5])
local cms, cid = tonumber(ARGV[3]), ARGV[4]
local out = {}
for _, k in ipairs(KEYS) do
  local off, got = 0, 0
  while got < n do
    local batch = redis.call('ZRANGE', k, ARGV[1], ARGV[2], 'BYSCORE', 'REV', 'LIMIT', off, n, 'WITHSCORES')
    for i = 1, #batch, 2 do
      local id, sc = batch[i], tonumber(batch[i + 1])
      if cms == nil or sc < cms or (sc == cms and id < cid) then
        out[#out + 1] = {sc, id}
        got = got + 1
        if got == n then break end
      end
    end
    if #batch < 2 * n then break end
    off = off + n
  end
end
table.sort(out, function(a, b) if a[1] ~= b[1] then return a[1] > b[1] end return a[2] > b[2] end)
local res = {}
for i = 1, math.min(n, #out) do
  res[#res + 1] = out[i][2]
  res[#res + 1] = tostring(out[i][1])
end
return res
`

// List implements state.Lister from the indexes the save script keeps:
// one atomic read of the indexes the query spans in each bucket, merged,
// then the records. An
// index entry whose record has expired is skipped (and removed); the next
// read goes on from the last entry read, so a page is full unless the
// listing has ended.
func (b *Backend) List(ctx context.Context, q state.ListQuery) (state.ListPage, error) {
	states := q.States
	if len(states) == 0 {
		states = state.ListStates
	}
	keys := func(bucket int) []string {
		keys := make([]string, len(states))
		for i, st := range states {
			keys[i] = b.keys.List(bucket, q.Owner, q.DeploymentID, state.ListState(st))
		}
		return keys
	}
	high, low := "+inf", "-inf"
	if !q.To.IsZero() {
		// The scores are milliseconds: the bound's own millisecond may
		// hold requests created before it, which Matches keeps.
		high = strconv.FormatInt(q.To.UnixMilli(), 10)
	}
	if !q.From.IsZero() {
		low = strconv.FormatInt(q.From.UnixMilli(), 10)
	}
	at := q.After
	want := q.Limit + 1 // one more tells whether the listing goes on
	var found []*state.Record
	for len(found) < want {
		n := want - len(found)
		cursorMs := ""
		top := high
		if !at.IsZero() {
			cursorMs = strconv.FormatInt(at.CreatedMs, 10)
			if top == "+inf" || float64(at.CreatedMs) < parseBound(top) {
				top = cursorMs
			}
		}
		res, err := b.listNext(ctx, keys, []any{top, low, cursorMs, at.ID, n}, n)
		if err != nil {
			return state.ListPage{}, unavailable(ctx, "list", err)
		}
		if len(res) == 0 {
			break
		}
		recs, err := b.records(ctx, res)
		if err != nil {
			return state.ListPage{}, err
		}
		var gone []string
		for i, rec := range recs {
			id := res[2*i]
			ms, _ := strconv.ParseInt(res[2*i+1], 10, 64)
			at = state.ListCursor{CreatedMs: ms, ID: id}
			switch {
			case rec == nil:
				gone = append(gone, id)
			case q.Matches(rec):
				found = append(found, rec)
			}
		}
		if len(gone) > 0 {
			b.forgetListed(ctx, keys, gone)
		}
		if len(res)/2 < n {
			break // the indexes have no more
		}
	}
	page := state.ListPage{Records: found}
	if len(found) > q.Limit {
		page.Records = found[:q.Limit]
		page.Next = page.Records[q.Limit-1].Cursor()
	}
	return page, nil
}

// listNext runs the list script in every bucket, in one pipeline, and
// merges the answers: the first n (id, score) pairs of them all, newest
// first, ties by id descending, as the script orders one bucket's.
func (b *Backend) listNext(ctx context.Context, keys func(bucket int) []string, args []any, n int) ([]string, error) {
	nb := b.keys.Buckets()
	calls := make([]scriptCall, nb)
	for i := range calls {
		calls[i] = scriptCall{keys: keys(i), args: args}
	}
	cmds := b.runAll(ctx, b.list, calls)
	if nb == 1 {
		return cmds[0].StringSlice()
	}
	type entry struct {
		id string
		ms float64
		sc string
	}
	var all []entry
	for _, cmd := range cmds {
		res, err := cmd.StringSlice()
		if err != nil {
			return nil, err
		}
		for i := 0; i+1 < len(res); i += 2 {
			all = append(all, entry{id: res[i], ms: parseBound(res[i+1]), sc: res[i+1]})
		}
	}
	slices.SortFunc(all, func(a, c entry) int {
		if a.ms != c.ms {
			return cmp.Compare(c.ms, a.ms)
		}
		return strings.Compare(c.id, a.id)
	})
	out := make([]string, 0, 2*min(n, len(all)))
	for _, e := range all[:min(n, len(all))] {
		out = append(out, e.id, e.sc)
	}
	return out, nil
}

// parseBound is a ZRANGE score bound as a number ("(123" is 123).
func parseBound(s string) float64 {
	if s == "+inf" {
		return math.Inf(1)
	}
	if s != "" && s[0] == '(' {
		s = s[1:]
	}
	f, _ := strconv.ParseFloat(s, 64)
	return f
}

// records reads the records of the listed (id, score) pairs; nil for one
// that has expired.
func (b *Backend) records(ctx context.Context, pairs []string) ([]*state.Record, error) {
	pipe := b.rdb.Pipeline()
	cmds := make([]*redis.SliceCmd, len(pairs)/2)
	for i := range cmds {
		cmds[i] = pipe.HMGet(ctx, b.recordKey(pairs[2*i]), "data", "synced", "epoch")
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, unavailable(ctx, "list", err)
	}
	recs := make([]*state.Record, len(cmds))
	for i, cmd := range cmds {
		vals := cmd.Val()
		data, _ := vals[0].(string)
		if data == "" {
			continue
		}
		synced, _ := vals[1].(string)
		epoch, _ := vals[2].(string)
		rec, err := decodeRecord(data, synced, epoch)
		if err != nil {
			return nil, fmt.Errorf("redis list: %s: %w", pairs[2*i], err)
		}
		recs[i] = rec
	}
	return recs, nil
}

// forgetListed removes from the indexes (of each id's bucket) the entries
// of records that have expired. A failure is left for a later listing to
// repeat.
func (b *Backend) forgetListed(ctx context.Context, keys func(bucket int) []string, ids []string) {
	pipe := b.rdb.Pipeline()
	for _, id := range ids {
		for _, k := range keys(b.keys.Bucket(id)) {
			pipe.ZRem(ctx, k, id)
		}
	}
	if _, err := pipe.Exec(ctx); err != nil && ctx.Err() == nil {
		b.log.Debug("expired records left in the listing indexes", "error", err)
	}
}
