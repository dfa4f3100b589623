package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/coord-extproc/coord-extproc/envoy"
)

var files = []string{
	"kubernetes/coord-extproc.yaml",
	"envoy-gateway/extension-policy.yaml",
	"envoy-gateway/patch-policy-original-dst.yaml",
	"istio/envoyfilter.yaml",
	"envoy-gateway/patch-policy-failure-reports.yaml",
	"istio/mtls.yaml",
}

// tlsFiles go with a coord-extproc that serves TLS (tls_test.go): checked
// with the chart's TLS rendering instead of the plain manifest.
var tlsFiles = []string{"envoy-gateway/backend-tls.yaml"}

var serverEnv = sync.OnceValues(func() ([]string, error) {
	// The variables the real server documents in --help.
	cmd := exec.Command("go", "run", "./cmd/coord-extproc", "--help")
	cmd.Dir = ".."
	out, _ := cmd.CombinedOutput() // --help exits 0 or 2 depending on the flag package; the text is what counts
	vars := regexp.MustCompile(`COORD_[A-Z_]+`).FindAllString(string(out), -1)
	slices.Sort(vars)
	return slices.Compact(vars), nil
})

func server(t *testing.T) Server {
	t.Helper()
	env, _ := serverEnv()
	if !slices.Contains(env, "COORD_LISTEN") || !slices.Contains(env, "COORD_VALKEY_URL") {
		t.Fatalf("could not read the server's variables from --help: %v", env)
	}
	return Server{Wiring: envoy.Defaults(), Env: env}
}

// load decodes every manifest, with one file's text replaced.
func load(t *testing.T, replace map[string]string) ([]any, error) {
	t.Helper()
	var all []any
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if r, ok := replace[f]; ok {
			data = []byte(r)
		}
		objs, err := Parse(data)
		if err != nil {
			return nil, err
		}
		all = append(all, objs...)
	}
	return all, nil
}

