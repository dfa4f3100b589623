package main

import (
	"context"
	"net/http"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/structpb"
)

// authorize plays Envoy's ext_authz filter (gRPC service): one Check per
// request under the grpc_service timeout, its headers map holding every
// request header, pseudo-headers included (CheckRequestUtils::
// setHttpRequest). OK: headers are set (from `value`, not raw_value) and
// then headers_to_remove removed — in that order, as source/extensions/
// filters/http/ext_authz/ext_authz.cc applies them — and the answer's
// dynamic metadata is filed under the fixed namespace envoy.filters.http.ext_authz
// whatever the filter is named (ext_authz.cc, Filter::onComplete). Denied: a local
// reply with the denied status (403 when unset), headers and body.
// Error: failure_mode_allow, else status_on_error.
func (g *gateway) authorize(ctx context.Context, r *http.Request, h *headerMap) (map[string]*structpb.Struct, *localReply) {
	ctx, cancel := context.WithTimeout(ctx, g.cfg.authzTimeout)
	defer cancel()
	flat := map[string]string{}
	for _, e := range *h {
		if prev, ok := flat[e.key]; ok {
			flat[e.key] = prev + "," + e.value // repeated headers are joined, as Envoy does
		} else {
			flat[e.key] = e.value
		}
	}
	path, _ := h.get(":path")
	method, _ := h.get(":method")
	host, _ := h.get(":authority")
	resp, err := g.authz.Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Id: flat["x-request-id"], Method: method, Path: path, Host: host, Scheme: "http",
			Protocol: r.Proto, Headers: flat,
		}},
	}})
	if err != nil {
		if g.cfg.failureModeAllow {
			return nil, nil
		}
		return nil, &localReply{status: g.cfg.statusOnError, details: "ext_authz_error"}
	}
	if codes.Code(resp.GetStatus().GetCode()) != codes.OK {
		d := resp.GetDeniedResponse()
		code := int(d.GetStatus().GetCode())
		if code == 0 {
			code = http.StatusForbidden
		}
		return nil, &localReply{status: code, body: []byte(d.GetBody()), authzHeaders: d.GetHeaders(), details: "ext_authz_denied"}
	}
	ok := resp.GetOkResponse()
	for _, o := range ok.GetHeaders() {
		applyAuthzHeader(h, o)
	}
	for _, name := range ok.GetHeadersToRemove() {
		n := strings.ToLower(name)
		if strings.HasPrefix(n, ":") || n == "host" { // Envoy refuses to remove these
			continue
		}
		h.remove(n)
	}
	meta := map[string]*structpb.Struct{}
	if md := resp.GetDynamicMetadata(); len(md.GetFields()) > 0 {
		meta[g.cfg.authzNS] = md
	}
	return meta, nil
}

// applyAuthzHeader applies one of an OK answer's request headers as
// Envoy does (ext_authz_grpc_impl.cc, copyHeaderFieldIntoResponse): only
// the deprecated append flag is read — true appends, false or unset sets,
// overwriting — and append_action is ignored (it is read only for
// response_headers_to_add).
func applyAuthzHeader(h *headerMap, o *corev3.HeaderValueOption) {
	name, value := strings.ToLower(o.GetHeader().GetKey()), o.GetHeader().GetValue()
	if o.GetAppend().GetValue() {
		h.add(name, value)
	} else {
		h.set(name, value)
	}
}
