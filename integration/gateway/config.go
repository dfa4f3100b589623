package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	mutationv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	authzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/coord-extproc/coord-extproc/envoy"
)

// config is the part of an Envoy bootstrap the stand-in implements. Any
// setting outside it is refused at start-up rather than silently ignored:
// a stand-in that quietly differs from Envoy would make the suite lie.
type config struct {
	listen string
	api    string // "ext_proc" or "ext_authz"
	grpc   upstream
	// legacy plays Envoy 1.34 where it differs in ways the server depends
	// on: the ext_proc stream stays open until the HTTP request ends (1.35
	// and 1.36 too), and a spurious answer drops the processor instead of
	// failing the request (1.35 and later fail it closed:
	// ext_proc_fail_close_spurious_resp). Otherwise the stand-in plays
	// envoy.Version.
	legacy bool

	// ext_proc (envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor)
	mode              *extprocv3.ProcessingMode
	allowModeOverride bool
	messageTimeout    time.Duration
	maxMessageTimeout time.Duration
	failureModeAllow  bool
	statusOnError     int // ext_proc and ext_authz alike
	rules             *mutationv3.HeaderMutationRules
	receivingNS       []string

	// ext_authz (envoy.extensions.filters.http.ext_authz.v3.ExtAuthz)
	authzTimeout time.Duration
	authzNS      string // envoy.AuthzMetadataNamespace: where its metadata lands, whatever the filter's name

	routes   []route
	clusters map[string]*podCluster
	paths    pathPolicy
	// upstreamLog is the router's upstream_log (nil: none).
	upstreamLog *upstreamLog
}

type upstream struct {
	cluster string
	addr    string
	tls     *tls.Config // the cluster's UpstreamTlsContext; nil: plaintext
}

type route struct {
	prefix  string
	cluster string
	timeout time.Duration
}

// podCluster is an ORIGINAL_DST cluster.
type podCluster struct {
	name           string
	headerName     string   // empty: header not used
	metadataNS     string   // metadata_key.key
	metadataPath   []string // metadata_key.path
	portOverride   uint32   // upstream_port_override, 0 when unset
	connectTimeout time.Duration
}

// Defaults from Envoy's API documentation.
const (
	defaultMessageTimeout = 200 * time.Millisecond // ext_proc message_timeout
	defaultAuthzTimeout   = 200 * time.Millisecond // grpc_service.timeout for ext_authz
	defaultOriginalDstHdr = "x-envoy-original-dst-host"
)

func fromBootstrap(b *bootstrapv3.Bootstrap) (*config, error) {
	ls := b.GetStaticResources().GetListeners()
	if len(ls) != 1 {
		return nil, errors.New("the stand-in supports exactly one listener")
	}
	// Only what the stand-in plays: a restored original destination
	// (use_original_dst, listener filters) or a filter before the HTTP
	// connection manager (one could set the ORIGINAL_DST filter state)
	// would give chooseHost other sources than the metadata.
	if err := unsupported(ls[0], "name", "address", "filter_chains"); err != nil {
		return nil, err
	}
	if fcs := ls[0].GetFilterChains(); len(fcs) != 1 || len(fcs[0].GetFilters()) != 1 {
		return nil, errors.New("the stand-in plays one filter chain holding only the http_connection_manager")
	}
	if err := unsupported(ls[0].GetFilterChains()[0], "filters"); err != nil {
		return nil, err
	}
	sa := ls[0].GetAddress().GetSocketAddress()
	c := &config{listen: net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue()))), clusters: map[string]*podCluster{}}
	r, err := envoy.ReadRouting(b)
	if err != nil {
		return nil, err
	}
	if err := unsupported(r.HCM, "stat_prefix", "route_config", "http_filters", "normalize_path", "merge_slashes", "path_with_escaped_slashes_action"); err != nil {
		return nil, err
	}
	for _, f := range r.HCM.GetHttpFilters() {
		if err := unsupported(f, "name", "typed_config"); err != nil {
			return nil, err
		}
	}
	if c.paths, err = readPathPolicy(r.HCM); err != nil {
		return nil, err
	}
	if err := c.readFilter(r); err != nil {
		return nil, err
	}
	if c.upstreamLog, err = readUpstreamLog(r.HCM.GetHttpFilters()[1].GetTypedConfig(), c.grpc.cluster); err != nil {
		return nil, err
	}
	if err := c.readRoutes(r.HCM.GetRouteConfig()); err != nil {
		return nil, err
	}
	for _, cl := range b.GetStaticResources().GetClusters() {
		if err := c.readCluster(cl); err != nil {
			return nil, fmt.Errorf("cluster %s: %w", cl.GetName(), err)
		}
	}
	if c.grpc.addr == "" {
		return nil, fmt.Errorf("no STATIC cluster %q for the %s gRPC service", c.grpc.cluster, c.api)
	}
	for _, r := range c.routes {
		if c.clusters[r.cluster] == nil {
			return nil, fmt.Errorf("route %q points at %q, which is not an ORIGINAL_DST cluster", r.prefix, r.cluster)
		}
	}
	return c, nil
}

