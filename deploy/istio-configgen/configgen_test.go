package istioconfiggen

import (
	"os"
	"slices"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"istio.io/istio/pilot/pkg/model"
	"istio.io/istio/pilot/pkg/networking/core"

	"github.com/coord-extproc/coord-extproc/envoy"
	"github.com/coord-extproc/coord-extproc/extproc"
)

// The ingress gateway the EnvoyFilter patches: an Istio Gateway on port 80,
// a VirtualService whose route named stateful-pods goes to the pods'
// Service, and coord-extproc's Service (as ServiceEntries: the test has no
// Kubernetes registry).
const gateway = `
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: ingress
  namespace: istio-system
spec:
  selector: { istio: ingressgateway }
  servers:
  - port: { number: 80, name: http, protocol: HTTP }
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: stateful-pods
  namespace: istio-system
spec:
  hosts: ["*"]
  gateways: [ingress]
  http:
  - name: stateful-pods
    route:
    - destination: { host: pods.coord.svc.cluster.local, port: { number: 8080 } }
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: pods
  namespace: coord
spec:
  hosts: [pods.coord.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{ number: 8080, name: http, protocol: HTTP }]
  endpoints: [{ address: 10.244.0.11 }]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: coord-extproc
  namespace: coord
spec:
  hosts: [coord-extproc.coord.svc.cluster.local]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{ number: 9002, name: grpc, protocol: GRPC }]
  endpoints: [{ address: 10.244.0.21 }]
`

const grpcCluster = "outbound|9002||coord-extproc.coord.svc.cluster.local"

// generate runs Istio's config generator for the ingress gateway with
// the given EnvoyFilter text.
func generate(t *testing.T, envoyFilter string) ([]*clusterv3.Cluster, []*listenerv3.Listener, []*routev3.RouteConfiguration) {
	t.Helper()
	cg := core.NewConfigGenTest(t, core.TestOptions{ConfigString: gateway + "\n---\n" + envoyFilter})
	labels := map[string]string{"istio": "ingressgateway"}
	proxy := cg.SetupProxy(&model.Proxy{
		Type: model.Router, ConfigNamespace: "istio-system", Labels: labels,
		Metadata: &model.NodeMetadata{Namespace: "istio-system", Labels: labels},
	})
	ls := cg.Listeners(proxy)
	return cg.Clusters(proxy), ls, cg.RoutesFromListeners(proxy, ls)
}

// problems lists where Istio's output lacks the shipped wiring.
func problems(t *testing.T, envoyFilter string) []string {
	t.Helper()
	clusters, listeners, routes := generate(t, envoyFilter)
	var errs []string
	fail := func(s string) { errs = append(errs, s) }
	w := envoy.Defaults()
	var pods *clusterv3.Cluster
	grpcSeen := false
	for _, c := range clusters {
		switch c.GetName() {
		case "coord-pods":
			pods = c
		case grpcCluster:
			grpcSeen = true
		}
	}
	if pods == nil {
		fail("no coord-pods cluster: the ORIGINAL_DST cluster was not added")
	} else if err := envoy.CheckOriginalDst(pods, extproc.MetadataNamespace, w); err != nil {
		fail(err.Error())
	}
	if !grpcSeen {
		fail("no " + grpcCluster + " cluster for ext_proc and the failure reports")
	}
	var hcms []*hcmv3.HttpConnectionManager
	for _, l := range listeners {
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				var h hcmv3.HttpConnectionManager
				if f.GetTypedConfig().UnmarshalTo(&h) == nil {
					hcms = append(hcms, &h)
				}
			}
		}
	}
	if len(hcms) == 0 {
		fail("no HTTP connection manager on the gateway")
	}
	for _, h := range hcms {
		fs := h.GetHttpFilters()
		names := make([]string, len(fs))
		for i, f := range fs {
			names[i] = f.GetName()
		}
		xp, rt := slices.Index(names, "envoy.filters.http.ext_proc"), slices.Index(names, "envoy.filters.http.router")
		if xp < 0 || rt != xp+1 {
			fail("http filters " + strings.Join(names, ", ") + ": ext_proc must sit right before the router")
			continue
		}
		var f extprocv3.ExternalProcessor
		if err := fs[xp].GetTypedConfig().UnmarshalTo(&f); err != nil {
			fail(err.Error())
		} else if err := envoy.CheckExtProc(&f, w); err != nil {
			fail("Istio's ext_proc filter: " + err.Error())
		}
		if err := envoy.CheckFailureReports(fs[rt].GetTypedConfig(), grpcCluster); err != nil {
			fail("Istio's router: " + err.Error())
		}
	}
	merged := false
	for _, rc := range routes {
		for _, vh := range rc.GetVirtualHosts() {
			for _, r := range vh.GetRoutes() {
				if r.GetName() == "stateful-pods" {
					if c := r.GetRoute().GetCluster(); c != "coord-pods" {
						fail("route stateful-pods goes to " + c + ", not coord-pods")
					} else {
						merged = true
					}
				}
			}
		}
	}
	if !merged {
		fail("no route stateful-pods merged to coord-pods")
	}
	return errs
}

// Issue #25: deploy/istio/envoyfilter.yaml applied by Istio's own config
// generator for an ingress gateway: the ORIGINAL_DST cluster is added,
// ext_proc sits right before the router with the shipped settings, the
// failure reports are merged into the router, and the stateful-pods route
// goes to the ORIGINAL_DST cluster.
func TestIstioAppliesTheEnvoyFilter(t *testing.T) {
	b, err := os.ReadFile("../istio/envoyfilter.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if errs := problems(t, string(b)); len(errs) > 0 {
		t.Fatalf("Istio's config generator:\n%s", strings.Join(errs, "\n"))
	}
	clusters, listeners, routes := generate(t, string(b))
	t.Logf("Istio generated %d clusters, %d listeners, %d route configurations for the ingress gateway", len(clusters), len(listeners), len(routes))
	for _, tc := range []struct{ name, from, to, want string }{
		{"route renamed", "route: { name: stateful-pods }", "route: { name: renamed }", "no route stateful-pods merged"},
		{"ext_proc after the router", "operation: INSERT_BEFORE", "operation: INSERT_AFTER", "right before the router"},
		{"another workload", "labels: { istio: ingressgateway }", "labels: { istio: egressgateway }", "no coord-pods cluster"},
		{"fail open", "failure_mode_allow: false", "failure_mode_allow: true", "failure_mode_allow"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			broken := strings.Replace(string(b), tc.from, tc.to, 1)
			if broken == string(b) {
				t.Fatalf("%q not found", tc.from)
			}
			if errs := problems(t, broken); !strings.Contains(strings.Join(errs, "\n"), tc.want) {
				t.Fatalf("problems %v, want one mentioning %q", errs, tc.want)
			}
		})
	}
}
