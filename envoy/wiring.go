package envoy

import (
	"errors"
	"fmt"
	"slices"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	authzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"

	"github.com/coord-extproc/coord-extproc/extproc"
)

// Wiring is what a bootstrap must agree on with coord-extproc.
type Wiring struct {
	EndpointHeader string // the header and metadata key the server writes
	Port           uint32 // the server's gRPC port
	// StreamGrace is how long the server lets a stream outlive a
	// connection rotation or its shutdown (--shutdown-grace): ext_proc
	// routes must time out sooner (extproc.DefaultStreamGrace).
	StreamGrace time.Duration
}

// Defaults is the server's own defaults.
func Defaults() Wiring {
	return Wiring{EndpointHeader: extproc.DefaultEndpointHeader, Port: extproc.DefaultPort, StreamGrace: extproc.DefaultStreamGrace}
}

// AuthzMetadataNamespace is where Envoy files an ext_authz answer's dynamic
// metadata: a fixed name, whatever the filter instance is called
// (source/extensions/filters/http/ext_authz/ext_authz.cc, Filter::onComplete:
// setDynamicMetadata("envoy.filters.http.ext_authz", ...)). Envoy Gateway
// names its filters envoy.filters.http.ext_authz/<policy>; the metadata
// still lands here.
const AuthzMetadataNamespace = "envoy.filters.http.ext_authz"

// Routing is the part of a bootstrap that decides where a request goes.
type Routing struct {
	API       string // "ext_proc" or "ext_authz"
	Namespace string // where the server's endpoint metadata lands
	HCM       *hcmv3.HttpConnectionManager
	Filter    any // *extprocv3.ExternalProcessor or *authzv3.ExtAuthz
	Clusters  map[string]*clusterv3.Cluster
}

// ReadRouting finds the listener's connection manager, the routing filter
// and the clusters.
func ReadRouting(b *bootstrapv3.Bootstrap) (*Routing, error) {
	ls := b.GetStaticResources().GetListeners()
	if len(ls) != 1 || len(ls[0].GetFilterChains()) != 1 || len(ls[0].GetFilterChains()[0].GetFilters()) != 1 {
		return nil, errors.New("want one listener with one filter chain holding the http_connection_manager")
	}
	r := &Routing{HCM: &hcmv3.HttpConnectionManager{}, Clusters: map[string]*clusterv3.Cluster{}}
	if err := ls[0].GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(r.HCM); err != nil {
		return nil, fmt.Errorf("http_connection_manager: %w", err)
	}
	fs := r.HCM.GetHttpFilters()
	if len(fs) != 2 || fs[1].GetName() != "envoy.filters.http.router" {
		return nil, errors.New("want http_filters [ext_proc or ext_authz, router]")
	}
	msg, err := fs[0].GetTypedConfig().UnmarshalNew()
	if err != nil {
		return nil, fmt.Errorf("http filter %s: %w", fs[0].GetName(), err)
	}
	switch msg.(type) {
	case *extprocv3.ExternalProcessor:
		r.API, r.Namespace = "ext_proc", extproc.MetadataNamespace
	case *authzv3.ExtAuthz:
		r.API, r.Namespace = "ext_authz", AuthzMetadataNamespace
	default:
		return nil, fmt.Errorf("first http filter is %T, want ext_proc or ext_authz", msg)
	}
	r.Filter = msg
	for _, c := range b.GetStaticResources().GetClusters() {
		r.Clusters[c.GetName()] = c
	}
	return r, nil
}

// CheckWiring returns every way b disagrees with w: the filter's gRPC
// cluster and port, fail-closed settings, metadata namespaces, mutation
// rules that would drop the server's headers, and every route's cluster,
// which must be an ORIGINAL_DST cluster reading the endpoint from the
// server's metadata only (SPEC §5.1, §5.5).
func CheckWiring(b *bootstrapv3.Bootstrap, w Wiring) error {
	r, err := ReadRouting(b)
	if err != nil {
		return err
	}
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	var grpcCluster string
	switch f := r.Filter.(type) {
	case *extprocv3.ExternalProcessor:
		grpcCluster = f.GetGrpcService().GetEnvoyGrpc().GetClusterName()
		if err := CheckExtProc(f, w); err != nil {
			errs = append(errs, err)
		}
	case *authzv3.ExtAuthz:
		grpcCluster = f.GetGrpcService().GetEnvoyGrpc().GetClusterName()
		if f.GetFailureModeAllow() || f.GetGrpcService().GetTimeout() == nil {
			fail("ext_authz: want failure_mode_allow false and a grpc_service.timeout")
		}
	}
	checkOriginalDstFallbacks(b, fail)
	if err := CheckFailureReports(r.HCM.GetHttpFilters()[1].GetTypedConfig(), grpcCluster); err != nil {
		errs = append(errs, err)
	}
	if c := r.Clusters[grpcCluster]; c == nil {
		fail("%s: gRPC cluster %q is not defined", r.API, grpcCluster)
	} else {
		checkGRPCCluster(c, w, fail)
	}
	vhs := r.HCM.GetRouteConfig().GetVirtualHosts()
	if len(vhs) == 0 {
		fail("no virtual host")
	}
	_, isExtProc := r.Filter.(*extprocv3.ExternalProcessor)
	for _, vh := range vhs {
		if isExtProc {
			checkPerRouteModes(r.HCM.GetHttpFilters()[0].GetName(), vh, fail)
		}
		for _, rt := range vh.GetRoutes() {
			if isExtProc {
				if err := checkRouteTimeout(rt, w); err != nil {
					errs = append(errs, err)
				}
			}
			name := rt.GetRoute().GetCluster()
			c := r.Clusters[name]
			if c.GetType() != clusterv3.Cluster_ORIGINAL_DST {
				fail("route %v goes to %q, not to an ORIGINAL_DST cluster", rt.GetMatch(), name)
				continue
			}
			if err := CheckOriginalDst(c, r.Namespace, w); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", r.API, err))
			}
		}
	}
	return errors.Join(errs...)
}