// unsupported names the fields of m the stand-in does not play: m with
// the implemented fields cleared must be empty.
func unsupported(m proto.Message, implemented ...string) error {
	rest := proto.Clone(m)
	fields := rest.ProtoReflect().Descriptor().Fields()
	for _, name := range implemented {
		fd := fields.ByName(protoreflect.Name(name))
		if fd == nil {
			return fmt.Errorf("stand-in bug: %T has no field %s", m, name)
		}
		rest.ProtoReflect().Clear(fd)
	}
	var set []string
	rest.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		set = append(set, string(fd.Name()))
		return true
	})
	if len(set) > 0 {
		return fmt.Errorf("%s: %s not implemented by the stand-in", rest.ProtoReflect().Descriptor().Name(), strings.Join(set, ", "))
	}
	return nil
}

func (c *config) readFilter(r *envoy.Routing) error {
	c.api = r.API
	c.statusOnError = 500
	switch f := r.Filter.(type) {
	case *extprocv3.ExternalProcessor:
		// grpc_service.timeout is accepted and, as in Envoy, ignored for
		// ext_proc streams; deferred_close_timeout only matters in
		// observability mode, which is refused.
		if err := unsupported(f, "grpc_service", "failure_mode_allow", "processing_mode", "allow_mode_override",
			"message_timeout", "max_message_timeout", "mutation_rules", "metadata_options", "status_on_error", "deferred_close_timeout"); err != nil {
			return err
		}
		if err := unsupported(f.GetMetadataOptions(), "receiving_namespaces"); err != nil {
			return err
		}
		c.grpc.cluster = f.GetGrpcService().GetEnvoyGrpc().GetClusterName()
		c.mode = f.GetProcessingMode()
		if c.mode == nil {
			c.mode = &extprocv3.ProcessingMode{}
		}
		// Envoy's own start-up check (ext_proc config.cc): full duplex
		// needs the trailers, which carry the end of a body that has them.
		fd := extprocv3.ProcessingMode_FULL_DUPLEX_STREAMED
		if c.mode.GetRequestBodyMode() == fd && c.mode.GetRequestTrailerMode() != extprocv3.ProcessingMode_SEND ||
			c.mode.GetResponseBodyMode() == fd && c.mode.GetResponseTrailerMode() != extprocv3.ProcessingMode_SEND {
			return errors.New("ext_proc: a FULL_DUPLEX_STREAMED body mode needs that direction's trailer mode SEND")
		}
		c.allowModeOverride = f.GetAllowModeOverride()
		c.messageTimeout = durationOr(f.GetMessageTimeout().AsDuration(), f.GetMessageTimeout() != nil, defaultMessageTimeout)
		c.maxMessageTimeout = f.GetMaxMessageTimeout().AsDuration()
		c.failureModeAllow = f.GetFailureModeAllow()
		c.rules = f.GetMutationRules()
		c.receivingNS = f.GetMetadataOptions().GetReceivingNamespaces().GetUntyped()
		if s := f.GetStatusOnError(); s != nil && s.GetCode() != 0 {
			c.statusOnError = int(s.GetCode())
		}
	case *authzv3.ExtAuthz:
		if err := unsupported(f, "grpc_service", "failure_mode_allow", "status_on_error", "transport_api_version"); err != nil {
			return err
		}
		c.grpc.cluster = f.GetGrpcService().GetEnvoyGrpc().GetClusterName()
		c.authzTimeout = durationOr(f.GetGrpcService().GetTimeout().AsDuration(), f.GetGrpcService().GetTimeout() != nil, defaultAuthzTimeout)
		c.failureModeAllow = f.GetFailureModeAllow()
		c.authzNS = r.Namespace
		// ext_authz answers 403 on error unless status_on_error says otherwise.
		c.statusOnError = 403
		if s := f.GetStatusOnError(); s != nil && s.GetCode() != 0 {
			c.statusOnError = int(s.GetCode())
		}
	}
	if c.grpc.cluster == "" {
		return errors.New("the filter's grpc_service must use envoy_grpc with a cluster_name")
	}
	return nil
}

