package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptrace"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/coord-extproc/coord-extproc/envoy"
)

type gateway struct {
	cfg       *config
	log       *slog.Logger
	checker   *envoy.MutationChecker
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

// flowBody is one direction's body as the filter passes it on.
type flowBody struct {
	r      io.Reader
	length int64 // -1: unknown (sent chunked)
	// trailers are those to pass on after the body; valid at r's EOF.
	trailers func() http.Header
	// reply is the local reply a streamed body ended in (it waits for
	// the body's end); nil for bodies not streamed.
	reply func() *localReply
	done  <-chan struct{} // closed at a streamed body's end; nil otherwise
}

func passThrough(r io.Reader, length int64, trailers func() http.Header) *flowBody {
	return &flowBody{r: r, length: length, trailers: trailers}
}

func (g *gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	// Envoy streams both ways at once; Go's HTTP/1 server does only when asked.
	_ = http.NewResponseController(w).EnableFullDuplex()
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
	var meta map[string]*structpb.Struct
	up := passThrough(r.Body, r.ContentLength, func() http.Header { return r.Trailer })
	var reply *localReply
	if g.cfg.api == "ext_proc" {
		p = g.newProcessor()
		defer p.finish()
		if up, reply = g.requestPath(ctx, p, r, &h); reply == nil {
			meta = p.metadata
		}
	} else {
		meta, reply = g.authorize(ctx, r, &h)
	}
	if reply != nil {
		g.writeLocal(w, reply)
		return
	}

	path, _ := h.get(":path")
	rt := g.matchRoute(path)
	if rt == nil {
		g.writeLocal(w, &localReply{status: 404, details: "route_not_found"})
		return
	}
	addr, ok := g.cfg.clusters[rt.cluster].pickHost(h, meta)
	if !ok {
		// Router with no host from the LB: 503, body "no healthy upstream".
		g.writeLocal(w, &localReply{status: 503, body: []byte("no healthy upstream"), details: "no_healthy_upstream"})
		return
	}
	// Once the request's body is through the filter, the stream is left
	// alone while the pod works: Envoy ≥ 1.37 closes it if nothing more
	// is expected; 1.34–1.36 keep it, and its failure fails the request.
	watched := make(chan func() *localReply, 1)
	if p != nil {
		go func() {
			if up.done != nil {
				select {
				case <-up.done:
				case <-ctx.Done():
				}
			}
			watched <- p.settle()
		}()
	}
	resp, err := g.forward(ctx, r, h, addr.String(), rt, up)
	if err != nil {
		method, _ := h.get(":method")
		g.cfg.upstreamLog.attempt(addr, rt.cluster, method, path, attemptFlag(err))
	}
	if p != nil {
		reply = (<-watched)()
	}
	if reply == nil && up.reply != nil {
		reply = up.reply()
	}
	if reply != nil {
		if err == nil {
			resp.Body.Close()
		}
		g.writeLocal(w, reply)
		return
	}
	if err != nil {
		g.writeLocal(w, upstreamFailure(err))
		return
	}
	defer resp.Body.Close()
	rh := responseHeaders(resp.StatusCode, resp.Header)
	down := passThrough(resp.Body, resp.ContentLength, func() http.Header { return resp.Trailer })
	if p != nil {
		if down, reply = g.responsePath(ctx, p, &rh, resp); reply != nil {
			g.writeLocal(w, reply)
			return
		}
	}
	status, _ := rh.get(":status")
	for k, vs := range rh.httpHeader() {
		w.Header()[http.CanonicalHeaderKey(k)] = vs
	}
	code, err := strconv.Atoi(status)
	if err != nil {
		code = resp.StatusCode
	}
	w.WriteHeader(code)
	if err := copyFlushing(w, down.r); err != nil {
		// The pod's connection broke mid-response: the attempt ends in a
		// termination (UC), the client's stream is reset.
		method, _ := h.get(":method")
		g.cfg.upstreamLog.attempt(addr, rt.cluster, method, path, flagUC)
		panic(http.ErrAbortHandler)
	}
	if down.reply != nil && down.reply() != nil {
		panic(http.ErrAbortHandler) // the response has started: Envoy can only reset
	}
	if p != nil {
		if stop := p.watch(); stop() != nil {
			panic(http.ErrAbortHandler)
		}
	}
	for k, vs := range down.trailers() {
		for _, v := range vs {
			w.Header().Add(http.TrailerPrefix+k, v)
		}
	}
}

// copyFlushing passes each chunk on as it comes, as Envoy streams. A read
// error is returned: Envoy resets a response it cannot finish.
func copyFlushing(w http.ResponseWriter, r io.Reader) error {
	f, _ := w.(http.Flusher)
	buf := make([]byte, chunkSize)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return nil // the client went away
			}
			if f != nil {
				f.Flush()
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				return err
			}
			return nil
		}
	}
}

