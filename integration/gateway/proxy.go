package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/types/known/structpb"
)

// bufferLimit is Envoy's default per-connection buffer limit (1 MiB): the
// most a BUFFERED body phase holds.
const bufferLimit = 1 << 20

type gateway struct {
	cfg       *config
	log       *slog.Logger
	checker   *checker
	proc      extprocv3.ExternalProcessorClient
	authz     authv3.AuthorizationClient
	transport *http.Transport
}

// localReply is Envoy's sendLocalReply: a response made by the proxy.
type localReply struct {
	status       int
	body         []byte
	mutation     *extprocv3.HeaderMutation   // immediate response headers (ext_proc)
	authzHeaders []*corev3.HeaderValueOption // denied response headers (ext_authz)
	details      string
}

func (g *gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	h := requestHeaders(r)
	// The connection manager's path handling comes before every filter.
	if raw, _ := h.get(":path"); raw != "" {
		path, ok := g.cfg.paths.apply(raw)
		if !ok {
			g.writeLocal(w, &localReply{status: 400, body: []byte("Bad Request"), details: "path_normalization_failed"})
			return
		}
		h.set(":path", path)
	}
	h.add("x-forwarded-proto", "http")
	var p *processor
	if g.cfg.api == "ext_proc" {
		p = g.newProcessor()
		defer p.close()
		if reply := g.requestPhase(ctx, p, r, &h); reply != nil {
			g.writeLocal(w, reply)
			return
		}
	} else if reply := g.authorize(ctx, r, &h); reply != nil {
		g.writeLocal(w, reply)
		return
	}

	path, _ := h.get(":path")
	rt := g.matchRoute(path)
	if rt == nil {
		g.writeLocal(w, &localReply{status: 404, details: "route_not_found"})
		return
	}
	var meta = p.metadataOrNil()
	addr, ok := g.cfg.clusters[rt.cluster].pickHost(h, meta)
	if !ok {
		// Router with no host from the LB: 503, body "no healthy upstream".
		g.writeLocal(w, &localReply{status: 503, body: []byte("no healthy upstream"), details: "no_healthy_upstream"})
		return
	}
	resp, err := g.forward(ctx, r, h, addr.String(), rt)
	if err != nil {
		g.writeLocal(w, upstreamFailure(err))
		return
	}
	defer resp.Body.Close()
	rh := responseHeaders(resp.StatusCode, resp.Header)
	var body []byte
	buffered := false
	if p != nil {
		reply, b, done := g.responsePhase(ctx, p, &rh, resp)
		if reply != nil {
			g.writeLocal(w, reply)
			return
		}
		body, buffered = b, done
	}
	status, _ := rh.get(":status")
	for k, vs := range rh.httpHeader() {
		w.Header()[http.CanonicalHeaderKey(k)] = vs
	}
	if buffered {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	}
	code, err := strconv.Atoi(status)
	if err != nil {
		code = resp.StatusCode
	}
	w.WriteHeader(code)
	if buffered {
		_, _ = w.Write(body)
		return
	}
	_, _ = io.Copy(w, resp.Body)
}

func (p *processor) metadataOrNil() map[string]*structpb.Struct {
	if p == nil {
		return nil
	}
	return p.metadata
}

// requestPhase runs the request headers (and, if asked, the buffered
// request body) through ext_proc.
func (g *gateway) requestPhase(ctx context.Context, p *processor, r *http.Request, h *headerMap) *localReply {
	hasBody := r.ContentLength != 0 || len(r.TransferEncoding) > 0
	if headerModeSends(p.mode.GetRequestHeaderMode()) {
		req := &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{
			RequestHeaders: &extprocv3.HttpHeaders{Headers: h.proto(), EndOfStream: !hasBody},
		}}
		resp, reply := p.call(ctx, req, phaseRequestHeaders)
		if reply != nil {
			return reply
		}
		if reply := p.handle(resp, phaseRequestHeaders, h, nil); reply != nil {
			return reply
		}
	}
	if !p.complete && hasBody && p.mode.GetRequestBodyMode() == filterv3.ProcessingMode_BUFFERED {
		body, err := io.ReadAll(io.LimitReader(r.Body, bufferLimit+1))
		if err != nil {
			return &localReply{status: 400, details: "downstream_body_read_error"}
		}
		if len(body) > bufferLimit {
			return &localReply{status: 413, body: []byte("Payload Too Large"), details: "request_payload_too_large"}
		}
		resp, reply := p.call(ctx, &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{
			RequestBody: &extprocv3.HttpBody{Body: body, EndOfStream: true},
		}}, phaseRequestBody)
		if reply != nil {
			return reply
		}
		if reply := p.handle(resp, phaseRequestBody, h, &body); reply != nil {
			return reply
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
	}
	return nil
}

