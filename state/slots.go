package state

import (
	"context"
	"fmt"
	"time"
)

// Caps are a deployment's concurrency caps: how many of its requests may be
// unfinished at once, all tenants together (Deployment) and per tenant
// (PerTenant). Zero is no cap.
type Caps struct {
	Deployment, PerTenant int
}

// CapError refuses a submit that would pass a concurrency cap. It is the
// caller's to retry once one of the deployment's requests has ended.
type CapError struct {
	DeploymentID string
	// PerTenant: the tenant's own cap on the deployment was reached, not
	// the deployment's.
	PerTenant bool
	Limit     int
}

func (e *CapError) Error() string {
	if e.PerTenant {
		return fmt.Sprintf("deployment %s: this tenant has %d unfinished requests on it, its concurrency cap; retry once one has ended", e.DeploymentID, e.Limit)
	}
	return fmt.Sprintf("deployment %s has %d unfinished requests, its concurrency cap; retry once one has ended", e.DeploymentID, e.Limit)
}

// Slots counts the unfinished requests of capped deployments, cluster-wide,
// so that a submit past a cap is refused before RunComfy is called. A
// submit reserves a slot before it is sent (its request id is not known
// yet), binds it to the request RunComfy answers with, or frees it if no
// request started. A bound slot is held while the request's record is
// unfinished: its final save, or the record's expiry, gives it back.
type Slots interface {
	// Reserve takes a slot on deploymentID for tenant if neither cap is
	// reached (a *CapError otherwise). The reservation (token) is held
	// for hold at most, until Bind or Free.
	Reserve(ctx context.Context, deploymentID, tenant string, caps Caps, hold time.Duration) (token string, err error)
	// Bind turns a reservation into requestID's slot, held until the
	// request's record is final or expires; a record that is final
	// already, or missing, frees it instead.
	Bind(ctx context.Context, token, deploymentID, tenant, requestID string) error
	// Free gives a reservation back: the submit started no request.
	Free(ctx context.Context, token, deploymentID, tenant string) error
}