func TestManifestsDecodeStrictlyAndAgree(t *testing.T) {
	objs, err := load(t, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 12 {
		t.Fatalf("%d objects decoded, want 12", len(objs))
	}
	if err := Check(objs, server(t)); err != nil {
		t.Fatal(err)
	}
	// Every manifest under deploy/ is one of the checked files (the alert
	// rules are promtool's, in make test).
	found, _ := filepath.Glob("*/*.yaml")
	found = slices.DeleteFunc(found, func(f string) bool { return f == "observability/alerts.yaml" || strings.HasPrefix(f, "testdata/") })
	slices.Sort(found)
	want := append(slices.Clone(files), tlsFiles...)
	slices.Sort(want)
	if !slices.Equal(found, want) {
		t.Fatalf("manifests %v, checked %v", found, want)
	}
}

// Each check fails on a copy that breaks it: decoding (an unknown field
// in each project's type, in an embedded Envoy fragment) and every piece
// of wiring.
func TestBrokenCopiesFail(t *testing.T) {
	k8s, eg, patch, istio, reports, mtls := files[0], files[1], files[2], files[3], files[4], files[5]
	tests := []struct{ file, name, from, to, want string }{
		{k8s, "unknown Deployment field", "  replicas: 2", "  replica: 2", `unknown field "replica"`},
		{k8s, "unknown probe field", "grpc: { port: 9002 }\n          periodSeconds: 2", "grpc: { port: 9002, service: x, sevice: y }\n          periodSeconds: 2", `unknown field "sevice"`},
		{eg, "unknown EnvoyExtensionPolicy field", "failOpen: false", "failOpenn: false", `unknown field "failOpenn"`},
		{istio, "unknown EnvoyFilter field", "workloadSelector:", "workloadSelect:", "workloadSelect"},
		{istio, "typo in an embedded Envoy fragment", "use_http_header: false", "use_http_headers: false", "use_http_headers"},
		{k8s, "unknown kind", "kind: PodDisruptionBudget", "kind: PodDisruptionBudgets", "not a kind"},

		{k8s, "grpc port", `value: "0.0.0.0:9002"`, `value: "0.0.0.0:9003"`, "COORD_LISTEN"},
		{k8s, "unknown server variable", "name: COORD_LOG_FORMAT", "name: COORD_LOGFORMAT", "COORD_LOGFORMAT"},
		{k8s, "Valkey URL not from a Secret", "valueFrom:\n            secretKeyRef: { name: coord-valkey, key: url }", `value: "redis://valkey:6379"`, "Secret"},
		{k8s, "GOMEMLIMIT", "resourceFieldRef: { resource: limits.memory, divisor: \"1\" }", "resourceFieldRef: { resource: requests.memory, divisor: \"1\" }", "GOMEMLIMIT"},
		{k8s, "probe port", "readinessProbe:\n          grpc: { port: 9002 }", "readinessProbe:\n          grpc: { port: 9090 }", "readiness probe"},
		{k8s, "killed before the grace", "terminationGracePeriodSeconds: 40", "terminationGracePeriodSeconds: 30", "terminationGracePeriodSeconds 30"},
		{k8s, "writable root", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", "readOnlyRootFilesystem"},
		{k8s, "pass rule", "action: route_lock", "action: route_lock\n      - name: rest\n        action: pass", "passes requests"},
		{k8s, "routes file not mounted", "value: /etc/coord-extproc/routes.yaml", "value: /etc/routes.yaml", "not a key of a mounted ConfigMap"},
		{k8s, "Service port", "- { name: grpc, port: 9002", "- { name: grpc, port: 9003", "no Service selects it"},
		{k8s, "PDB selector", "  minAvailable: 1\n  selector:\n    matchLabels: { app.kubernetes.io/name: coord-extproc }", "  minAvailable: 1\n  selector:\n    matchLabels: { app.kubernetes.io/name: other }", "PodDisruptionBudget"},
		{k8s, "no NetworkPolicy", "kind: NetworkPolicy", "kind: NetworkPolicyy", "not a kind"},
		{k8s, "NetworkPolicy selects other pods", "  podSelector:\n    matchLabels: { app.kubernetes.io/name: coord-extproc }\n  policyTypes", "  podSelector:\n    matchLabels: { app.kubernetes.io/name: other }\n  policyTypes", "no NetworkPolicy selects its pods"},
		{k8s, "gRPC port open to all", "  - from:\n    - namespaceSelector:\n        matchLabels: { kubernetes.io/metadata.name: envoy-gateway-system }", "  - ports: [{ port: grpc }]\n  - from:\n    - namespaceSelector:\n        matchLabels: { kubernetes.io/metadata.name: envoy-gateway-system }", "admits every source"},
		{k8s, "gRPC port open to a whole namespace", "      podSelector:\n        matchLabels: { app.kubernetes.io/component: proxy, app.kubernetes.io/managed-by: envoy-gateway }\n", "", "more than named gateway pods"},
		{k8s, "metrics rule admits gRPC", "    - { port: metrics, protocol: TCP }", "    - { port: 9002, protocol: TCP }", "more than named gateway pods"},
		{k8s, "Istio gateway not admitted", "matchLabels: { istio: ingressgateway }", "matchLabels: { istio: egressgateway }", "cannot reach the gRPC port"},
		{eg, "backendRef port", "      port: 9002", "      port: 9003", "backendRef"},
		{eg, "no request processing", "      request: {}\n", "", "processingMode.request"},
		{eg, "fail open", "failOpen: false", "failOpen: true", "failOpen"},
		{eg, "extension cluster's default circuit breaker", "        maxParallelRequests: 100000\n", "", "maxParallelRequests"},
		{eg, "writable namespaces", "writableNamespaces: [envoy.lb]", "writableNamespaces: [other]", "writableNamespaces"},
		{eg, "endpointOverride header", "- header: x-gateway-destination-endpoint", "- header: x-destination", "endpointOverride"},
		{patch, "patched cluster reads a header", "use_http_header: false", "use_http_header: true", "use_http_header"},
		{patch, "patched cluster metadata key", "path: [{ key: x-gateway-destination-endpoint }]", "path: [{ key: x-other }]", "metadata_key"},
		{patch, "route patched elsewhere", "value: coord-pods\n", "value: other\n", "not the ORIGINAL_DST cluster"},
		{istio, "receiving namespaces", `untyped: ["envoy.lb"]`, `untyped: ["envoy.other"]`, "receiving_namespaces"},
		{istio, "route to another cluster", "route: { cluster: coord-pods }", "route: { cluster: outbound }", "not to the ORIGINAL_DST cluster"},
		{istio, "gRPC cluster port", "outbound|9002||", "outbound|9003||", "gRPC cluster"},
		{istio, "ext_proc after the router", "operation: INSERT_BEFORE", "operation: INSERT_AFTER", "before the router"},
		{istio, "fail open", "failure_mode_allow: false", "failure_mode_allow: true", "failure_mode_allow"},
		{istio, "failure reports not merged into the router", "      operation: MERGE\n      value:\n        name: envoy.filters.http.router", "      operation: INSERT_AFTER\n      value:\n        name: envoy.filters.http.router", "merged into the router"},
		{istio, "failure reports of every status", "flags: [UF, UC]", "flags: [UF, UC, UH]", "want exactly"},
		{istio, "failure reports batched", "buffer_size_bytes: 0", "buffer_size_bytes: 16384", "buffer_size_bytes"},
		{reports, "EG failure reports to another cluster", "extproc/0", "extproc/1", "want the coord-extproc cluster"},
		{reports, "EG failure reports not on the router", "@.name == 'envoy.filters.http.router'", "@.name == 'envoy.filters.http.ext_proc'", "router's typed_config"},
		{reports, "EG failure reports without UC", "flags: [UF, UC]", "flags: [UF]", "want exactly"},
		{mtls, "unknown PeerAuthentication field", "mtls: { mode: STRICT }", "mtls: { mode: STRICT, mod: x }", "mod"},
		{mtls, "mesh mTLS permissive", "mtls: { mode: STRICT }", "mtls: { mode: PERMISSIVE }", "not STRICT"},
		{mtls, "gRPC port permissive", `"9090": { mode: PERMISSIVE }`, `"9002": { mode: PERMISSIVE }`, "not STRICT"},
		{mtls, "any mesh workload may call", "    - source:\n        principals: [\"cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account\"]\n", "    - source:\n        namespaces: [istio-system]\n", "without naming the callers' principals"},
		{mtls, "metrics rule opens gRPC", `ports: ["9090"]`, `ports: ["9090", "9002"]`, "without naming the callers' principals"},
		{mtls, "no authorization policy", "action: ALLOW", "action: AUDIT", "no ALLOW AuthorizationPolicy"},
	}
	srv := server(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			orig, err := os.ReadFile(tt.file)
			if err != nil {
				t.Fatal(err)
			}
			broken := strings.Replace(string(orig), tt.from, tt.to, 1)
			if broken == string(orig) {
				t.Fatalf("%q not found in %s", tt.from, tt.file)
			}
			objs, err := load(t, map[string]string{tt.file: broken})
			if err == nil {
				err = Check(objs, srv)
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tt.want)
			}
		})
	}
}
