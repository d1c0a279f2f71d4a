package redisstore_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"testing"

	"github.com/comfygate/comfygate/runcomfy"
	"github.com/comfygate/comfygate/state"
)

// saveScriptBeforeEpochs is the save script of the version before epochs, as
// a replica of it runs during a rolling upgrade.
const saveScriptBeforeEpochs = `
local cur = redis.call('HMGET', KEYS[1], 'seq', 'rank')
local seq = tonumber(cur[1]) or 0
local rank = tonumber(cur[2]) or 0
if seq + 1 ~= tonumber(ARGV[1]) or tonumber(ARGV[2]) < rank then
  return {0, redis.call('HGET', KEYS[1], 'data')}
end
redis.call('HSET', KEYS[1], 'seq', ARGV[1], 'rank', ARGV[2], 'data', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[3])
return {1}
`

// TestWriteAfterAVersionWithoutEpochs: during a rolling upgrade a replica of
// the version before epochs writes a record this version created (its JSON
// has no epoch; the hash keeps the epoch field). This version reads the
// record in its epoch and goes on writing it.
func TestWriteAfterAVersionWithoutEpochs(t *testing.T) {
	ctx := context.Background()
	b := newBackend(t)
	rdb := server.Client(t)
	tr, err := state.NewTracker(state.TrackerConfig{Store: b, Results: noResults{}})
	if err != nil {
		t.Fatal(err)
	}
	// An id of its own: KEYS looks past the test's prefix, and a key of an
	// earlier run (-count) would answer too.
	id := "req-upgrade-" + rand.Text()
	pos := int64(3)
	first, _, err := tr.Apply(ctx, state.Update{RequestID: id, DeploymentID: "d", Source: "submit", State: runcomfy.StateQueued, QueuePosition: &pos})
	if err != nil {
		t.Fatal(err)
	}
	keys, err := rdb.Keys(ctx, "*req:{"+id+"}").Result()
	if err != nil || len(keys) != 1 {
		t.Fatalf("record keys %v, %v; want one", keys, err)
	}
	before := first.Clone()
	before.Seq, before.State, before.Epoch, before.QueuePosition = 2, runcomfy.StateRunning, 0, nil
	data, err := json.Marshal(before)
	if err != nil {
		t.Fatal(err)
	}
	if err := rdb.Eval(ctx, saveScriptBeforeEpochs, keys, 2, 2, string(data), 3600000, "unwatched").Err(); err != nil {
		t.Fatal(err)
	}
	got, err := b.Get(ctx, id)
	if err != nil || got.Epoch != first.Epoch || got.Seq != 2 {
		t.Fatalf("Get after the old version's write: %+v, %v; want epoch %d seq 2", got, err, first.Epoch)
	}
	// Another replica of this version, which never saw the record.
	other, err := state.NewTracker(state.TrackerConfig{Store: b, Results: noResults{}})
	if err != nil {
		t.Fatal(err)
	}
	rec, outcome, err := other.Apply(ctx, state.Update{RequestID: id, DeploymentID: "d", Source: "callback", State: runcomfy.StateFailed, Error: &runcomfy.JobError{Type: "oom"}})
	if err != nil || outcome != state.Applied || rec.Epoch != first.Epoch || rec.Seq != 3 {
		t.Fatalf("write after the old version's: %+v, %v, %v; want applied at epoch %d seq 3", rec, outcome, err, first.Epoch)
	}
}

type noResults struct{}

func (noResults) Result(context.Context, string, string) (*runcomfy.ResultResponse, error) {
	return nil, context.Canceled
}
