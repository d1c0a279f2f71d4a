// Package deploy holds no code. Its tests check the deployment files beside
// it and the Dockerfile: the Prometheus rules with promtool, and the
// Kubernetes manifests and the compose file against what docs/production.md
// promises of them (versioned image, probes, secrets from files, only the
// API and the callbacks exposed).
package deploy
