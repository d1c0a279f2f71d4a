package memory_test

import (
	"testing"

	"github.com/comfygate/comfygate/state"
	"github.com/comfygate/comfygate/state/memory"
	"github.com/comfygate/comfygate/state/statetest"
)

func TestScheduleConformance(t *testing.T) {
	statetest.RunSchedule(t, func(t *testing.T) statetest.ScheduleBackend { return memory.New(nil) })
}

func TestQueueConformance(t *testing.T) {
	statetest.RunQueue(t, func(t *testing.T) state.Queues { return memory.New(nil) })
}
