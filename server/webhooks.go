package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/state"
)

// Webhooks is what the service needs of outbound webhooks: the tenants'
// settings and the deliveries (hooks.Deliverer and the tenants file, wired
// by internal/app).
type Webhooks interface {
	// Tenant returns the tenant's default endpoints, and whether it has a
	// secret to sign events with.
	Tenant(tenant string) (defaults []state.WebhookTarget, canSign bool)
	// CheckURL refuses an endpoint the gateway will not send to (scheme,
	// host, user info, length), before anything runs.
	CheckURL(raw string) error
	List(ctx context.Context, requestID string) ([]*state.Delivery, error)
	Redeliver(ctx context.Context, requestID, eventID string) ([]*state.Delivery, error)
}

// REST headers (forwarded as metadata) that name a submit's webhook.
const (
	webhookHeader       = "comfygate-webhook"
	webhookEventsHeader = "comfygate-webhook-events"
)

// errWebhooksOff: webhooks are not configured on this gateway.
var errWebhooksOff = errors.New("webhooks are not enabled on this gateway: its operator configures them with --tenants-file")

// errNoSigningSecret: the tenant has no secret to sign its events with.
var errNoSigningSecret = errors.New("the tenant has no webhook signing secret: its operator adds one in --tenants-file")

// errNoSuchEvent: the request has no event with that id.
var errNoSuchEvent = errors.New("no such event")

// submitWebhooks resolves the webhook targets of a submit: the one it names
// (the webhook field, or the REST headers) and the tenant's defaults. named
// identifies the one it names ("" for none), for its idempotency key.
// Nothing is sent upstream when they cannot be honoured.
func (s *Service) submitWebhooks(ctx context.Context, req *comfygatev1.SubmitRequest) (targets []state.WebhookTarget, named string, err error) {
	raw, events, err := requestedWebhook(ctx, req)
	if err != nil {
		return nil, "", err
	}
	if s.webhooks == nil {
		if raw != "" {
			return nil, "", errWebhooksOff
		}
		return nil, "", nil
	}
	defaults, canSign := s.webhooks.Tenant(tenantOf(ctx))
	if raw != "" {
		if err := s.webhooks.CheckURL(raw); err != nil {
			return nil, "", &fieldError{field: "webhook.url", reason: err.Error()}
		}
		kinds, err := state.ParseEventKinds(events)
		if err != nil {
			return nil, "", &fieldError{field: "webhook.events", reason: err.Error()}
		}
		targets = append(targets, state.WebhookTarget{URL: raw, Kinds: kinds})
		named = raw + " " + strings.Join(kinds.Names(), ",")
	}
	targets = append(targets, defaults...)
	if len(targets) > 0 && !canSign {
		return nil, "", errNoSigningSecret
	}
	return targets, named, nil
}

// requestedWebhook is the webhook a submit names: the field, or over REST
// the Comfygate-Webhook and Comfygate-Webhook-Events headers.
func requestedWebhook(ctx context.Context, req *comfygatev1.SubmitRequest) (string, []string, error) {
	if w := req.GetWebhook(); w != nil {
		if w.GetUrl() == "" {
			return "", nil, &fieldError{field: "webhook.url", reason: "is required"}
		}
		var events []string
		for _, e := range w.GetEvents() {
			name, ok := strings.CutPrefix(e.String(), "WEBHOOK_EVENT_")
			if !ok || e == comfygatev1.WebhookEvent_WEBHOOK_EVENT_UNSPECIFIED {
				return "", nil, &fieldError{field: "webhook.events", reason: fmt.Sprintf("%v is not an event", e)}
			}
			events = append(events, name)
		}
		return w.GetUrl(), events, nil
	}
	urls := metadata.ValueFromIncomingContext(ctx, webhookHeader)
	events := metadata.ValueFromIncomingContext(ctx, webhookEventsHeader)
	switch {
	case len(urls) > 1:
		return "", nil, &fieldError{field: "Comfygate-Webhook", reason: "must be given once"}
	case len(events) > 1:
		return "", nil, &fieldError{field: "Comfygate-Webhook-Events", reason: "must be given once"}
	case len(urls) == 0 && len(events) > 0:
		return "", nil, &fieldError{field: "Comfygate-Webhook-Events", reason: "needs Comfygate-Webhook"}
	case len(urls) == 0:
		return "", nil, nil
	case strings.TrimSpace(urls[0]) == "":
		return "", nil, &fieldError{field: "Comfygate-Webhook", reason: "must not be empty"}
	}
	var list []string
	if len(events) == 1 {
		list = strings.Split(events[0], ",")
	}
	return strings.TrimSpace(urls[0]), list, nil
}