// requestPath runs the request headers and body through ext_proc
// (Filter::decodeHeaders, decodeData, decodeTrailers).
func (g *gateway) requestPath(ctx context.Context, p *processor, r *http.Request, h *headerMap) (*flowBody, *localReply) {
	hasBody := r.ContentLength != 0 || len(r.TransferEncoding) > 0
	b := &body{p: p, s: requestSide, src: r.Body, length: r.ContentLength, trailers: func() http.Header { return r.Trailer }}
	return g.path(ctx, b, hasBody, r.ContentLength, h, &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{
		RequestHeaders: &extprocv3.HttpHeaders{Headers: h.proto(), EndOfStream: !hasBody},
	}}, p.mode.GetRequestHeaderMode(), phaseRequestHeaders)
}

// responsePath runs the response headers and body through ext_proc
// (Filter::encodeHeaders, encodeData, encodeTrailers).
func (g *gateway) responsePath(ctx context.Context, p *processor, rh *headerMap, resp *http.Response) (*flowBody, *localReply) {
	hasBody := resp.ContentLength != 0
	b := &body{p: p, s: responseSide, src: resp.Body, length: resp.ContentLength, trailers: func() http.Header { return resp.Trailer }}
	return g.path(ctx, b, hasBody, resp.ContentLength, rh, &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseHeaders{
		ResponseHeaders: &extprocv3.HttpHeaders{Headers: rh.proto(), EndOfStream: !hasBody},
	}}, p.mode.GetResponseHeaderMode(), phaseResponseHeaders)
}

// path sends one direction's headers (if the mode says so) and body (per
// the mode after any override).
func (g *gateway) path(ctx context.Context, b *body, hasBody bool, length int64, h *headerMap, hdrMsg *extprocv3.ProcessingRequest, hdrMode filterv3.ProcessingMode_HeaderSendMode, ph phase) (*flowBody, *localReply) {
	p := b.p
	var st *stream
	if !p.isComplete() && headerModeSends(hdrMode) {
		if reply := p.send(ctx, hdrMsg); reply != nil {
			return nil, reply
		}
		timeout := g.cfg.messageTimeout
		if hasBody && b.s.bodyMode(p.mode) == filterv3.ProcessingMode_FULL_DUPLEX_STREAMED {
			// Full duplex sends the body while the headers are out, and
			// runs no message timer.
			timeout = 0
			st = b.startStream(ctx)
		}
		resp, reply := p.next(ctx, timeout)
		if reply == nil {
			reply = p.handle(resp, ph, h)
		}
		if reply != nil {
			return nil, reply
		}
		if ph == phaseResponseHeaders && st == nil &&
			(!hasBody || b.s.bodyMode(p.mode) == filterv3.ProcessingMode_NONE && !b.s.sendsTrailers(p.mode)) {
			p.lastResponse()
		}
	}
	if st == nil && (!hasBody || p.isComplete()) {
		return passThrough(b.src, length, b.trailers), nil
	}
	switch mode := b.s.bodyMode(p.mode); {
	case st != nil || mode == filterv3.ProcessingMode_STREAMED || mode == filterv3.ProcessingMode_FULL_DUPLEX_STREAMED:
		if st == nil {
			st = b.startStream(ctx)
		}
		go st.receive(ctx)
		return st.flowBody(), nil
	case mode == filterv3.ProcessingMode_BUFFERED || mode == filterv3.ProcessingMode_BUFFERED_PARTIAL:
		rd, n, reply := b.buffered(ctx, h, mode == filterv3.ProcessingMode_BUFFERED_PARTIAL)
		if reply != nil {
			return nil, reply
		}
		return &flowBody{r: rd, length: n, trailers: func() http.Header { return b.outTrailers }}, nil
	}
	return passThrough(b.src, length, b.trailers), nil
}

