package cli

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	reqstatus "github.com/comfygate/comfygate/internal/status"
)

// statusOfWord is the status the CLI calls word ("queued").
func statusOfWord(word string) (comfygatev1.Status, bool) {
	i, ok := reqstatus.OfWord(word)
	return i.Proto, ok
}

// ls lists the requests once or, with --watch, again and again until ctx
// ends (then it exits as interrupted, like any command the user stops).
func (c *cli) ls(ctx context.Context) (int, error) {
	for {
		reqs, err := c.list(ctx)
		if err != nil {
			return ExitError, err
		}
		if c.opts.every > 0 && c.tty {
			fmt.Fprint(c.out, "\x1b[H\x1b[2J") // a fresh screen for each listing
		}
		if c.opts.json {
			for _, st := range reqs {
				writeJSON(c.out, st)
			}
		} else {
			writeTable(c.out, reqs, time.Now())
		}
		if c.opts.every == 0 {
			return ExitOK, nil
		}
		if !c.tty {
			fmt.Fprintln(c.out)
		}
		select {
		case <-ctx.Done():
			return ExitInterrupted, ctx.Err()
		case <-time.After(c.opts.every):
		}
	}
}

// list reads pages until --limit requests or the end.
func (c *cli) list(ctx context.Context) ([]*comfygatev1.RequestState, error) {
	req := &comfygatev1.ListRequestsRequest{DeploymentId: c.opts.deployment, Statuses: c.opts.statuses}
	if c.opts.since > 0 {
		req.CreatedAfter = timestamppb.New(time.Now().Add(-c.opts.since))
	}
	var out []*comfygatev1.RequestState
	for len(out) < c.opts.limit {
		req.PageSize = int32(min(c.opts.limit-len(out), 500))
		resp, err := c.client.ListRequests(ctx, req)
		if err != nil {
			return nil, err
		}
		out = append(out, resp.GetRequests()...)
		if resp.GetNextPageToken() == "" {
			break
		}
		req.PageToken = resp.GetNextPageToken()
	}
	return out, nil
}

// writeTable writes requests as aligned columns, times relative to now.
func writeTable(w io.Writer, reqs []*comfygatev1.RequestState, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "REQUEST\tDEPLOYMENT\tSTATUS\tCREATED\tQUEUED\tRAN")
	for _, st := range reqs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", st.GetRequestId(), st.GetDeploymentId(), statusName(st.GetStatus()),
			ago(st.GetCreatedAt(), now), span(st.GetQueueDuration()), span(st.GetRunDuration()))
	}
	_ = tw.Flush() // errWriter keeps the error
	if len(reqs) == 0 {
		fmt.Fprintln(w, "(no requests)")
	}
}

// ago is how long before now ts was: "3m ago".
func ago(ts *timestamppb.Timestamp, now time.Time) string {
	if ts == nil {
		return "-"
	}
	return span(durationpb.New(now.Sub(ts.AsTime()))) + " ago"
}

// span is a duration to the second (to the minute past an hour); "-" when
// absent.
func span(d *durationpb.Duration) string {
	if d == nil {
		return "-"
	}
	v := max(d.AsDuration(), 0)
	if v >= time.Hour {
		return v.Round(time.Minute).String()
	}
	return v.Round(time.Second).String()
}

// usage prints the usage of the last --since, as a table or as JSON.
func (c *cli) usage(ctx context.Context) (int, error) {
	now := time.Now()
	resp, err := c.client.GetUsage(ctx, &comfygatev1.GetUsageRequest{
		DeploymentId: c.opts.deployment, Start: timestamppb.New(now.Add(-c.opts.since)), End: timestamppb.New(now),
	})
	if err != nil {
		return ExitError, err
	}
	if c.opts.json {
		writeJSON(c.out, resp)
		return ExitOK, nil
	}
	tw := tabwriter.NewWriter(c.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "DEPLOYMENT\tSUCCEEDED\tFAILED\tCANCELLED\tQUEUE p50\tQUEUE p95\tRUN p50\tRUN p95\tRUN TOTAL")
	row := func(name string, d *comfygatev1.DeploymentUsage) {
		q, r := d.GetQueue(), d.GetRun()
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t%s\n", name, d.GetSucceeded(), d.GetFailed(), d.GetCancelled(),
			stat(q.GetCount(), q.GetP50()), stat(q.GetCount(), q.GetP95()), stat(r.GetCount(), r.GetP50()), stat(r.GetCount(), r.GetP95()), stat(r.GetCount(), r.GetSum()))
	}
	for _, d := range resp.GetDeployments() {
		row(d.GetDeploymentId(), d)
	}
	if len(resp.GetDeployments()) > 1 {
		row("(all)", resp.GetTotal())
	}
	_ = tw.Flush()
	if len(resp.GetDeployments()) == 0 {
		fmt.Fprintln(c.out, "(no request ended)")
	}
	return ExitOK, nil
}

// stat is a duration of a distribution, "-" when it has none.
func stat(n int64, d *durationpb.Duration) string {
	if n == 0 {
		return "-"
	}
	return span(d)
}
