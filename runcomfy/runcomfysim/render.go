package runcomfysim

import (
	"time"
)

// timeLayout is the timestamp format of /result: microseconds and a numeric UTC
// offset ("2025-07-01T12:00:00.123456+00:00"), never "Z".
const timeLayout = "2006-01-02T15:04:05.000000-07:00"

func fmtTime(t time.Time) string { return t.UTC().Format(timeLayout) }

// wireStateLocked spells a job's state as the active faults say; onStatus is true
// for the /status endpoint, the only one where "completed" has been seen.
func (s *Sim) wireStateLocked(j *job, onStatus bool) string {
	switch j.state {
	case stateSucceeded:
		if onStatus && s.faults.CompletedOnStatus {
			return "completed"
		}
	case stateCancelled:
		if s.faults.CanceledSpelling {
			return "canceled"
		}
	}
	return j.state.String()
}

// statusBodyLocked is the /status answer.
func (s *Sim) statusBodyLocked(j *job) map[string]any {
	m := map[string]any{
		"request_id": j.id,
		"status":     s.wireStateLocked(j, true),
		"status_url": j.url("status"),
		"result_url": j.url("result"),
	}
	if j.state == stateQueued {
		m["queue_position"] = s.queuePositionLocked(j)
	}
	if j.instanceID != "" {
		m["instance_id"] = j.instanceID
	}
	return m
}

// resultBodyLocked is the /result answer: the status alone until the job finishes,
// then outputs or error.
func (s *Sim) resultBodyLocked(j *job) map[string]any {
	m := map[string]any{
		"request_id": j.id,
		"status":     s.wireStateLocked(j, false),
		"created_at": fmtTime(j.createdAt),
	}
	s.addRunFieldsLocked(m, j)
	switch j.state {
	case stateSucceeded:
		m["outputs"] = s.outputsLocked(j)
	case stateFailed:
		m["error"] = s.errorValueLocked(j)
	}
	return m
}

// addRunFieldsLocked adds what is known once a job started or finished.
func (s *Sim) addRunFieldsLocked(m map[string]any, j *job) {
	if j.instanceID != "" {
		m["instance_id"] = j.instanceID
	}
	if !j.startedAt.IsZero() {
		m["started_at"] = fmtTime(j.startedAt)
	}
	if !j.finishedAt.IsZero() {
		m["finished_at"] = fmtTime(j.finishedAt)
	}
}

// outputsLocked is the per-node output structure of fixtures/webhooks/05: image
// nodes with file objects and a composite-id text node, so clients are tested on
// both channels and on node ids that are not plain integers.
func (s *Sim) outputsLocked(j *job) map[string]any {
	n := j.imageCount()
	images := make([]map[string]any, n)
	for i := range n {
		name := j.imageName(i)
		images[i] = map[string]any{
			"filename":  name,
			"subfolder": "",
			"type":      "output",
			"url":       j.base + "/media/" + j.id + "/" + name,
		}
	}
	caption := j.outcome.Caption
	if caption == "" {
		caption = "a caption"
	}
	return map[string]any{
		"9":     map[string]any{"images": images},
		"38:42": map[string]any{"text": [][]string{{caption}}},
	}
}

// errorValueLocked renders a failed job's error in the active style.
func (s *Sim) errorValueLocked(j *job) any {
	f := j.outcome.Error
	if f == nil {
		f = &Failure{
			Type:      "ExecutionError",
			Message:   "simulated failure",
			DebugInfo: "runcomfysim: the outcome function chose failure",
			Code:      12345,
		}
	}
	var obj map[string]any
	if s.faults.ErrorStyle == ErrorStyleTypeMessage {
		obj = map[string]any{"type": f.Type, "message": f.Message}
	} else {
		obj = map[string]any{
			"error":     f.Type,
			"details":   f.Message,
			"debugInfo": f.DebugInfo,
			"errorCode": f.Code,
		}
	}
	if s.faults.ErrorArray {
		return []any{obj}
	}
	return obj
}

// callbackBodyLocked is the webhook payload for the job's current state, in the
// shapes of fixtures/webhooks: in_queue carries only ids and URLs (no status, no
// deployment id); later states carry status, deployment and timestamps.
func (s *Sim) callbackBodyLocked(j *job) map[string]any {
	if j.state == stateQueued {
		return map[string]any{
			"request_id": j.id,
			"status_url": j.url("status"),
			"result_url": j.url("result"),
			"cancel_url": j.url("cancel"),
		}
	}
	m := map[string]any{
		"request_id":    j.id,
		"deployment_id": j.deployment,
		"status":        s.wireStateLocked(j, false),
		"created_at":    fmtTime(j.createdAt),
	}
	s.addRunFieldsLocked(m, j)
	switch j.state {
	case stateRunning:
		m["status_url"] = j.url("status")
		m["result_url"] = j.url("result")
		m["cancel_url"] = j.url("cancel")
	case stateSucceeded:
		if !s.faults.CallbackOmitOutputs {
			key := s.faults.CallbackOutputKey
			if key == "" {
				key = CallbackOutputSingular
			}
			m[key] = s.outputsLocked(j)
		}
	case stateFailed:
		m["error"] = s.errorValueLocked(j)
	}
	return m
}
