package server

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestRunAside(t *testing.T) {
	errBoom := errors.New("boom")
	for _, tc := range []struct {
		name      string
		f         func() error
		wantErr   error
		wantPanic string // in the raised value's text, with the stack where f panicked
	}{
		{name: "nil", f: func() error { return nil }},
		{name: "error", f: func() error { return errBoom }, wantErr: errBoom},
		{name: "panic", f: func() error { panicAside(); return nil }, wantPanic: "aside went wrong"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var raised any
			err := func() (err error) {
				defer func() { raised = recover() }()
				return runAside(tc.f)
			}()
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("runAside = %v, want %v", err, tc.wantErr)
			}
			if tc.wantPanic == "" {
				if raised != nil {
					t.Errorf("raised %v, want no panic", raised)
				}
				return
			}
			text := fmt.Sprint(raised)
			if !strings.Contains(text, tc.wantPanic) || !strings.Contains(text, "panicAside") {
				t.Errorf("raised %q, want %q with the stack where it happened (panicAside)", text, tc.wantPanic)
			}
		})
	}
}

//go:noinline
func panicAside() { panic("aside went wrong") }
