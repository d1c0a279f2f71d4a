package storage

import (
	"reflect"
	"testing"

	"github.com/minio/minio-go/v7/pkg/lifecycle"
)

// TestWithExpiryRule: setting an expiry replaces only the gateway's rule for
// that prefix, keeps everyone else's, and days 0 removes it. (The request
// itself is tested against versitygw, which refuses lifecycle rules; this is
// the part that must not clobber a shared bucket's configuration.)
func TestWithExpiryRule(t *testing.T) {
	theirs := lifecycle.Rule{ID: "team-logs", Status: "Enabled", RuleFilter: lifecycle.Filter{Prefix: "logs/"},
		Expiration: lifecycle.Expiration{Days: 90}}
	ours := func(prefix string, days int) lifecycle.Rule {
		return lifecycle.Rule{ID: expiryRuleID(prefix), Status: "Enabled", RuleFilter: lifecycle.Filter{Prefix: prefix},
			Expiration: lifecycle.Expiration{Days: lifecycle.ExpirationDays(days)}}
	}
	for _, tc := range []struct {
		name   string
		before []lifecycle.Rule
		prefix string
		days   int
		want   []lifecycle.Rule
	}{
		{"added to nothing", nil, "p/outputs/", 7, []lifecycle.Rule{ours("p/outputs/", 7)}},
		{"added next to others", []lifecycle.Rule{theirs}, "p/outputs/", 7, []lifecycle.Rule{theirs, ours("p/outputs/", 7)}},
		{"replaced", []lifecycle.Rule{ours("p/outputs/", 3), theirs}, "p/outputs/", 7, []lifecycle.Rule{theirs, ours("p/outputs/", 7)}},
		{"other prefix kept", []lifecycle.Rule{ours("p/inputs/", 1)}, "p/outputs/", 7, []lifecycle.Rule{ours("p/inputs/", 1), ours("p/outputs/", 7)}},
		{"removed", []lifecycle.Rule{theirs, ours("p/outputs/", 3)}, "p/outputs/", 0, []lifecycle.Rule{theirs}},
		{"removed to empty", []lifecycle.Rule{ours("p/outputs/", 3)}, "p/outputs/", 0, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := lifecycle.NewConfiguration()
			cfg.Rules = tc.before
			got := withExpiryRule(cfg, tc.prefix, tc.days)
			if !reflect.DeepEqual(got.Rules, tc.want) {
				t.Errorf("rules\n got %+v\nwant %+v", got.Rules, tc.want)
			}
			if len(tc.want) == 0 && !got.Empty() {
				t.Errorf("configuration not empty: SetBucketLifecycle would write it instead of deleting it")
			}
		})
	}
	if a, b := expiryRuleID("p/a/"), expiryRuleID("p/b/"); a == b || len(a) > 255 {
		t.Errorf("rule ids %q and %q: want distinct and at most 255 characters", a, b)
	}
}
