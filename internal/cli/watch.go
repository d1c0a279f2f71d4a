package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/internal/backoff"
)

// Reconnecting after UNAVAILABLE. The window is how long watch keeps trying
// without receiving anything: long enough for a rolling restart of the gateway,
// short enough that a gateway that is gone for good is reported.
const (
	reconnectWindow     = 30 * time.Second
	reconnectFirstDelay = 100 * time.Millisecond
	reconnectMaxDelay   = 2 * time.Second
)

// watchEvent is what the stream reader hands to the view: a new state, or a
// notice for stderr.
type watchEvent struct {
	state  *comfygatev1.RequestState
	notice string
}

// watch follows the request to its end and returns the exit code its outcome
// calls for. first is the state already known (submit --watch), or nil. The
// stream is read on a goroutine of its own so that, on a terminal, the live
// line's elapsed time keeps moving between states.
func (c *cli) watch(ctx context.Context, id string, first *comfygatev1.RequestState) (int, error) {
	v := &watchView{out: c.out, stderr: c.stderr, json: c.opts.json, live: c.tty && !c.opts.json, start: time.Now()}
	if first != nil && !c.opts.json {
		// In JSON the submit's own line already showed it.
		v.show(first)
	}
	events := make(chan watchEvent)
	var (
		last *comfygatev1.RequestState
		err  error
	)
	go func() {
		// Ends when the stream does; ctx (which the caller cancels on return
		// or on a signal) ends the stream.
		defer close(events)
		last, err = follow(ctx, c.client, c.opts.deployment, id, first, events)
	}()
	var tick <-chan time.Time
	if v.live {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		tick = t.C
	}
	for open := true; open; {
		select {
		case ev, ok := <-events:
			switch {
			case !ok:
				open = false
			case ev.state != nil:
				v.show(ev.state)
			default:
				v.notice(ev.notice)
			}
		case <-tick:
			v.redraw()
		}
	}
	// events is closed: last and err are set.
	if err != nil {
		v.end(nil)
		return ExitError, err
	}
	v.end(last)
	return watchExitCode(last), nil
}

// follow reads WatchRequest until the request's terminal state, sending every
// new state to events. When the stream ends with UNAVAILABLE (the gateway
// drains on SIGTERM, or the connection broke) after the gateway has been
// reached, it reconnects with after_epoch, after_seq and after_status set to
// the last state seen, so nothing is shown twice or missed and the request
// never shows an earlier state, even when its record was made again
// meanwhile (a new epoch). It returns the last state.
func follow(ctx context.Context, client comfygatev1.GatewayServiceClient, dep, id string, first *comfygatev1.RequestState, events chan<- watchEvent) (*comfygatev1.RequestState, error) {
	emit := func(ev watchEvent) {
		select {
		case events <- ev:
		case <-ctx.Done():
		}
	}
	last, after, epoch := first, first.GetSeq(), first.GetEpoch()
	// reached: the gateway has answered for this request, so UNAVAILABLE means
	// it went away mid-watch rather than that --addr is wrong.
	reached := first != nil
	var lostAt time.Time
	pace := backoff.Exponential{Base: reconnectFirstDelay, Max: reconnectMaxDelay}
	attempt := 0
	for {
		stream, err := client.WatchRequest(ctx, &comfygatev1.WatchRequestRequest{DeploymentId: dep, RequestId: id, AfterSeq: after, AfterEpoch: epoch, AfterStatus: last.GetStatus()})
		for err == nil {
			var msg *comfygatev1.WatchRequestResponse
			if msg, err = stream.Recv(); err != nil {
				break
			}
			st := msg.GetRequest()
			if st.GetSeq() != 0 && st.GetEpoch() == epoch && st.GetSeq() <= after {
				continue // shown already; the gateway does not send these, but a replica might
			}
			reached, lostAt, attempt = true, time.Time{}, 0
			if st.GetSeq() != 0 {
				after, epoch = st.GetSeq(), st.GetEpoch()
			}
			last = st
			emit(watchEvent{state: st})
		}
		if errors.Is(err, io.EOF) {
			if last == nil || !terminalStatus(last.GetStatus()) {
				return last, errors.New("the gateway ended the watch before the request finished")
			}
			return last, nil
		}
		if status.Code(err) != codes.Unavailable || !reached || ctx.Err() != nil {
			return last, err
		}
		if lostAt.IsZero() {
			lostAt = time.Now()
		} else if time.Since(lostAt) > reconnectWindow {
			return last, fmt.Errorf("gave up reconnecting after %s: %w", reconnectWindow, err)
		}
		emit(watchEvent{notice: fmt.Sprintf("%s; reconnecting to resume after seq %d", describeError(err), after)})
		t := time.NewTimer(pace.Delay(attempt))
		select {
		case <-ctx.Done():
			t.Stop()
			return last, ctx.Err()
		case <-t.C:
		}
		attempt++
	}
}

// watchView shows a watch as it goes: one JSON object per state (--json), one
// plain line per state, or on a terminal one live line rewritten in place.
type watchView struct {
	out    *errWriter
	stderr io.Writer
	json   bool
	live   bool
	start  time.Time
	cur    *comfygatev1.RequestState
	width  int // length of the live line on screen; 0 when there is none
}

// show presents a new state.
func (v *watchView) show(st *comfygatev1.RequestState) {
	v.cur = st
	switch {
	case v.json:
		writeJSON(v.out, st)
	case v.live:
		v.redraw()
	default:
		fmt.Fprintf(v.out, "%6.1fs  %s\n", time.Since(v.start).Seconds(), stateSummary(st))
	}
}

// redraw rewrites the live line: the current state and the time elapsed since
// the watch began, padded to hide what a longer line left.
func (v *watchView) redraw() {
	if !v.live || v.cur == nil {
		return
	}
	line := fmt.Sprintf("%s  %s", stateSummary(v.cur), time.Since(v.start).Round(time.Second))
	pad := max(0, v.width-len(line))
	fmt.Fprintf(v.out, "\r%s%s", line, strings.Repeat(" ", pad))
	if pad > 0 {
		// Put the cursor back at the end of the text.
		fmt.Fprintf(v.out, "\r%s", line)
	}
	v.width = len(line)
}

// breakLine ends the live line, so that what follows starts on a line of its
// own.
func (v *watchView) breakLine() {
	if v.width > 0 {
		fmt.Fprintln(v.out)
		v.width = 0
	}
}

// notice tells the person (on stderr, so that stdout stays parseable) that the
// watch is reconnecting.
func (v *watchView) notice(msg string) {
	v.breakLine()
	fmt.Fprintf(v.stderr, "comfygate watch: %s\n", msg)
	v.redraw()
}

// end closes the view after the last state: the output URLs of a success, the
// error of a failure. last is nil when the watch itself failed. JSON has
// nothing to add: the last line holds it all.
func (v *watchView) end(last *comfygatev1.RequestState) {
	v.breakLine()
	if last == nil || v.json {
		return
	}
	if e := last.GetError(); e != nil {
		fmt.Fprintf(v.out, "error: %s\n", errorText(e))
	}
	for _, u := range last.GetOutputUrls() {
		fmt.Fprintln(v.out, u)
	}
}
