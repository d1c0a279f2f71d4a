package backoff

import (
	"testing"
	"time"
)

func TestExponential(t *testing.T) {
	tests := []struct {
		name    string
		e       Exponential
		attempt int
		want    time.Duration
	}{
		{"first", Exponential{Base: 20 * time.Millisecond, Max: 500 * time.Millisecond}, 0, 20 * time.Millisecond},
		{"doubles", Exponential{Base: 20 * time.Millisecond, Max: 500 * time.Millisecond}, 3, 160 * time.Millisecond},
		{"capped", Exponential{Base: 20 * time.Millisecond, Max: 500 * time.Millisecond}, 5, 500 * time.Millisecond},
		{"no cap", Exponential{Base: 50 * time.Millisecond}, 4, 800 * time.Millisecond},
		{"huge attempt, capped", Exponential{Base: time.Millisecond, Max: time.Second}, 1000, time.Second},
		{"huge attempt, no cap", Exponential{Base: time.Second}, 1000, time.Second << 30},
		{"negative attempt", Exponential{Base: time.Second}, -3, time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.e.Delay(tt.attempt); got != tt.want {
				t.Errorf("Delay(%d) = %v, want %v", tt.attempt, got, tt.want)
			}
		})
	}
}

func TestExponentialJitter(t *testing.T) {
	e := Exponential{Base: 10 * time.Millisecond, Max: 80 * time.Millisecond, Jitter: true}
	for attempt := range 6 {
		ceiling := Exponential{Base: e.Base, Max: e.Max}.Delay(attempt)
		for range 200 {
			if d := e.Delay(attempt); d <= 0 || d > ceiling {
				t.Fatalf("Delay(%d) = %v, want within (0, %v]", attempt, d, ceiling)
			}
		}
	}
}
