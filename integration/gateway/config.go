package main

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	mutationv3 "github.com/envoyproxy/go-control-plane/envoy/config/common/mutation_rules/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	authzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
)

// config is the part of an Envoy bootstrap the stand-in implements. Any
// setting outside it is refused at start-up rather than silently ignored:
// a stand-in that quietly differs from Envoy would make the suite lie.
type config struct {
	listen string
	api    string // "ext_proc" or "ext_authz"
	grpc   upstream

	// ext_proc (envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor)
	mode              *extprocv3.ProcessingMode
	allowModeOverride bool
	messageTimeout    time.Duration
	maxMessageTimeout time.Duration
	failureModeAllow  bool
	streamTimeout     time.Duration
	rules             *mutationv3.HeaderMutationRules
	receivingNS       []string

	// ext_authz (envoy.extensions.filters.http.ext_authz.v3.ExtAuthz)
	authzTimeout  time.Duration
	statusOnError int

	routes   []route
	clusters map[string]*podCluster
	paths    pathPolicy
}

type upstream struct {
	cluster string
	addr    string
}

type route struct {
	prefix  string
	cluster string
	timeout time.Duration
}

// podCluster is an ORIGINAL_DST cluster.
type podCluster struct {
	name           string
	headerName     string // empty: header not used
	metadataNS     string
	metadataKey    string
	connectTimeout time.Duration
}

// Defaults from Envoy's API documentation.
const (
	defaultMessageTimeout = 200 * time.Millisecond // ext_proc message_timeout
	defaultAuthzTimeout   = 200 * time.Millisecond // grpc_service.timeout for ext_authz
	defaultRouteTimeout   = 15 * time.Second       // route.timeout
	defaultOriginalDstHdr = "x-envoy-original-dst-host"
)

