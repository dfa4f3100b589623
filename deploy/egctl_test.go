package deploy

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Envoy Gateway's own translator: egctl (github.com/envoyproxy/gateway
// cmd/egctl, the version go.mod pins as a tool dependency) turns the
// manifests plus a Gateway, an HTTPRoute and Services into the xDS Envoy
// Gateway would push, with each policy's status. make test builds it ahead
// (EGCTL); otherwise once per run (about 7 minutes cold on 2 cores, half
// a minute from the build cache).
var egctl = sync.OnceValues(func() (string, error) {
	if bin := os.Getenv("EGCTL"); bin != "" { // built ahead by scripts/test.sh
		if _, err := os.Stat(bin); err == nil {
			return bin, nil
		}
	}
	dir, err := os.MkdirTemp("", "coord-egctl-")
	if err != nil {
		return "", err
	}
	egctlDir = dir
	bin := filepath.Join(dir, "egctl")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/envoyproxy/gateway/cmd/egctl").CombinedOutput(); err != nil {
		return "", fmt.Errorf("build egctl: %v\n%s", err, out)
	}
	return bin, nil
})

// egctlDir holds the built egctl, if a test asked for it.
var egctlDir string

func TestMain(m *testing.M) {
	code := m.Run()
	if egctlDir != "" {
		_ = os.RemoveAll(egctlDir)
	}
	os.Exit(code)
}

const (
	egExtProcFilter = "envoy.filters.http.ext_proc/" + egExtProcCluster
	egRoute         = "httproute/coord/stateful-pods/rule/0/match/0/*"
	egListener      = "coord/eg/http"
)

// translated is egctl's output: Gateway API resources with status, and
// the xDS of the Gateway.
type translated struct {
	raw       map[string]any
	listeners []any // Listener JSON objects
	routes    []any
	clusters  []any
}

// egTranslate runs egctl on the test Gateway plus docs. The coord-extproc
// Service gets a clusterIP as the API server would give it (Envoy Gateway
// refuses an extension backend without an address).
func egTranslate(t *testing.T, docs ...string) *translated {
	t.Helper()
	bin, err := egctl()
	if err != nil {
		t.Fatal(err)
	}
	fixture, err := os.ReadFile("testdata/egctl-gateway.yaml")
	if err != nil {
		t.Fatal(err)
	}
	in := string(fixture)
	for _, d := range docs {
		in += "\n---\n" + d
	}
	if strings.Contains(in, "\nkind: EnvoyProxy\n") { // the proxies' settings, through the GatewayClass
		in = strings.Replace(in, "  controllerName: gateway.envoyproxy.io/gatewayclass-controller\n",
			"  controllerName: gateway.envoyproxy.io/gatewayclass-controller\n  parametersRef: { group: gateway.envoyproxy.io, kind: EnvoyProxy, name: coord-proxy, namespace: envoy-gateway-system }\n", 1)
	}
	docsIn := strings.Split(in, "\n---\n")
	for i, d := range docsIn {
		if strings.Contains(d, "\nkind: Service\n") && strings.Contains(d, "\n  name: coord-extproc\n") {
			docsIn[i] = strings.Replace(d, "\nspec:\n", "\nspec:\n  clusterIP: 10.96.0.10\n", 1)
		}
	}
	in = strings.Join(docsIn, "\n---\n")
	file := filepath.Join(t.TempDir(), "in.yaml")
	if err := os.WriteFile(file, []byte(in), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "x", "translate", "--from", "gateway-api", "--to", "gateway-api,xds", "-o", "json", "-f", file).Output()
	if err != nil {
		t.Fatalf("egctl: %v", err)
	}
	tr := &translated{}
	if err := json.Unmarshal(out, &tr.raw); err != nil {
		t.Fatalf("egctl output: %v", err)
	}
	xds, _ := tr.raw["xds"].(map[string]any)
	gw, _ := xds["coord/eg"].(map[string]any)
	configs, _ := gw["configs"].([]any)
	for _, c := range configs {
		c := c.(map[string]any)
		switch c["@type"] {
		case "type.googleapis.com/envoy.admin.v3.ListenersConfigDump":
			for _, l := range list(c["dynamicListeners"]) {
				tr.listeners = append(tr.listeners, get(l, "activeState", "listener"))
			}
		case "type.googleapis.com/envoy.admin.v3.RoutesConfigDump":
			for _, r := range list(c["dynamicRouteConfigs"]) {
				tr.routes = append(tr.routes, get(r, "routeConfig"))
			}
		case "type.googleapis.com/envoy.admin.v3.ClustersConfigDump":
			for _, cl := range list(c["dynamicActiveClusters"]) {
				tr.clusters = append(tr.clusters, get(cl, "cluster"))
			}
		}
	}
	if len(tr.listeners) == 0 || len(tr.routes) == 0 || len(tr.clusters) == 0 {
		t.Fatalf("egctl gave no xDS for coord/eg:\n%.2000s", out)
	}
	return tr
}