// headerModeSends: DEFAULT means SEND for headers (ProcessingMode docs).
func headerModeSends(m filterv3.ProcessingMode_HeaderSendMode) bool {
	return m != filterv3.ProcessingMode_SKIP
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
// headers; the route timeout bounds the whole upstream exchange. Go's
// transport retries an idempotent request on a reused connection that
// failed; Envoy without a retry policy does not, so a second connection
// for one request fails it as Envoy would.
func (g *gateway) forward(ctx context.Context, r *http.Request, h headerMap, addr string, rt *route, ub *flowBody) (*http.Response, error) {
	path, _ := h.get(":path")
	method, _ := h.get(":method")
	host, _ := h.get(":authority")
	downstream := ctx
	ctx, cancel := context.WithTimeout(ctx, rt.timeout)
	conns := 0
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(httptrace.GotConnInfo) {
		if conns++; conns > 1 {
			cancel()
		}
	}})
	var rb io.Reader = ub.r
	if ub.length == 0 {
		rb = nil
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+addr+path, rb)
	if err != nil {
		cancel()
		return nil, err
	}
	req.Header = h.httpHeader()
	req.Host = host
	req.ContentLength = ub.length
	if len(r.Trailer) > 0 && rb != nil { // declared by the client; values come at the body's end
		req.Trailer = http.Header{}
		for k := range r.Trailer {
			req.Trailer[k] = nil
		}
		req.ContentLength = -1
		req.Body = trailerFiller{req.Body, req.Trailer, ub}
	}
	resp, err := g.transport.RoundTrip(req)
	if err != nil {
		cancel()
		switch {
		case downstream.Err() != nil:
			return nil, &attemptError{flagDC, err}
		case errors.Is(ctx.Err(), context.DeadlineExceeded):
			return nil, &attemptError{flagUT, err}
		case conns == 0: // never connected: refused, unreachable or connect timeout
			return nil, &attemptError{flagUF, err}
		}
		return nil, &attemptError{flagUC, errUpstreamReset}
	}
	resp.Body = cancelOnClose{resp.Body, cancel}
	return resp, nil
}

var errUpstreamReset = errors.New("upstream connection reset before the response")

// attemptError is a failed upstream attempt and its response flag.
type attemptError struct {
	flag string
	err  error
}

func (e *attemptError) Error() string { return e.flag + ": " + e.err.Error() }
func (e *attemptError) Unwrap() error { return e.err }

func attemptFlag(err error) string {
	var ae *attemptError
	if errors.As(err, &ae) {
		return ae.flag
	}
	return ""
}

// trailerFiller copies the filter's trailers into the upstream request's
// once the body is through, as Go's transport reads them at EOF.
type trailerFiller struct {
	io.ReadCloser
	dst http.Header
	fb  *flowBody
}

func (t trailerFiller) Read(p []byte) (int, error) {
	n, err := t.ReadCloser.Read(p)
	if errors.Is(err, io.EOF) {
		for k := range t.dst {
			delete(t.dst, k)
		}
		for k, vs := range t.fb.trailers() {
			t.dst[http.CanonicalHeaderKey(k)] = vs
		}
	}
	return n, err
}

type cancelOnClose struct {
	io.ReadCloser
	cancel context.CancelFunc
}

func (c cancelOnClose) Close() error { err := c.ReadCloser.Close(); c.cancel(); return err }

// upstreamFailure words the router's local replies the way Envoy does.
// A connect timeout is a connection failure (503), not a request timeout.
func upstreamFailure(err error) *localReply {
	switch attemptFlag(err) {
	case flagUT, flagDC:
		return &localReply{status: 504, body: []byte("upstream request timeout"), details: "upstream_response_timeout"}
	case flagUC:
		return &localReply{status: 503, body: []byte("upstream connect error or disconnect/reset before headers. reset reason: connection termination"), details: "upstream_reset_before_response_started{connection_termination}"}
	}
	return &localReply{status: 503, body: []byte("upstream connect error or disconnect/reset before headers. reset reason: connection failure"), details: "upstream_reset_before_response_started{connection_failure}"}
}

// writeLocal sends a local reply (Utility::sendLocalReply): the
// processor's header mutations go through the filter's own mutation rules
// (a refusal is only logged), then a body gets content-length and, unless
// set, text/plain; an empty body has neither content-type nor length.
func (g *gateway) writeLocal(w http.ResponseWriter, lr *localReply) {
	h := headerMap{{":status", strconv.Itoa(lr.status)}}
	if lr.mutation != nil {
		if err := g.applyHeaderMutations(lr.mutation, &h); err != nil {
			g.log.Error("immediate response mutations failed", "err", err)
		}
	}
	for _, o := range lr.authzHeaders {
		applyAuthzHeader(&h, o)
	}
	if len(lr.body) > 0 {
		if _, ok := h.get("content-type"); !ok {
			h.set("content-type", "text/plain")
		}
	} else {
		h.remove("content-type")
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
