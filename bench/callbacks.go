package main

import (
	"fmt"
	"strconv"

	"github.com/comfygate/comfygate/webhook"
)

// bodySize is the size of every callback body the harness sends.
const bodySize = 1024

// phases of a request's life as callbacks report it.
const (
	phaseQueued = iota
	phaseRunning
	phaseSucceeded
	phases
)

// callbackPath is the authenticated callback path of a deployment, as the
// gateway hands it to RunComfy.
func callbackPath(secret, dep string) (string, error) {
	s, err := webhook.NewSigner([]string{secret})
	if err != nil {
		return "", err
	}
	return webhook.PathPrefix + dep + "/" + s.Token(dep), nil
}

// callbackBody appends a RunComfy-shaped callback (the fields of the documented
// examples) for request rid in the given phase, indented and padded with
// whitespace to bodySize as pretty-printed payloads are. queuePos is sent while
// queued when it is not negative.
func callbackBody(buf []byte, dep, rid string, phase int, queuePos int64) []byte {
	b := buf[:0]
	b = append(b, "{\n  \"request_id\": \""...)
	b = append(b, rid...)
	b = append(b, "\",\n  \"deployment_id\": \""...)
	b = append(b, dep...)
	b = append(b, "\",\n"...)
	base := "https://api.runcomfy.net/prod/v1/deployments/" + dep + "/requests/" + rid
	switch phase {
	case phaseQueued:
		b = append(b, "  \"status\": \"in_queue\",\n"...)
		if queuePos >= 0 {
			b = append(b, "  \"queue_position\": "...)
			b = strconv.AppendInt(b, queuePos, 10)
			b = append(b, ",\n"...)
		}
	case phaseRunning:
		b = append(b, "  \"status\": \"in_progress\",\n  \"instance_id\": \"inst-0b1f\",\n  \"started_at\": \"2026-11-18T10:01:00Z\",\n"...)
	case phaseSucceeded:
		b = append(b, "  \"status\": \"succeeded\",\n  \"instance_id\": \"inst-0b1f\",\n  \"output\": {\n    \"images\": [\n"...)
		for i := range 4 {
			if i > 0 {
				b = append(b, ",\n"...)
			}
			b = fmt.Appendf(b, "      \"https://cdn.runcomfy.net/outputs/%s/ComfyUI_%05d_.png\"", rid, i+1)
		}
		b = append(b, "\n    ]\n  },\n  \"started_at\": \"2026-11-18T10:01:00Z\",\n  \"finished_at\": \"2026-11-18T10:08:30Z\",\n"...)
	}
	b = append(b, "  \"status_url\": \""+base+"/status\",\n  \"result_url\": \""+base+"/result\",\n  \"cancel_url\": \""+base+"/cancel\",\n  \"created_at\": \"2026-11-18T10:00:00Z\""...)
	for range bodySize - len(b) - 2 {
		b = append(b, ' ')
	}
	return append(b, "\n}"...)
}
