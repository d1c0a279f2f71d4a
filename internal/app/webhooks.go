package app

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/comfygate/comfygate/auth"
	"github.com/comfygate/comfygate/hooks"
	"github.com/comfygate/comfygate/server"
	"github.com/comfygate/comfygate/state"
)

// localTenant names, in the tenants file, the one tenant of a gateway without
// API keys (whose callers the server knows as ""), so that a gateway on a
// developer's machine can send webhooks too.
const localTenant = "local"

// reloader is a file reloaded on SIGHUP: the keys file, the tenants file, or
// both as one union; the deployments file.
type reloader interface{ Reload() error }

// reloadable is a reloader and what it holds, for the log.
type reloadable struct {
	files reloader
	what  string
}

// watchAuth loads the API keys (--api-keys-file, the tenants file's keys, or
// both as a union) and the tenants file, and has SIGHUP reload them
// (watchHangup). authn is nil when no file holds a key: every caller is
// then the local tenant. Whether the gateway wants keys is settled at start;
// keys added by a reload to files that had none take a restart.
func (a *App) watchAuth(cfg *Config) (authn server.Authenticator, tenants *auth.Tenants, err error) {
	var (
		keys  *auth.Keys
		files reloader
		what  string // what files holds, for the log
	)
	if cfg.APIKeysFile != "" {
		if keys, err = auth.Load(cfg.APIKeysFile); err != nil {
			return nil, nil, fmt.Errorf("--api-keys-file: %w", err)
		}
		authn, files, what = keys, keys, "API keys"
	}
	if cfg.TenantsFile != "" {
		if tenants, err = auth.LoadTenants(cfg.TenantsFile); err != nil {
			return nil, nil, fmt.Errorf("--tenants-file: %w", err)
		}
		switch {
		case keys != nil:
			u, err := auth.Union(keys, tenants)
			if err != nil {
				return nil, nil, fmt.Errorf("--tenants-file and --api-keys-file: %w", err)
			}
			authn, files, what = u, u, "API keys and tenants"
		case tenants.HasKeys():
			authn, files, what = tenants, tenants, "tenants"
		default:
			files, what = tenants, "tenants"
		}
	}
	if files != nil {
		a.reloadable = append(a.reloadable, reloadable{files, what})
	}
	return authn, tenants, nil
}

// watchHangup catches SIGHUP, for good (its default action would kill the
// gateway, even during the drain), to reload the files that can be; the
// reloads start with Run.
func (a *App) watchHangup() {
	if len(a.reloadable) == 0 {
		return
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	a.release = append(a.release, func() { signal.Stop(hup) })
	files := a.reloadable
	a.reload = func(ctx context.Context) error { return reloadOnHangup(ctx, hup, files, a.log) }
}

// webhooks is what the service needs of outbound webhooks
// (server.Webhooks): the tenants' settings, read from the tenants file as it
// is now, and the deliveries.
type webhooks struct {
	tenants *auth.Tenants
	*hooks.Deliverer
}

var _ server.Webhooks = (*webhooks)(nil)

// settings are tenant's webhook settings; the gateway's one tenant without
// keys ("") has those of localTenant.
func (w *webhooks) settings(tenant string) (auth.TenantWebhooks, bool) {
	if tenant == "" {
		tenant = localTenant
	}
	return w.tenants.Webhooks(tenant)
}

// Tenant returns the tenant's default endpoints, and whether it has a secret
// to sign with.
func (w *webhooks) Tenant(tenant string) ([]state.WebhookTarget, bool) {
	s, ok := w.settings(tenant)
	if !ok {
		return nil, false
	}
	var targets []state.WebhookTarget
	for _, e := range s.Endpoints {
		kinds, err := state.ParseEventKinds(e.Events)
		if err != nil {
			continue // the file's own check refuses it; never reached
		}
		targets = append(targets, state.WebhookTarget{URL: e.URL, Kinds: kinds})
	}
	return targets, len(s.Secrets) > 0
}

// CheckURL refuses an endpoint the deliverer would never send to.
func (w *webhooks) CheckURL(raw string) error { return hooks.CheckURL(raw) }

// secrets are the tenant's signing secrets now: a rotation done in the file
// and reloaded signs the next attempt.
func (w *webhooks) secrets(tenant string) []hooks.Secret {
	s, ok := w.settings(tenant)
	if !ok {
		return nil
	}
	var out []hooks.Secret
	for _, raw := range s.Secrets {
		if sec, err := hooks.ParseSecret(raw); err == nil {
			out = append(out, sec)
		}
	}
	return out
}

// newWebhooks builds the deliverer of the tenants' webhooks, on the state's
// outbox; it starts nothing.
func newWebhooks(cfg *Config, tenants *auth.Tenants, outbox state.Outbox, urls server.ObjectURLs, reg prometheus.Registerer, log *slog.Logger) (*webhooks, error) {
	client, err := cfg.webhookGuard()
	if err != nil {
		return nil, err
	}
	w := &webhooks{tenants: tenants}
	w.Deliverer, err = hooks.New(hooks.Config{
		Outbox:   outbox,
		Client:   client,
		Secrets:  w.secrets,
		Render:   server.EventRenderer(urls),
		Consumer: replicaName(),
		Timeout:  cfg.WebhookTimeout,
		RetryMin: cfg.WebhookRetryMin,
		RetryMax: cfg.WebhookRetryMax,
		Horizon:  cfg.WebhookRetryHorizon,
		Logger:   log,
		Registry: reg,
	})
	if err != nil {
		return nil, fmt.Errorf("webhooks: %w", err)
	}
	return w, nil
}