func list(v any) []any { l, _ := v.([]any); return l }

// get walks nested JSON objects by key.
func get(v any, keys ...string) any {
	for _, k := range keys {
		m, _ := v.(map[string]any)
		v = m[k]
	}
	return v
}

func named(objs []any, name string) any {
	for _, o := range objs {
		if get(o, "name") == name {
			return o
		}
	}
	return nil
}

// toProto decodes a JSON object holding "@type" into its message.
func toProto(t *testing.T, v any, m proto.Message) {
	t.Helper()
	js, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var a anypb.Any
	if err := protojson.Unmarshal(js, &a); err != nil {
		t.Fatalf("decode %.200s: %v", js, err)
	}
	if err := a.UnmarshalTo(m); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// withoutKind drops the documents of one kind from a manifest.
func withoutKind(text, kind string) string {
	var keep []string
	for _, d := range strings.Split(text, "\n---\n") {
		if !strings.Contains(d, "\nkind: "+kind+"\n") {
			keep = append(keep, d)
		}
	}
	return strings.Join(keep, "\n---\n")
}

// egVariants are the supported Envoy Gateway set-ups, as documents.
func egVariants(t *testing.T) map[string][]string {
	t.Helper()
	plain := readFile(t, "kubernetes/coord-extproc.yaml")
	policy, reports := readFile(t, "envoy-gateway/extension-policy.yaml"), readFile(t, "envoy-gateway/patch-policy-failure-reports.yaml")
	rel := defaultRelease
	rel.Values = map[string]any{"tls": map[string]any{"secretName": "coord-extproc-tls"}}
	tlsServer, err := RenderChart(chartDir, rel)
	if err != nil {
		t.Fatal(err)
	}
	return map[string][]string{
		"endpointOverride": {plain, policy, reports},
		"originalDst":      {plain, withoutKind(policy, "BackendTrafficPolicy"), readFile(t, "envoy-gateway/patch-policy-original-dst.yaml"), reports},
		"tls":              {string(tlsServer), policy, reports, readFile(t, "envoy-gateway/backend-tls.yaml"), tlsObjects(t)},
	}
}

// Issue #25: the manifests go through Envoy Gateway's own translator, and
// what it would push to Envoy has the wiring the shipped bootstraps have.
func TestEnvoyGatewayTranslation(t *testing.T) {
	for name, docs := range egVariants(t) {
		t.Run(name, func(t *testing.T) {
			if errs := egTranslate(t, docs...).problems(t, name); len(errs) > 0 {
				t.Fatalf("Envoy Gateway's translation:\n%s", strings.Join(errs, "\n"))
			}
		})
	}
}

// Broken copies fail the translation check: a patch naming a route that
// does not exist, ext_proc attached to another route, a policy Envoy
// Gateway rejects.
func TestEnvoyGatewayTranslationBrokenCopies(t *testing.T) {
	variants := egVariants(t)
	for _, tc := range []struct{ name, variant, from, to, want string }{
		{"patched route renamed", "originalDst", "httproute/coord/stateful-pods/rule/0/match/0/*", "httproute/coord/renamed/rule/0/match/0/*", "not to the patched ORIGINAL_DST cluster"},
		{"ext_proc on another route", "endpointOverride", "    kind: HTTPRoute\n    name: stateful-pods\n  extProc:", "    kind: HTTPRoute\n    name: other-route\n  extProc:", "ext_proc is not enabled on it"},
		{"policy rejected", "endpointOverride", "      port: 9002\n", "      port: 9003\n", "Accepted"},
		{"fail open", "endpointOverride", "failOpen: false", "failOpen: true", "failure_mode_allow"},
		{"failure reports elsewhere", "endpointOverride", "extproc/0\" }", "extproc/1\" }", "want the coord-extproc cluster"},
		{"default circuit breaker", "endpointOverride", "        maxParallelRequests: 100000\n", "", "max_requests"},
		{"no client certificate", "tls", "    clientCertificateRef:\n      kind: Secret\n      name: envoy-to-coord-extproc\n", "", "client certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			docs := slices.Clone(variants[tc.variant])
			changed := false
			for i, d := range docs {
				if !changed && strings.Contains(d, tc.from) {
					docs[i], changed = strings.Replace(d, tc.from, tc.to, 1), true
				}
			}
			if !changed {
				t.Fatalf("%q not in the %s documents", tc.from, tc.variant)
			}
			errs := egTranslate(t, docs...).problems(t, tc.variant)
			if !strings.Contains(strings.Join(errs, "\n"), tc.want) {
				t.Fatalf("problems %v, want one mentioning %q", errs, tc.want)
			}
		})
	}
}
