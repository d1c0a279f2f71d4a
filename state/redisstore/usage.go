package redisstore

import (
	"context"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/comfygate/comfygate/state"
)

// Usage implements state.UsageReader: one HGETALL per hour of the range and
// bucket, in one round trip, whatever the number of requests. A range reaching
// further back than state.UsageRetention starts there (older buckets have
// expired), and one past the next hour ends there (none are written yet).
func (b *Backend) Usage(ctx context.Context, q state.UsageQuery) (state.Usage, error) {
	first, end := q.Hours()
	now := time.Now().Unix() / 3600
	first, end = max(first, now-int64(state.UsageRetention/time.Hour)), min(end, now+2)
	pipe := b.rdb.Pipeline()
	var cmds []*redis.MapStringStringCmd
	for h := first; h < end; h++ {
		for bucket := range b.keys.Buckets() {
			cmds = append(cmds, pipe.HGetAll(ctx, b.keys.Usage(bucket, q.Owner, h)))
		}
	}
	u := state.Usage{}
	if len(cmds) == 0 {
		return u, nil
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, unavailable(ctx, "usage", err)
	}
	for _, cmd := range cmds {
		fields := make(map[string]int64, len(cmd.Val()))
		for k, v := range cmd.Val() {
			if n, err := strconv.ParseInt(v, 10, 64); err == nil {
				fields[k] = n
			}
		}
		u.Add(fields, q.DeploymentID)
	}
	return u, nil
}
