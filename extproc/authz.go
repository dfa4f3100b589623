package extproc

import (
	"context"
	"runtime/debug"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/coord-extproc/coord-extproc/registry"
	"github.com/coord-extproc/coord-extproc/route"
)

// Authz implements ext_authz with the same table and resolution as
// Server. ext_authz never sees the response, so create routes are routed
// without binding and delete routes without deleting; both are counted in
// coord_extproc_authz_lifecycle_unhandled_total.
type Authz struct {
	authv3.UnimplementedAuthorizationServer
	s *Server
}

var _ authv3.AuthorizationServer = (*Authz)(nil)

// NewAuthz returns the ext_authz face of s.
func NewAuthz(s *Server) *Authz { return &Authz{s: s} }

// Check answers one request: OK with the endpoint header, or denied with
// the status and JSON body ext_proc would have sent.
func (a *Authz) Check(ctx context.Context, req *authv3.CheckRequest) (resp *authv3.CheckResponse, err error) {
	m := a.s.opt.Metrics
	defer func() {
		if p := recover(); p != nil {
			m.panics.Inc()
			a.s.opt.Logger.Error("recovered panic on the request path", "panic", p, "stack", string(debug.Stack()))
			resp, err = nil, status.Error(codes.Internal, "internal error")
		}
	}()
	start := time.Now()
	defer m.observe(apiAuthz, start)
	h := req.GetAttributes().GetRequest().GetHttp()
	get := authzHeaders(h)
	o := decide(registry.WithBudget(ctx, a.s.opt.DecisionTimeout), a.s.opt.Table, a.s.opt.Registry, h.GetMethod(), h.GetPath(), get)
	m.decision(apiAuthz, o.action, o.result)
	if o.rule != nil && o.routed && (o.rule.Action == route.ActionCreate || o.rule.Action == route.ActionDelete) {
		m.authzLifecycle.WithLabelValues(o.action).Inc()
	}
	switch {
	case o.immediate():
		return denied(&o), nil
	case !o.routed:
		return &authv3.CheckResponse{
			Status: &rpcstatus.Status{Code: int32(codes.OK)},
			HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
				HeadersToRemove: []string{a.s.opt.EndpointHeader, MemberHeader},
			}},
		}, nil
	}
	// Envoy's ext_authz applies headers_to_remove after setting headers,
	// so the endpoint header is only ever set here (with overwrite, which
	// also replaces every client-sent copy), never listed for removal.
	return a.s.checks.get(o.member.ID, o.member.Address, func() *authv3.CheckResponse {
		r := &authv3.CheckResponse{
			Status: &rpcstatus.Status{Code: int32(codes.OK)},
			HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
				Headers: []*corev3.HeaderValueOption{
					authzHeader(a.s.opt.EndpointHeader, o.member.Address),
					authzHeader(MemberHeader, o.member.ID),
				},
			}},
			DynamicMetadata: authzMetadata(a.s.opt.EndpointHeader, o.member.Address),
		}
		a.s.codec.Freeze(r)
		return r
	}), nil
}

// authzHeader is a header for ext_authz, which reads `value` (not
// raw_value, unlike ext_proc) and, for request headers, only the append
// flag: unset sets the header, overwriting what the client sent
// (ext_authz_grpc_impl.cc, copyHeaderFieldIntoResponse). append_action is
// not read there, so none is sent.
func authzHeader(key, value string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: key, Value: value}}
}

func denied(o *outcome) *authv3.CheckResponse {
	hdrs := []*corev3.HeaderValueOption{authzHeader("content-type", "application/json")}
	if o.retry {
		hdrs = append(hdrs, authzHeader("retry-after", retryAfterSeconds))
	}
	code := codes.PermissionDenied
	if o.status >= 500 {
		code = codes.Unavailable
	}
	body := ""
	if o.message != "" {
		body = string(errorBody(o.message))
	}
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(code), Message: o.message},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status:  &typev3.HttpStatus{Code: typev3.StatusCode(o.status)},
			Headers: hdrs,
			Body:    body,
		}},
	}
}

// authzHeaders reads headers from the map Envoy fills by default, or from
// the header list it sends with encode_raw_headers. In the map Envoy joins
// a repeated header's values with ',': a value holding one is taken as
// repeated (400), even where a custom id_pattern allows ',' — otherwise
// "a,b" would route as one id (issue 24 #10).
func authzHeaders(h interface {
	GetHeaders() map[string]string
	GetHeaderMap() *corev3.HeaderMap
}) func(string) string {
	if m := h.GetHeaders(); len(m) > 0 {
		return func(name string) string {
			if v := m[name]; !strings.Contains(v, ",") {
				return v
			}
			return route.RepeatedHeader
		}
	}
	list := h.GetHeaderMap().GetHeaders()
	return func(name string) string { return requestHeader(list, name) }
}
