package redisstore_test

import (
	"testing"

	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/state/statetest"
)

// TestScheduleConformance runs the schedule suite on Redis; newBackend gives
// each subtest a prefix of its own, so the shared {pending} set of one subtest
// never holds another's requests.
func TestScheduleConformance(t *testing.T) {
	for _, l := range layouts() {
		t.Run(l.name, func(t *testing.T) {
			statetest.RunSchedule(t, func(t *testing.T) statetest.ScheduleBackend { return l.new(t) })
		})
	}
}

func TestQueueConformance(t *testing.T) {
	for _, l := range layouts() {
		t.Run(l.name, func(t *testing.T) {
			statetest.RunQueue(t, func(t *testing.T) state.Queues { return l.new(t) })
		})
	}
}