// CheckExtProc checks an ext_proc filter's settings against w: failure
// mode closed, mode override allowed, a message_timeout and no
// grpc_service.timeout, request headers sent, the metadata namespace
// received, and mutation rules that let the server's headers through.
func CheckExtProc(f *extprocv3.ExternalProcessor, w Wiring) error {
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if f.GetFailureModeAllow() || !f.GetAllowModeOverride() || f.GetMessageTimeout() == nil {
		fail("ext_proc: want failure_mode_allow false, allow_mode_override true and a message_timeout")
	}
	if f.GetGrpcService().GetTimeout() != nil {
		fail("ext_proc: grpc_service.timeout has no effect on ext_proc streams; message_timeout bounds each answer")
	}
	if pm := f.GetProcessingMode(); pm.GetRequestHeaderMode() == extprocv3.ProcessingMode_SKIP {
		fail("ext_proc: request headers are not sent")
	}
	checkLifecycleModes(f, fail)
	if !slices.Contains(f.GetMetadataOptions().GetReceivingNamespaces().GetUntyped(), extproc.MetadataNamespace) {
		fail("ext_proc: metadata_options.receiving_namespaces lacks %q, where the server writes the endpoint", extproc.MetadataNamespace)
	}
	ck, err := NewMutationChecker(f.GetMutationRules())
	if err != nil {
		fail("ext_proc mutation_rules: %v", err)
	} else {
		for _, h := range []string{w.EndpointHeader, extproc.MemberHeader} {
			if ck.Check(OpSet, h) != CheckOK || ck.Check(OpRemove, h) != CheckOK {
				fail("ext_proc: mutation_rules stop the server setting or removing %s", h)
			}
		}
	}
	return errors.Join(errs...)
}

// CheckOriginalDst checks that c is an ORIGINAL_DST cluster reading the
// endpoint only from metadata namespace ns under w's key.
func CheckOriginalDst(c *clusterv3.Cluster, ns string, w Wiring) error {
	if c.GetType() != clusterv3.Cluster_ORIGINAL_DST || c.GetLbPolicy() != clusterv3.Cluster_CLUSTER_PROVIDED {
		return fmt.Errorf("cluster %q is not an ORIGINAL_DST cluster with lb_policy CLUSTER_PROVIDED", c.GetName())
	}
	lb := c.GetOriginalDstLbConfig()
	if lb.GetUseHttpHeader() {
		return fmt.Errorf("cluster %s: use_http_header lets a request that bypassed the processor choose its upstream; read metadata_key only", c.GetName())
	}
	mk := lb.GetMetadataKey()
	if mk.GetKey() != ns || len(mk.GetPath()) != 1 || mk.GetPath()[0].GetKey() != w.EndpointHeader {
		return fmt.Errorf("cluster %s: metadata_key %v, want key %q path [%q] (where the server's answer lands)", c.GetName(), mk, ns, w.EndpointHeader)
	}
	return nil
}

// MinGRPCRequests is the least max_requests the cluster reaching
// coord-extproc may allow: each ext_proc stream and each ext_authz check
// is one request on it, and Envoy's default circuit breaker allows 1024.
const MinGRPCRequests = 10000

func checkGRPCCluster(c *clusterv3.Cluster, w Wiring, fail func(string, ...any)) {
	if err := CheckTLS(c); err != nil {
		fail("%v", err)
	}
	// Each ext_proc stream and each ext_authz check is one request on this
	// cluster; Envoy's default circuit breaker allows 1024 at once.
	maxReq := uint32(1024)
	for _, th := range c.GetCircuitBreakers().GetThresholds() {
		if th.GetPriority() == corev3.RoutingPriority_DEFAULT && th.GetMaxRequests() != nil {
			maxReq = th.GetMaxRequests().GetValue()
		}
	}
	if maxReq < MinGRPCRequests {
		fail("cluster %s: circuit breaker max_requests %d: requests past it fail at once (set %d or more)", c.GetName(), maxReq, MinGRPCRequests)
	}
	if c.GetTypedExtensionProtocolOptions()["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"] == nil {
		fail("cluster %s: no HTTP/2 protocol options; gRPC needs HTTP/2", c.GetName())
	}
	for _, e := range c.GetLoadAssignment().GetEndpoints() {
		for _, le := range e.GetLbEndpoints() {
			if p := le.GetEndpoint().GetAddress().GetSocketAddress().GetPortValue(); p != w.Port {
				fail("cluster %s: endpoint port %d, the server listens on %d", c.GetName(), p, w.Port)
			}
		}
	}
}

// DefaultRouteTimeout is Envoy's route timeout when none is set
// (RouteAction.timeout).
const DefaultRouteTimeout = 15 * time.Second

// checkRouteTimeout: a create or delete ext_proc stream lives until the
// upstream answers, so the route must give up before the server cuts the
// stream at a connection rotation or shutdown (w.StreamGrace); a timeout
// of 0 (none) could outlive any grace.
func checkRouteTimeout(rt *routev3.Route, w Wiring) error {
	t := DefaultRouteTimeout
	if d := rt.GetRoute().GetTimeout(); d != nil {
		t = d.AsDuration()
	}
	if t == 0 || t >= w.StreamGrace {
		return fmt.Errorf("route %v: timeout %s: a create/delete stream waiting for the upstream would be cut at a connection rotation or shutdown (the server's grace is %s); set a route timeout below it, or raise --shutdown-grace", rt.GetMatch(), t, w.StreamGrace)
	}
	return nil
}
