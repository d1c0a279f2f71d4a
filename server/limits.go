package server

// TenantLimits holds the per-tenant limits on what costs the gateway: reads
// (which may reach RunComfy), submits and open watch streams.
type TenantLimits struct{}
