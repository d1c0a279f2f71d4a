package deploy

import (
	"bytes"
	"errors"
	"flag"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	comfygatev1 "github.com/comfygate/comfygate/gen/comfygate/v1"
	"github.com/comfygate/comfygate/internal/app"
	"github.com/comfygate/comfygate/webhook"
)

// imageRE is the one form of the image reference: the published image at a
// release tag, never :latest or an untagged local build.
var imageRE = regexp.MustCompile(`^ghcr\.io/comfygate/comfygate:v[0-9]+\.[0-9]+\.[0-9]+$`)

// TestPrometheusRules checks the alerting rules, their unit tests and the
// example Prometheus configuration with promtool.
func TestPrometheusRules(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not found: run scripts/deps.sh (it installs Debian's prometheus package, which provides promtool)")
	}
	for _, args := range [][]string{
		{"check", "rules", "prometheus/alerts.yaml"},
		{"test", "rules", "prometheus/alerts_test.yaml"},
		{"check", "config", "prometheus/prometheus.yaml"},
	} {
		out, err := exec.Command(promtool, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// TestAlertsUseRealMetrics checks that every series and label value the
// alerts (and the guide) name is one comfygate exports.
func TestAlertsUseRealMetrics(t *testing.T) {
	known := exportedMetrics(t)
	rules := readFile(t, "prometheus/alerts.yaml")
	guide := readFile(t, "../docs/production.md")
	names := regexp.MustCompile(`\b(?:comfygate|grpc_server)_[a-z0-9_]+`)
	for file, text := range map[string]string{"alerts.yaml": rules, "docs/production.md": guide} {
		for _, name := range names.FindAllString(text, -1) {
			if !known[name] && !known[strings.TrimSuffix(name, "_bucket")] && !known[strings.TrimSuffix(name, "_count")] && !known[strings.TrimSuffix(name, "_sum")] {
				t.Errorf("%s names %s, which comfygate does not export", file, name)
			}
		}
	}
	for _, m := range regexp.MustCompile(`reason(?:!?=~?)"([a-z_|]+)"`).FindAllStringSubmatch(rules, -1) {
		for _, reason := range strings.Split(m[1], "|") {
			if !slices.Contains(webhook.Reasons(), reason) {
				t.Errorf("alerts.yaml selects callbacks rejected for %q, not one of %v", reason, webhook.Reasons())
			}
		}
	}
	service := comfygatev1.GatewayService_ServiceDesc.ServiceName
	for _, m := range regexp.MustCompile(`grpc_service="([^"]*)"`).FindAllStringSubmatch(rules, -1) {
		if m[1] != service {
			t.Errorf("alerts.yaml selects grpc_service %q, want %q", m[1], service)
		}
	}
	// Every alert is explained in the guide.
	for _, m := range regexp.MustCompile(`(?m)^\s*- alert: (\S+)`).FindAllStringSubmatch(rules, -1) {
		if !strings.Contains(guide, m[1]) {
			t.Errorf("docs/production.md does not explain the alert %s", m[1])
		}
	}
}

// exportedMetrics are the series names comfygate registers, its own
// and the gRPC server's (server/rpcmetrics.go), found in its sources.
func exportedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	known := map[string]bool{}
	lit := regexp.MustCompile(`"((?:comfygate|grpc_server)_[a-z0-9_]+)"`)
	err := filepath.WalkDir("..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && slices.Contains([]string{".git", "gen", "bench", "node_modules", "clients"}, d.Name()) {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range lit.FindAllSubmatch(src, -1) {
			known[string(m[1])] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !known["comfygate_callbacks_total"] {
		t.Fatal("found no comfygate_ series in the sources")
	}
	if !known["grpc_server_handled_total"] {
		t.Fatal("the gRPC server collector describes no grpc_server_handled_total")
	}
	return known
}

// gatewayFlags are the server's flags and their environment variables, as
// comfygate --help lists them.
func gatewayFlags(t *testing.T) (flags, envs map[string]bool) {
	t.Helper()
	var usage bytes.Buffer
	if _, err := app.ParseConfig([]string{"--help"}, func(string) string { return "" }, &usage); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("ParseConfig --help: %v", err)
	}
	flags, envs = map[string]bool{}, map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s+--([a-z0-9-]+)`).FindAllStringSubmatch(usage.String(), -1) {
		flags[m[1]] = true
	}
	for _, m := range regexp.MustCompile(`env (COMFYGATE_[A-Z0-9_]+)`).FindAllStringSubmatch(usage.String(), -1) {
		envs[m[1]] = true
	}
	if !flags["public-url"] || !envs["COMFYGATE_PUBLIC_URL"] {
		t.Fatalf("could not read the flags from the usage:\n%s", usage.String())
	}
	return flags, envs
}

// checkEnvName fails for a variable the gateway does not read.
func checkEnvName(t *testing.T, where, name string, envs map[string]bool) {
	t.Helper()
	switch {
	case envs[name], name == app.TokenEnv, name == "GOMEMLIMIT":
	default:
		t.Errorf("%s sets %s, which comfygate does not read", where, name)
	}
}

func TestKubernetes(t *testing.T) {
	_, envs := gatewayFlags(t)
	objects := map[string]map[string]any{} // "Kind/name"
	files, _ := filepath.Glob("kubernetes/*.yaml")
	if len(files) == 0 {
		t.Fatal("no manifests in deploy/kubernetes")
	}
	for _, file := range files {
		docs, err := parseYAML(readFile(t, file))
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		for _, d := range docs {
			o := asMap(t, d)
			id := str(o["kind"]) + "/" + str(get(t, o, "metadata", "name"))
			if objects[id] != nil {
				t.Fatalf("%s defined twice", id)
			}
			objects[id] = o
		}
	}
	for _, want := range []string{"Deployment/comfygate", "Service/comfygate", "Service/comfygate-admin", "PodDisruptionBudget/comfygate"} {
		if objects[want] == nil {
			t.Fatalf("deploy/kubernetes has no %s", want)
		}
	}

	pod := asMap(t, get(t, objects["Deployment/comfygate"], "spec", "template", "spec"))
	containers := asList(t, pod["containers"])
	if len(containers) != 1 {
		t.Fatalf("want one container, got %d", len(containers))
	}
	c := asMap(t, containers[0])
	if image := str(c["image"]); !imageRE.MatchString(image) {
		t.Errorf("image %q: want %s", image, imageRE)
	}

	ports := map[string]string{} // name → containerPort
	for _, p := range asList(t, c["ports"]) {
		p := asMap(t, p)
		ports[str(p["name"])] = str(p["containerPort"])
	}
	env := map[string]map[string]any{}
	for _, e := range asList(t, c["env"]) {
		e := asMap(t, e)
		name := str(e["name"])
		checkEnvName(t, "the Deployment", name, envs)
		env[name] = e
	}
	value := func(name string) string {
		t.Helper()
		e := env[name]
		if e == nil || e["value"] == nil {
			t.Fatalf("the Deployment does not set %s", name)
		}
		return str(e["value"])
	}
	// The four listeners, each on its named port.
	for name, variable := range map[string]string{"grpc": "COMFYGATE_GRPC_ADDR", "http": "COMFYGATE_HTTP_ADDR", "webhook": "COMFYGATE_WEBHOOK_ADDR", "admin": "COMFYGATE_ADMIN_ADDR"} {
		_, port, err := net.SplitHostPort(value(variable))
		if err != nil || port != ports[name] || port == "" {
			t.Errorf("%s=%s does not listen on the container port %q (%s)", variable, value(variable), name, ports[name])
		}
	}
	// Probes on the admin listener.
	for probe, path := range map[string]string{"livenessProbe": "/healthz", "readinessProbe": "/readyz"} {
		get := asMap(t, get(t, asMap(t, c[probe]), "httpGet"))
		if str(get["path"]) != path || str(get["port"]) != "admin" {
			t.Errorf("%s gets %s on port %s, want %s on admin", probe, get["path"], get["port"], path)
		}
	}
	// Resources.
	for _, path := range [][]string{{"requests", "cpu"}, {"requests", "memory"}, {"limits", "memory"}} {
		if str(get(t, asMap(t, c["resources"]), path...)) == "" {
			t.Errorf("resources.%s is not set", strings.Join(path, "."))
		}
	}
	// Non-root, read-only, nothing to escalate to.
	sc, podSC := asMap(t, c["securityContext"]), asMap(t, pod["securityContext"])
	for key, want := range map[string]string{"readOnlyRootFilesystem": "true", "allowPrivilegeEscalation": "false", "runAsNonRoot": "true"} {
		if str(sc[key]) != want {
			t.Errorf("container securityContext.%s = %v, want %s", key, sc[key], want)
		}
	}
	if uid, err := strconv.Atoi(str(podSC["runAsUser"])); err != nil || uid == 0 {
		t.Errorf("pod securityContext.runAsUser = %v, want a non-root uid", podSC["runAsUser"])
	}
	if !slices.Contains(asList(t, get(t, sc, "capabilities", "drop")), any("ALL")) {
		t.Error("the container does not drop ALL capabilities")
	}
	// The token and the Redis URL from the Secret; no secret in a value.
	for _, name := range []string{app.TokenEnv, "COMFYGATE_REDIS_URL"} {
		if env[name] == nil || env[name]["value"] != nil || str(get(t, env[name], "valueFrom", "secretKeyRef", "name")) == "" {
			t.Errorf("%s must come from a Secret (valueFrom.secretKeyRef)", name)
		}
	}
	for _, name := range []string{"COMFYGATE_WEBHOOK_SECRET", "COMFYGATE_INSECURE"} {
		if env[name] != nil {
			t.Errorf("the Deployment sets %s", name)
		}
	}
	// The keys and the webhook secrets are files of a Secret volume.
	secretFiles := map[string]bool{}
	volumes := map[string]map[string]any{}
	for _, v := range asList(t, pod["volumes"]) {
		v := asMap(t, v)
		volumes[str(v["name"])] = v
	}
	for _, m := range asList(t, c["volumeMounts"]) {
		m := asMap(t, m)
		v := volumes[str(m["name"])]
		if v == nil || v["secret"] == nil {
			continue
		}
		for _, item := range asList(t, get(t, v, "secret", "items")) {
			secretFiles[filepath.Join(str(m["mountPath"]), str(asMap(t, item)["path"]))] = true
		}
	}
	for _, name := range []string{"COMFYGATE_API_KEYS_FILE", "COMFYGATE_WEBHOOK_SECRET_FILE"} {
		if !secretFiles[value(name)] {
			t.Errorf("%s=%s is not a file of a mounted Secret (%v)", name, value(name), secretFiles)
		}
	}
	// A drain is never cut short: the grace period covers the preStop sleep
	// and --shutdown-timeout.
	shutdown, err := time.ParseDuration(value("COMFYGATE_SHUTDOWN_TIMEOUT"))
	if err != nil {
		t.Fatal(err)
	}
	sleep, _ := strconv.Atoi(str(get(t, asMap(t, c["lifecycle"]), "preStop", "sleep", "seconds")))
	grace, _ := strconv.Atoi(str(pod["terminationGracePeriodSeconds"]))
	if time.Duration(grace)*time.Second <= time.Duration(sleep)*time.Second+shutdown {
		t.Errorf("terminationGracePeriodSeconds %d does not cover the preStop sleep (%ds) and the shutdown timeout (%s)", grace, sleep, shutdown)
	}

	// The Service carries every listener.
	svcPorts := map[string]bool{}
	for _, p := range asList(t, get(t, objects["Service/comfygate"], "spec", "ports")) {
		p := asMap(t, p)
		if ports[str(p["targetPort"])] == "" {
			t.Errorf("Service port %v targets no container port", p["name"])
		}
		svcPorts[str(p["name"])] = true
	}
	for _, name := range []string{"grpc", "http", "webhook", "admin"} {
		if !svcPorts[name] {
			t.Errorf("Service comfygate has no %s port", name)
		}
	}
	// Prometheus scrapes every pod's admin port through comfygate-admin.
	admin := objects["Service/comfygate-admin"]
	if str(get(t, admin, "spec", "clusterIP")) != "None" || str(get(t, admin, "spec", "publishNotReadyAddresses")) != "true" {
		t.Error("Service comfygate-admin must be headless and list pods that are not ready")
	}
	prom, err := parseYAML(readFile(t, "prometheus/prometheus.yaml"))
	if err != nil {
		t.Fatalf("prometheus.yaml: %v", err)
	}
	job := asMap(t, asList(t, asMap(t, prom[0])["scrape_configs"])[0])
	sd := asMap(t, asList(t, job["dns_sd_configs"])[0])
	if str(job["job_name"]) != "comfygate" || str(sd["port"]) != ports["admin"] ||
		!strings.HasPrefix(str(asList(t, sd["names"])[0]), "comfygate-admin.") {
		t.Errorf("prometheus.yaml does not scrape job comfygate on comfygate-admin's port %s", ports["admin"])
	}

	// The Ingresses expose the callbacks and the API, and nothing else.
	routes := map[string]string{ // path → Service port
		webhook.PathPrefix: "webhook",
		"/v1/":             "http",
		"/" + comfygatev1.GatewayService_ServiceDesc.ServiceName + "/": "grpc",
	}
	seen := map[string]bool{}
	public := str(value("COMFYGATE_PUBLIC_URL"))
	for id, o := range objects {
		if !strings.HasPrefix(id, "Ingress/") {
			continue
		}
		annotations := asMap(t, get(t, o, "metadata", "annotations"))
		hosts := map[string]bool{}
		for _, tls := range asList(t, get(t, o, "spec", "tls")) {
			for _, h := range asList(t, asMap(t, tls)["hosts"]) {
				hosts[str(h)] = true
			}
		}
		for _, rule := range asList(t, get(t, o, "spec", "rules")) {
			rule := asMap(t, rule)
			if !hosts[str(rule["host"])] {
				t.Errorf("%s serves %v without TLS", id, rule["host"])
			}
			for _, p := range asList(t, get(t, rule, "http", "paths")) {
				p := asMap(t, p)
				path := str(p["path"])
				backend := asMap(t, get(t, p, "backend", "service"))
				port := str(get(t, backend, "port", "name"))
				want, ok := routes[path]
				switch {
				case !ok:
					t.Errorf("%s exposes %s: only %v may be", id, path, routes)
				case str(p["pathType"]) != "Prefix" || str(backend["name"]) != "comfygate" || port != want:
					t.Errorf("%s routes %s to %v port %s (%v), want comfygate port %s, Prefix", id, path, backend["name"], port, p["pathType"], want)
				}
				seen[path] = true
				if port == "grpc" && str(annotations["nginx.ingress.kubernetes.io/backend-protocol"]) != "GRPC" {
					t.Errorf("%s does not speak HTTP/2 (GRPC) to the grpc port", id)
				}
				if port == "webhook" {
					if str(annotations["nginx.ingress.kubernetes.io/enable-access-log"]) != "false" {
						t.Errorf("%s logs callback paths, which hold their tokens", id)
					}
					if public != "https://"+str(rule["host"]) {
						t.Errorf("COMFYGATE_PUBLIC_URL %s is not the callbacks' Ingress host %v", public, rule["host"])
					}
				}
			}
		}
	}
	for path := range routes {
		if !seen[path] {
			t.Errorf("no Ingress exposes %s", path)
		}
	}
}

func TestCompose(t *testing.T) {
	_, envs := gatewayFlags(t)
	docs, err := parseYAML(readFile(t, "compose.yaml"))
	if err != nil {
		t.Fatalf("compose.yaml: %v", err)
	}
	compose := asMap(t, docs[0])
	secretFiles := map[string]string{}
	for name, s := range asMap(t, compose["secrets"]) {
		file := str(asMap(t, s)["file"])
		if !strings.HasPrefix(file, "./secrets/") {
			t.Errorf("secret %s is read from %s, not from deploy/secrets/ (made by the operator, ignored by git)", name, file)
		}
		secretFiles[name] = file
	}
	if !regexp.MustCompile(`(?m)^/secrets/$`).MatchString(readFile(t, ".gitignore")) {
		t.Error("deploy/.gitignore does not ignore /secrets/")
	}
	gateways := 0
	for name, s := range asMap(t, compose["services"]) {
		s := asMap(t, s)
		image := str(s["image"])
		if m := regexp.MustCompile(`^\$\{[A-Z_]+:-(.+)\}$`).FindStringSubmatch(image); m != nil {
			image = m[1] // the default of ${VAR:-default}
		}
		if strings.Contains(image, "comfygate") {
			if !imageRE.MatchString(image) {
				t.Errorf("service %s runs %q: want %s", name, image, imageRE)
			}
		} else if i := strings.LastIndex(image, ":"); i < 0 || image[i+1:] == "latest" {
			t.Errorf("service %s runs %q: want a versioned tag", name, image)
		}
		for _, v := range asListOrNil(t, s["volumes"]) {
			if src := strings.SplitN(str(v), ":", 2)[0]; strings.HasPrefix(src, ".") || strings.HasPrefix(src, "/") {
				t.Errorf("service %s mounts %s from the host", name, src)
			}
		}
		for _, p := range asListOrNil(t, s["ports"]) {
			if !strings.HasPrefix(str(p), "127.0.0.1:") {
				t.Errorf("service %s publishes %v beyond loopback", name, p)
			}
		}
		if !strings.HasPrefix(name, "comfygate-") {
			continue
		}
		gateways++
		env := asMap(t, s["environment"])
		for variable := range env {
			checkEnvName(t, "compose service "+name, variable, envs)
		}
		for _, variable := range []string{"COMFYGATE_WEBHOOK_SECRET", "COMFYGATE_INSECURE"} {
			if env[variable] != nil {
				t.Errorf("service %s sets %s", name, variable)
			}
		}
		mounted := asListOrNil(t, s["secrets"])
		for _, variable := range []string{"COMFYGATE_API_KEYS_FILE", "COMFYGATE_WEBHOOK_SECRET_FILE"} {
			file := str(env[variable])
			secret := strings.TrimPrefix(file, "/run/secrets/")
			if secret == file || secretFiles[secret] == "" || !slices.Contains(mounted, any(secret)) {
				t.Errorf("service %s: %s=%s is not a compose secret it mounts", name, variable, file)
			}
		}
	}
	if gateways < 2 {
		t.Errorf("compose.yaml runs %d comfygate replicas, want at least 2", gateways)
	}
}

func TestDockerfile(t *testing.T) {
	dockerfile := readFile(t, "../Dockerfile")
	for _, want := range []string{
		"ARG VERSION",
		"ARG COMMIT",
		"-X github.com/comfygate/comfygate/internal/version.version=${VERSION}",
		"-X github.com/comfygate/comfygate/internal/version.commit=${COMMIT}",
		`org.opencontainers.image.version="${VERSION}"`,
		`org.opencontainers.image.revision="${COMMIT}"`,
	} {
		if !strings.Contains(dockerfile, want) {
			t.Errorf("the Dockerfile lacks %s", want)
		}
	}
	// make build stamps the same variables.
	makefile := readFile(t, "../Makefile")
	for _, want := range []string{"internal/version.version=", "internal/version.commit="} {
		if !strings.Contains(makefile, want) {
			t.Errorf("the Makefile does not stamp %s as the Dockerfile does", want)
		}
	}
	m := regexp.MustCompile(`(?m)^USER ([0-9]+):([0-9]+)$`).FindStringSubmatch(dockerfile)
	if m == nil || m[1] == "0" {
		t.Error("the Dockerfile must run as a numeric non-root USER (Kubernetes' runAsNonRoot checks the number)")
	}
	ignore := strings.Split(readFile(t, "../.dockerignore"), "\n")
	for _, want := range []string{".git", "/bin/", "**/node_modules/", "deploy/secrets/"} {
		if !slices.Contains(ignore, want) {
			t.Errorf(".dockerignore lacks %s", want)
		}
	}
}

// TestGuide checks that the production guide names real flags and
// variables, the image the manifests run, and that the README links to it.
func TestGuide(t *testing.T) {
	flags, envs := gatewayFlags(t)
	guide := readFile(t, "../docs/production.md")
	// Flags written as code (`--flag` or `--flag value`).
	for _, m := range regexp.MustCompile("`--([a-z0-9-]+)").FindAllStringSubmatch(guide, -1) {
		if !flags[m[1]] && m[1] != "version" && m[1] != "help" {
			t.Errorf("docs/production.md names --%s, which comfygate does not have", m[1])
		}
	}
	for _, name := range regexp.MustCompile(`\bCOMFYGATE_[A-Z0-9_]+`).FindAllString(guide, -1) {
		if name != "COMFYGATE_IMAGE" { // compose.yaml's own variable
			checkEnvName(t, "docs/production.md", name, envs)
		}
	}
	image := regexp.MustCompile(`image: (\S+)`).FindStringSubmatch(readFile(t, "kubernetes/comfygate.yaml"))
	if image == nil || !strings.Contains(guide, image[1]) {
		t.Errorf("docs/production.md does not name the image the manifests run (%v)", image)
	}
	if !strings.Contains(readFile(t, "compose.yaml"), image[1]) {
		t.Errorf("compose.yaml does not run the image the manifests run (%s)", image[1])
	}
	if !strings.Contains(readFile(t, "../README.md"), "(docs/production.md)") {
		t.Error("README.md does not link to docs/production.md")
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func asMap(t *testing.T, v any) map[string]any {
	t.Helper()
	m, ok := v.(map[string]any)
	if !ok {
		t.Fatalf("want a mapping, got %T %v", v, v)
	}
	return m
}

func asList(t *testing.T, v any) []any {
	t.Helper()
	l, ok := v.([]any)
	if !ok {
		t.Fatalf("want a sequence, got %T %v", v, v)
	}
	return l
}

func asListOrNil(t *testing.T, v any) []any {
	t.Helper()
	if v == nil {
		return nil
	}
	return asList(t, v)
}

// get walks mappings by key; a missing key fails the test.
func get(t *testing.T, m map[string]any, path ...string) any {
	t.Helper()
	var v any = m
	for i, key := range path {
		mm, ok := v.(map[string]any)
		if !ok || mm[key] == nil {
			t.Fatalf("%s is not set", strings.Join(path[:i+1], "."))
		}
		v = mm[key]
	}
	return v
}

// str is a scalar's text ("" for nil).
func str(v any) string {
	s, _ := v.(string)
	return s
}
