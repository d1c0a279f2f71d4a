package status

import (
	"testing"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/runcomfy"
)

// TestEveryStateHasARow: every state runcomfy knows and every status the API
// has is in the table, once, with a word; ranks never go down along the
// lifecycle, and the final states share the top rank.
func TestEveryStateHasARow(t *testing.T) {
	states := map[runcomfy.State]int{}
	protos := map[comfygatev1.Status]int{}
	words := map[string]int{}
	top := 0
	for _, i := range Table() {
		states[i.State]++
		protos[i.Proto]++
		words[i.Word]++
		top = max(top, i.Rank)
		if i.Word == "" || i.Word != i.State.String() {
			t.Errorf("%v: word %q, want the state's name %q", i.State, i.Word, i.State.String())
		}
	}
	// runcomfy's states are consecutive from StateUnknown; String names
	// every known one, so the first without a name is past the last.
	for s := runcomfy.StateUnknown; s == runcomfy.StateUnknown || s.String() != "unknown"; s++ {
		if states[s] != 1 {
			t.Errorf("runcomfy state %v has %d rows, want 1", s, states[s])
		}
	}
	for v := range comfygatev1.Status_name {
		p := comfygatev1.Status(v)
		if p == comfygatev1.Status_STATUS_UNSPECIFIED {
			continue // proto's zero value: never a request's status
		}
		if protos[p] != 1 {
			t.Errorf("API status %v has %d rows, want 1", p, protos[p])
		}
	}
	for w, n := range words {
		if n != 1 {
			t.Errorf("word %q is used by %d rows", w, n)
		}
	}
	prev := 0
	for _, i := range Table() {
		if i.Rank < prev {
			t.Errorf("%v: rank %d after %d: ranks go down along the lifecycle", i.State, i.Rank, prev)
		}
		prev = i.Rank
		if i.Terminal() != (i.Rank == top) {
			t.Errorf("%v: terminal %v with rank %d (top %d): only the final states take the top rank", i.State, i.Terminal(), i.Rank, top)
		}
	}
}

func TestLookups(t *testing.T) {
	for _, i := range Table() {
		if got := Of(i.State); got != i {
			t.Errorf("Of(%v) = %+v, want %+v", i.State, got, i)
		}
		if got := OfProto(i.Proto); got != i {
			t.Errorf("OfProto(%v) = %+v, want %+v", i.Proto, got, i)
		}
		if got, ok := OfWord(i.Word); !ok || got != i {
			t.Errorf("OfWord(%q) = %+v, %v; want %+v", i.Word, got, ok, i)
		}
	}
	for _, w := range []string{"", "done", "Queued", "STATUS_QUEUED", "queued "} {
		if got, ok := OfWord(w); ok {
			t.Errorf("OfWord(%q) = %+v, want none", w, got)
		}
	}
	if got := Of(runcomfy.State(99)); got.State != runcomfy.StateUnknown {
		t.Errorf("Of an undefined state = %+v, want the unknown row", got)
	}
	if got := OfProto(comfygatev1.Status(99)); got.State != runcomfy.StateUnknown {
		t.Errorf("OfProto of an undefined status = %+v, want the unknown row", got)
	}
}
