package deploy

import (
	"encoding/json"
	"fmt"
	"slices"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/coord-extproc/coord-extproc/envoy"
	"github.com/coord-extproc/coord-extproc/extproc"
)

// problems lists what of the shipped wiring Envoy Gateway's output lacks.
func (tr *translated) problems(t *testing.T, variant string) []string {
	t.Helper()
	var errs []string
	fail := func(format string, args ...any) { errs = append(errs, fmt.Sprintf(format, args...)) }
	// Every policy and the route accepted, nothing refused.
	for _, kind := range []string{"httpRoutes", "envoyExtensionPolicies", "backendTrafficPolicies", "envoyPatchPolicies", "backendTLSPolicies"} {
		for _, o := range list(tr.raw[kind]) {
			name := get(o, "metadata", "name")
			holders := append(list(get(o, "status", "ancestors")), list(get(o, "status", "parents"))...)
			if len(holders) == 0 {
				fail("%s %v: no status from Envoy Gateway", kind, name)
			}
			for _, h := range holders {
				for _, c := range list(get(h, "conditions")) {
					if get(c, "status") != "True" {
						fail("%s %v: %v %v: %v", kind, name, get(c, "type"), get(c, "reason"), get(c, "message"))
					}
				}
			}
		}
	}
	// ext_proc in the listener, disabled there and enabled on the route,
	// with the settings the server needs.
	l := named(tr.listeners, egListener)
	var filters []any
	for _, fc := range list(get(l, "defaultFilterChain", "filters")) {
		filters = append(filters, list(get(fc, "typedConfig", "httpFilters"))...)
	}
	for _, c := range list(get(l, "filterChains")) {
		for _, fc := range list(get(c, "filters")) {
			filters = append(filters, list(get(fc, "typedConfig", "httpFilters"))...)
		}
	}
	xp := named(filters, egExtProcFilter)
	if xp == nil {
		fail("listener %s: no ext_proc filter %s", egListener, egExtProcFilter)
	} else {
		var f extprocv3.ExternalProcessor
		toProto(t, get(xp, "typedConfig"), &f)
		// Envoy Gateway always sets grpc_service.timeout (10 s), which
		// ext_proc ignores; everything else is held to the shipped rules.
		f.GetGrpcService().Timeout = nil
		if err := envoy.CheckExtProc(&f, envoy.Defaults()); err != nil {
			fail("Envoy Gateway's ext_proc filter: %v", err)
		}
	}
	var route any
	for _, rc := range tr.routes {
		for _, vh := range list(get(rc, "virtualHosts")) {
			if r := named(list(get(vh, "routes")), egRoute); r != nil {
				route = r
			}
		}
	}
	if route == nil {
		fail("no route %s", egRoute)
	} else if get(route, "typedPerFilterConfig", egExtProcFilter) == nil {
		fail("route %s: ext_proc is not enabled on it", egRoute)
	}
	// The route's cluster reads coord-extproc's answer only.
	routeCluster, _ := get(route, "route", "cluster").(string)
	switch variant {
	case "endpointOverride":
		lb := list(get(named(tr.clusters, routeCluster), "loadBalancingPolicy", "policies"))
		var sources []any
		for _, p := range lb {
			if get(p, "typedExtensionConfig", "name") == "envoy.load_balancing_policies.override_host" {
				sources = list(get(p, "typedExtensionConfig", "typedConfig", "overrideHostSources"))
			}
		}
		if len(sources) != 1 || get(sources[0], "header") != extproc.DefaultEndpointHeader {
			fail("cluster %s: override_host sources %v, want the header %s only", routeCluster, sources, extproc.DefaultEndpointHeader)
		}
	case "originalDst":
		c := named(tr.clusters, routeCluster)
		if routeCluster != "coord-pods" || c == nil {
			fail("route %s goes to %q, not to the patched ORIGINAL_DST cluster coord-pods", egRoute, routeCluster)
		} else {
			var cl clusterv3.Cluster
			toProto(t, c, &cl)
			if err := envoy.CheckOriginalDst(&cl, extproc.MetadataNamespace, envoy.Defaults()); err != nil {
				fail("%v", err)
			}
		}
	}
	// Failure reports on the router, to the extension's cluster.
	if router := named(filters, "envoy.filters.http.router"); router == nil {
		fail("listener %s: no router", egListener)
	} else {
		js, _ := json.Marshal(get(router, "typedConfig"))
		var a anypb.Any
		if err := protojson.Unmarshal(js, &a); err != nil {
			fail("router: %v", err)
		} else if err := envoy.CheckFailureReports(&a, egExtProcCluster); err != nil {
			fail("Envoy Gateway's router: %v", err)
		}
	}
	// The extension's cluster: circuit breaker past Envoy's default 1024.
	xc := named(tr.clusters, egExtProcCluster)
	maxReq := 1024.0
	for _, th := range list(get(xc, "circuitBreakers", "thresholds")) {
		if v, ok := get(th, "maxRequests").(float64); ok {
			maxReq = v
		}
	}
	if maxReq < envoy.MinGRPCRequests {
		fail("cluster %s: max_requests %v: ext_proc streams past it fail", egExtProcCluster, maxReq)
	}
	if variant == "tls" {
		// Envoy Gateway puts the real socket in transportSocketMatches, one
		// per endpoint's TLS settings (the top-level one is a placeholder).
		matches := list(get(xc, "transportSocketMatches"))
		if len(matches) == 0 {
			fail("cluster %s: no TLS socket", egExtProcCluster)
		}
		for _, m := range matches {
			ctx := get(m, "transportSocket", "typedConfig", "commonTlsContext")
			if !slices.Contains(list(get(ctx, "alpnProtocols")), any("h2")) || len(list(get(ctx, "tlsCertificateSdsSecretConfigs"))) == 0 ||
				get(ctx, "combinedValidationContext", "validationContextSdsSecretConfig") == nil ||
				len(list(get(ctx, "combinedValidationContext", "defaultValidationContext", "matchTypedSubjectAltNames"))) == 0 {
				fail("cluster %s: TLS context %v lacks ALPN h2, a client certificate, the CA or the name to verify", egExtProcCluster, ctx)
			}
		}
	}
	return errs
}