// ListDeliveries lists a request's webhook deliveries, for its tenant.
func (s *Service) ListDeliveries(ctx context.Context, req *comfygatev1.ListDeliveriesRequest) (*comfygatev1.ListDeliveriesResponse, error) {
	dep, rid := req.GetDeploymentId(), req.GetRequestId()
	if err := validateRequestRef(dep, rid); err != nil {
		return nil, err
	}
	if _, err := s.lookup(ctx, dep, rid); err != nil {
		return nil, fmt.Errorf("deliveries of request %s: %w", rid, err)
	}
	if s.webhooks == nil {
		return &comfygatev1.ListDeliveriesResponse{}, nil
	}
	list, err := s.webhooks.List(ctx, rid)
	if err != nil {
		return nil, fmt.Errorf("deliveries of request %s: %w", rid, err)
	}
	out := &comfygatev1.ListDeliveriesResponse{}
	for _, d := range list {
		out.Deliveries = append(out.Deliveries, deliveryToProto(d))
	}
	return out, nil
}

// RedeliverEvent queues one of a request's events again, for its tenant.
func (s *Service) RedeliverEvent(ctx context.Context, req *comfygatev1.RedeliverEventRequest) (*comfygatev1.RedeliverEventResponse, error) {
	dep, rid := req.GetDeploymentId(), req.GetRequestId()
	if err := validateRequestRef(dep, rid); err != nil {
		return nil, err
	}
	if err := validateID("event_id", req.GetEventId()); err != nil {
		return nil, err
	}
	if _, err := s.lookup(ctx, dep, rid); err != nil {
		return nil, fmt.Errorf("redeliver an event of request %s: %w", rid, err)
	}
	if s.webhooks == nil {
		return nil, errNoSuchEvent
	}
	list, err := s.webhooks.Redeliver(ctx, rid, req.GetEventId())
	if errors.Is(err, state.ErrNoEvent) {
		return nil, errNoSuchEvent
	}
	if err != nil {
		return nil, fmt.Errorf("redeliver event %s of request %s: %w", req.GetEventId(), rid, err)
	}
	out := &comfygatev1.RedeliverEventResponse{}
	for _, d := range list {
		out.Deliveries = append(out.Deliveries, deliveryToProto(d))
	}
	return out, nil
}

var deliveryStates = map[state.DeliveryState]comfygatev1.DeliveryState{
	state.DeliveryPending:   comfygatev1.DeliveryState_DELIVERY_STATE_PENDING,
	state.DeliveryDelivered: comfygatev1.DeliveryState_DELIVERY_STATE_DELIVERED,
	state.DeliveryFailed:    comfygatev1.DeliveryState_DELIVERY_STATE_FAILED,
	state.DeliveryGone:      comfygatev1.DeliveryState_DELIVERY_STATE_GONE,
}

func deliveryToProto(d *state.Delivery) *comfygatev1.WebhookDelivery {
	out := &comfygatev1.WebhookDelivery{
		EventId: d.EventID, EventType: d.Type, Seq: d.Seq, Epoch: d.Epoch,
		Endpoint: endpointShown(d.Endpoint), State: deliveryStates[d.State],
		CreatedAt: timestamp(d.CreatedAt), AttemptCount: int32(d.AttemptCount),
	}
	if !d.NextAt.IsZero() && d.State == state.DeliveryPending {
		out.NextAttemptAt = timestamp(d.NextAt)
	}
	for _, a := range d.Attempts {
		out.Attempts = append(out.Attempts, &comfygatev1.DeliveryAttempt{
			At: timestamp(a.At), HttpStatus: int32(a.HTTPStatus), Error: a.Error, Duration: durationpb.New(a.Duration.Round(time.Microsecond)),
		})
	}
	return out
}

// endpointShown is an endpoint without its query and user info, which may
// hold credentials.
func endpointShown(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	u.RawQuery, u.ForceQuery, u.Fragment, u.User = "", false, "", nil
	return u.String()
}

// RenderEvent is the body of a webhook event: its type, when the change was
// recorded, and the request's state as the REST API shows it.
//
//	{"type": "request.succeeded", "timestamp": "2026-...Z", "data": {"request_id": ..., "status": "STATUS_SUCCEEDED", ...}}
func RenderEvent(ev *state.Event) ([]byte, error) { return renderEvent(ev, nil) }

// EventRenderer is RenderEvent for a gateway with object storage: the
// stored outputs' URLs are signed when the event is sent.
func EventRenderer(urls ObjectURLs) func(*state.Event) ([]byte, error) {
	return func(ev *state.Event) ([]byte, error) { return renderEvent(ev, urls) }
}

func renderEvent(ev *state.Event, urls ObjectURLs) ([]byte, error) {
	data, err := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}.Marshal(recordToProto(ev.Record, urls))
	if err != nil {
		return nil, fmt.Errorf("encode event %s: %w", ev.ID, err)
	}
	body, err := json.Marshal(struct {
		Type      string          `json:"type"`
		Timestamp time.Time       `json:"timestamp"`
		Data      json.RawMessage `json:"data"`
	}{ev.Type, ev.At.UTC(), data})
	if err != nil {
		return nil, fmt.Errorf("encode event %s: %w", ev.ID, err)
	}
	return body, nil
}
