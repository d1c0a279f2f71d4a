package memory

import (
	"context"
	"crypto/rand"
	"time"

	"github.com/comfygate/comfygate/state"
)

// slotSet is one count of unfinished requests: reservations by token (held
// until when) and the request ids bound to slots.
type slotSet struct {
	held  map[string]time.Time
	bound map[string]bool
}

// slotSets returns the sets counting deploymentID and tenant on it,
// creating them. b.mu is held.
func (b *Backend) slotSets(deploymentID, tenant string) (dep, ten *slotSet) {
	get := func(key string) *slotSet {
		s, ok := b.slots[key]
		if !ok {
			s = &slotSet{held: map[string]time.Time{}, bound: map[string]bool{}}
			b.slots[key] = s
		}
		return s
	}
	return get(deploymentID), get(deploymentID + "\x00" + tenant)
}

// count is how many slots of s are held at now: reservations not yet
// expired, and requests whose record is unfinished and not expired (a final
// save frees a slot in Redis; here the count reads the records, which is the
// same). Slots no longer held are dropped. b.mu is held.
func (b *Backend) count(s *slotSet, now time.Time) int {
	for token, until := range s.held {
		if !now.Before(until) {
			delete(s.held, token)
		}
	}
	for id := range s.bound {
		if e, ok := b.records[id]; !ok || !now.Before(e.expires) || e.rec.Terminal() {
			delete(s.bound, id)
		}
	}
	return len(s.held) + len(s.bound)
}

// Reserve takes a slot if neither cap is reached.
func (b *Backend) Reserve(ctx context.Context, deploymentID, tenant string, caps state.Caps, hold time.Duration) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	now := b.now()
	b.mu.Lock()
	defer b.mu.Unlock()
	dep, ten := b.slotSets(deploymentID, tenant)
	// Both are counted, capped or not, so that neither keeps requests
	// that have ended.
	inDep, inTen := b.count(dep, now), b.count(ten, now)
	if caps.Deployment > 0 && inDep >= caps.Deployment {
		return "", &state.CapError{DeploymentID: deploymentID, Limit: caps.Deployment}
	}
	if caps.PerTenant > 0 && inTen >= caps.PerTenant {
		return "", &state.CapError{DeploymentID: deploymentID, PerTenant: true, Limit: caps.PerTenant}
	}
	token := rand.Text()
	dep.held[token] = now.Add(hold)
	ten.held[token] = now.Add(hold)
	return token, nil
}

// Bind makes a reservation requestID's slot while its record is unfinished.
func (b *Backend) Bind(ctx context.Context, token, deploymentID, tenant, requestID string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	dep, ten := b.unreserve(token, deploymentID, tenant)
	if e, ok := b.records[requestID]; ok && b.now().Before(e.expires) && !e.rec.Terminal() {
		dep.bound[requestID] = true
		ten.bound[requestID] = true
	}
	return nil
}

// Free gives a reservation back.
func (b *Backend) Free(ctx context.Context, token, deploymentID, tenant string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.unreserve(token, deploymentID, tenant)
	return nil
}

// unreserve drops a reservation from both counts and returns them. b.mu is
// held.
func (b *Backend) unreserve(token, deploymentID, tenant string) (dep, ten *slotSet) {
	dep, ten = b.slotSets(deploymentID, tenant)
	delete(dep.held, token)
	delete(ten.held, token)
	return dep, ten
}