func (c *config) readRoutes(rc *routev3.RouteConfiguration) error {
	if err := unsupported(rc, "name", "virtual_hosts"); err != nil {
		return err
	}
	vhs := rc.GetVirtualHosts()
	if len(vhs) != 1 {
		return errors.New("the stand-in supports one virtual host")
	}
	if err := unsupported(vhs[0], "name", "domains", "routes"); err != nil {
		return err
	}
	for _, r := range vhs[0].GetRoutes() {
		prefix, ok := r.GetMatch().GetPathSpecifier().(*routev3.RouteMatch_Prefix)
		if !ok || r.GetRoute().GetCluster() == "" {
			return fmt.Errorf("route %v: the stand-in supports prefix matches to a named cluster", r.GetMatch())
		}
		if err := unsupported(r, "match", "route"); err != nil {
			return err
		}
		if err := unsupported(r.GetMatch(), "prefix"); err != nil {
			return err
		}
		if err := unsupported(r.GetRoute(), "cluster", "timeout"); err != nil {
			return err
		}
		timeout := envoy.DefaultRouteTimeout
		if t := r.GetRoute().GetTimeout(); t != nil {
			timeout = t.AsDuration()
		}
		c.routes = append(c.routes, route{prefix: prefix.Prefix, cluster: r.GetRoute().GetCluster(), timeout: timeout})
	}
	return nil
}

func (c *config) readCluster(cl *clusterv3.Cluster) error {
	switch {
	case cl.GetName() == c.grpc.cluster:
		eps := cl.GetLoadAssignment().GetEndpoints()
		if len(eps) == 0 || len(eps[0].GetLbEndpoints()) == 0 {
			return errors.New("no endpoint")
		}
		sa := eps[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
		c.grpc.addr = net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue())))
		var err error
		if c.grpc.tls, err = readUpstreamTLS(cl); err != nil {
			return err
		}
	case cl.GetType() == clusterv3.Cluster_ORIGINAL_DST:
		// OriginalDstClusterFactory::createClusterImpl's checks.
		if cl.GetLbPolicy() != clusterv3.Cluster_CLUSTER_PROVIDED {
			return errors.New("only CLUSTER_PROVIDED is allowed with cluster type ORIGINAL_DST")
		}
		if cl.GetLoadAssignment() != nil {
			return errors.New("ORIGINAL_DST clusters must have no load assignment configured")
		}
		// circuit_breakers and cleanup_interval are accepted: limits far
		// above the suite's load, and host expiry the suite never waits for.
		if err := unsupported(cl, "name", "type", "lb_policy", "connect_timeout", "cleanup_interval", "original_dst_lb_config", "circuit_breakers"); err != nil {
			return err
		}
		lb := cl.GetOriginalDstLbConfig()
		if err := unsupported(lb, "use_http_header", "http_header_name", "metadata_key", "upstream_port_override"); err != nil {
			return err
		}
		if !lb.GetUseHttpHeader() && lb.GetHttpHeaderName() != "" {
			return errors.New("http_header_name is set but use_http_header is false")
		}
		pc := &podCluster{name: cl.GetName(), connectTimeout: durationOr(cl.GetConnectTimeout().AsDuration(), cl.GetConnectTimeout() != nil, 5*time.Second)}
		if lb.GetUseHttpHeader() {
			// Envoy keeps the name as an Http::LowerCaseString.
			pc.headerName = strings.ToLower(lb.GetHttpHeaderName())
			if pc.headerName == "" {
				pc.headerName = defaultOriginalDstHdr
			}
		}
		if mk := lb.GetMetadataKey(); mk != nil {
			pc.metadataNS = mk.GetKey()
			for _, seg := range mk.GetPath() {
				pc.metadataPath = append(pc.metadataPath, seg.GetKey())
			}
		}
		pc.portOverride = lb.GetUpstreamPortOverride().GetValue()
		c.clusters[cl.GetName()] = pc
	}
	return nil
}

func durationOr(d time.Duration, set bool, def time.Duration) time.Duration {
	if !set {
		return def
	}
	return d
}