// responsePhase sends the upstream response headers and, when the mode
// asks for it, the buffered body. It returns the body when it had to
// buffer it.
func (g *gateway) responsePhase(ctx context.Context, p *processor, rh *headerMap, resp *http.Response) (*localReply, []byte, bool) {
	if p.complete {
		return nil, nil, false
	}
	bodyMode := p.mode.GetResponseBodyMode()
	if headerModeSends(p.mode.GetResponseHeaderMode()) {
		noBody := resp.ContentLength == 0
		pr, reply := p.call(ctx, &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{
			ResponseHeaders: &extprocv3.HttpHeaders{Headers: rh.proto(), EndOfStream: noBody},
		}}, phaseResponseHeaders)
		if reply != nil {
			return reply, nil, false
		}
		if reply := p.handle(pr, phaseResponseHeaders, rh, nil); reply != nil {
			return reply, nil, false
		}
		bodyMode = p.mode.GetResponseBodyMode()
	}
	if p.complete || bodyMode != filterv3.ProcessingMode_BUFFERED {
		return nil, nil, false
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, bufferLimit+1))
	if err != nil {
		return &localReply{status: 502, details: "upstream_body_read_error"}, nil, false
	}
	if len(body) > bufferLimit {
		return &localReply{status: 500, body: []byte("Internal Server Error"), details: "response_payload_too_large"}, nil, false
	}
	pr, reply := p.call(ctx, &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{
		ResponseBody: &extprocv3.HttpBody{Body: body, EndOfStream: true},
	}}, phaseResponseBody)
	if reply != nil {
		return reply, nil, false
	}
	if reply := p.handle(pr, phaseResponseBody, rh, &body); reply != nil {
		return reply, nil, false
	}
	return nil, body, true
}

func (g *gateway) matchRoute(path string) *route {
	for i := range g.cfg.routes {
		if strings.HasPrefix(path, g.cfg.routes[i].prefix) {
			return &g.cfg.routes[i]
		}
	}
	return nil
}

// forward sends the request to the picked host with the (mutated)
// headers; the route timeout bounds the whole upstream exchange.
func (g *gateway) forward(ctx context.Context, r *http.Request, h headerMap, addr string, rt *route) (*http.Response, error) {
	path, _ := h.get(":path")
	method, _ := h.get(":method")
	host, _ := h.get(":authority")
	ctx, cancel := context.WithTimeout(ctx, rt.timeout)
	req, err := http.NewRequestWithContext(ctx, method, "http://"+addr+path, r.Body)
	if err != nil {
		cancel()
		return nil, err
	}
	req.Header = h.httpHeader()
	req.Host = host
	req.ContentLength = r.ContentLength
	resp, err := g.transport.RoundTrip(req)
	if err != nil {
		cancel()
		return nil, err
	}
	resp.Body = cancelOnClose{resp.Body, cancel}
	return resp, nil
}

type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c cancelOnClose) Close() error { err := c.ReadCloser.Close(); c.cancel(); return err }

// upstreamFailure words the router's local replies the way Envoy does.
func upstreamFailure(err error) *localReply {
	var ne net.Error
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()) {
		return &localReply{status: 504, body: []byte("upstream request timeout"), details: "upstream_response_timeout"}
	}
	return &localReply{status: 503, body: []byte("upstream connect error or disconnect/reset before headers. reset reason: connection failure"), details: "upstream_reset_before_response_started{connection_failure}"}
}

// writeLocal sends a local reply: text/plain when there is a body, then
// the processor's header mutations.
func (g *gateway) writeLocal(w http.ResponseWriter, lr *localReply) {
	h := headerMap{{":status", strconv.Itoa(lr.status)}}
	if len(lr.body) > 0 {
		h.set("content-type", "text/plain")
	}
	if lr.mutation != nil {
		if err := g.applyHeaderMutations(lr.mutation, &h, permissive()); err != nil {
			g.log.Error("immediate response mutations failed", "err", err)
		}
	}
	for _, o := range lr.authzHeaders {
		applyAuthzHeader(&h, o)
	}
	for k, vs := range h.httpHeader() {
		w.Header()[http.CanonicalHeaderKey(k)] = vs
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(lr.body)))
	if lr.details != "" {
		g.log.Debug("local reply", "status", lr.status, "details", lr.details)
	}
	w.WriteHeader(lr.status)
	_, _ = w.Write(lr.body)
}