func fromBootstrap(b *bootstrapv3.Bootstrap) (*config, error) {
	ls := b.GetStaticResources().GetListeners()
	if len(ls) != 1 || len(ls[0].GetFilterChains()) != 1 || len(ls[0].GetFilterChains()[0].GetFilters()) != 1 {
		return nil, errors.New("the stand-in supports exactly one listener with one filter chain holding one http_connection_manager")
	}
	sa := ls[0].GetAddress().GetSocketAddress()
	c := &config{listen: net.JoinHostPort(sa.GetAddress(), strconv.Itoa(int(sa.GetPortValue()))), clusters: map[string]*podCluster{}}
	var hcm hcmv3.HttpConnectionManager
	if err := ls[0].GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(&hcm); err != nil {
		return nil, fmt.Errorf("http_connection_manager: %w", err)
	}
	var err error
	if c.paths, err = readPathPolicy(&hcm); err != nil {
		return nil, err
	}
	if err := c.readFilters(hcm.GetHttpFilters()); err != nil {
		return nil, err
	}
	if err := c.readRoutes(hcm.GetRouteConfig()); err != nil {
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

func (c *config) readFilters(fs []*hcmv3.HttpFilter) error {
	if len(fs) != 2 || fs[1].GetName() != "envoy.filters.http.router" {
		return errors.New("the stand-in supports http_filters [ext_proc or ext_authz, router]")
	}
	msg, err := fs[0].GetTypedConfig().UnmarshalNew()
	if err != nil {
		return fmt.Errorf("http filter %s: %w", fs[0].GetName(), err)
	}
	switch f := msg.(type) {
	case *extprocv3.ExternalProcessor:
		c.api = "ext_proc"
		c.grpc.cluster = f.GetGrpcService().GetEnvoyGrpc().GetClusterName()
		c.mode = f.GetProcessingMode()
		if c.mode == nil {
			c.mode = &extprocv3.ProcessingMode{}
		}
		c.allowModeOverride = f.GetAllowModeOverride()
		c.messageTimeout = durationOr(f.GetMessageTimeout().AsDuration(), f.GetMessageTimeout() != nil, defaultMessageTimeout)
		c.maxMessageTimeout = f.GetMaxMessageTimeout().AsDuration()
		c.failureModeAllow = f.GetFailureModeAllow()
		c.streamTimeout = f.GetGrpcService().GetTimeout().AsDuration()
		c.rules = f.GetMutationRules()
		c.receivingNS = f.GetMetadataOptions().GetReceivingNamespaces().GetUntyped()
		if f.GetObservabilityMode() || f.GetDisableImmediateResponse() || f.GetRequestAttributes() != nil || f.GetResponseAttributes() != nil {
			return errors.New("ext_proc: observability_mode, disable_immediate_response and attributes are not implemented by the stand-in")
		}
		if err := supportedMode(c.mode); err != nil {
			return err
		}
	case *authzv3.ExtAuthz:
		c.api = "ext_authz"
		c.grpc.cluster = f.GetGrpcService().GetEnvoyGrpc().GetClusterName()
		c.authzTimeout = durationOr(f.GetGrpcService().GetTimeout().AsDuration(), f.GetGrpcService().GetTimeout() != nil, defaultAuthzTimeout)
		c.failureModeAllow = f.GetFailureModeAllow()
		// ext_authz answers 403 on error unless status_on_error says otherwise.
		c.statusOnError = 403
		if s := f.GetStatusOnError(); s != nil && s.GetCode() != 0 {
			c.statusOnError = int(s.GetCode())
		}
		if f.GetWithRequestBody() != nil || f.GetHttpService() != nil {
			return errors.New("ext_authz: with_request_body and http_service are not implemented by the stand-in")
		}
	default:
		return fmt.Errorf("http filter %s (%T) is not implemented by the stand-in", fs[0].GetName(), msg)
	}
	if c.grpc.cluster == "" {
		return errors.New("the filter's grpc_service must use envoy_grpc with a cluster_name")
	}
	return nil
}

// supportedMode refuses body modes the stand-in does not implement.
func supportedMode(m *extprocv3.ProcessingMode) error {
	for _, b := range []extprocv3.ProcessingMode_BodySendMode{m.GetRequestBodyMode(), m.GetResponseBodyMode()} {
		if b != extprocv3.ProcessingMode_NONE && b != extprocv3.ProcessingMode_BUFFERED {
			return fmt.Errorf("ext_proc body mode %s is not implemented by the stand-in (NONE and BUFFERED are)", b)
		}
	}
	return nil
}

func (c *config) readRoutes(rc *routev3.RouteConfiguration) error {
	vhs := rc.GetVirtualHosts()
	if len(vhs) != 1 {
		return errors.New("the stand-in supports one virtual host")
	}
	for _, r := range vhs[0].GetRoutes() {
		prefix, ok := r.GetMatch().GetPathSpecifier().(*routev3.RouteMatch_Prefix)
		if !ok || r.GetRoute().GetCluster() == "" {
			return fmt.Errorf("route %v: the stand-in supports prefix matches to a named cluster", r.GetMatch())
		}
		timeout := defaultRouteTimeout
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
	case cl.GetType() == clusterv3.Cluster_ORIGINAL_DST:
		// OriginalDstClusterFactory::createClusterImpl's checks.
		if cl.GetLbPolicy() != clusterv3.Cluster_CLUSTER_PROVIDED {
			return errors.New("only CLUSTER_PROVIDED is allowed with cluster type ORIGINAL_DST")
		}
		if cl.GetLoadAssignment() != nil {
			return errors.New("ORIGINAL_DST clusters must have no load assignment configured")
		}
		lb := cl.GetOriginalDstLbConfig()
		if !lb.GetUseHttpHeader() && lb.GetHttpHeaderName() != "" {
			return errors.New("http_header_name is set but use_http_header is false")
		}
		pc := &podCluster{name: cl.GetName(), connectTimeout: durationOr(cl.GetConnectTimeout().AsDuration(), cl.GetConnectTimeout() != nil, 5*time.Second)}
		if lb.GetUseHttpHeader() {
			pc.headerName = lb.GetHttpHeaderName()
			if pc.headerName == "" {
				pc.headerName = defaultOriginalDstHdr
			}
		}
		if mk := lb.GetMetadataKey(); mk != nil {
			if len(mk.GetPath()) != 1 {
				return errors.New("metadata_key: the stand-in supports a one-segment path")
			}
			pc.metadataNS, pc.metadataKey = mk.GetKey(), mk.GetPath()[0].GetKey()
		}
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
