package extproc

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/coord-extproc/coord-extproc/registry"
	"github.com/coord-extproc/coord-extproc/route"
)

// exchange is the state of one HTTP request seen through ext_proc. It
// records exactly one decision metric, when the outcome is final, and
// knows when the stream may end (see over).
type exchange struct {
	s        *Server
	seen     bool // request headers arrived
	o        outcome
	awaiting bool // create/delete: waiting for the upstream response
	status   int  // upstream response status
	recorded bool
	final    bool // the decision has had its final answer
	replied  bool // an immediate response was sent: Envoy is done with us
	req      direction
	resp     direction
	// bodyEarly: Envoy sends bodies without waiting for the headers'
	// answer, and then ignores mode overrides (modeoverride.go).
	bodyEarly bool
	held      held
	// The answers to the message at hand, in order: first, then more
	// (only a released full-duplex create has more than one).
	first *extprocv3.ProcessingResponse
	more  []*extprocv3.ProcessingResponse
}

// over reports whether the stream may end now (SPEC §5.1 "Stream
// lifetime"): the final answer is out and no chunk whose bytes only we
// hold can still be on its way. Envoy keeps the answers it has and, on a
// clean close, continues without the processor — re-injecting any
// STREAMED chunks still queued (ProcessorState::clearAsyncState) — so
// only a full-duplex direction must be drained to its end first: Envoy
// drops its own copy of each chunk it sends there.
func (x *exchange) over() bool {
	if x.replied {
		return true
	}
	return x.final && !x.req.flowing() && !x.resp.flowing()
}

// emit queues one answer.
func (x *exchange) emit(r *extprocv3.ProcessingResponse) {
	if x.first == nil {
		x.first = r
		return
	}
	x.more = append(x.more, r)
}

// answers calls send with each queued answer in order and clears them.
func (x *exchange) answers(send func(*extprocv3.ProcessingResponse) error) error {
	first, more := x.first, x.more
	x.first, x.more = nil, x.more[:0]
	if first == nil {
		return nil
	}
	if err := send(first); err != nil {
		return err
	}
	for _, r := range more {
		if err := send(r); err != nil {
			return err
		}
	}
	return nil
}

// handle answers one message; false for a message it does not know.
func (x *exchange) handle(ctx context.Context, req *extprocv3.ProcessingRequest) bool {
	if pc := req.GetProtocolConfig(); pc != nil { // sent once, with Envoy's first message
		x.req.mode, x.resp.mode = pc.GetRequestBodyMode(), pc.GetResponseBodyMode()
		x.bodyEarly = pc.GetSendBodyWithoutWaitingForHeaderResponse()
	}
	switch r := req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestHeaders:
		if x.seen { // Envoy sends them once; answer a repeat without re-deciding
			x.emit(x.s.pass)
			return true
		}
		x.seen = true
		x.req.saw(r.RequestHeaders.GetEndOfStream())
		x.emit(x.onRequestHeaders(ctx, r.RequestHeaders))
	case *extprocv3.ProcessingRequest_RequestBody:
		x.req.saw(r.RequestBody.GetEndOfStream())
		x.emit(x.req.bodyAnswer(r.RequestBody, requestBody))
	case *extprocv3.ProcessingRequest_RequestTrailers:
		x.req.ended = true
		x.emit(continueRequestTrailers())
	case *extprocv3.ProcessingRequest_ResponseHeaders:
		x.resp.saw(r.ResponseHeaders.GetEndOfStream())
		x.onResponseHeaders(ctx, r.ResponseHeaders)
	case *extprocv3.ProcessingRequest_ResponseBody:
		x.resp.saw(r.ResponseBody.GetEndOfStream())
		x.onResponseBody(ctx, r.ResponseBody)
	case *extprocv3.ProcessingRequest_ResponseTrailers:
		x.resp.ended = true
		if x.held.active {
			x.release(ctx)
		}
		x.emit(continueResponseTrailers())
	default:
		return false
	}
	return true
}

func (x *exchange) onRequestHeaders(ctx context.Context, h *extprocv3.HttpHeaders) *extprocv3.ProcessingResponse {
	start := time.Now()
	defer x.s.opt.Metrics.observe(apiExtProc, start)
	hdrs := h.GetHeaders().GetHeaders()
	get := func(name string) string { return requestHeader(hdrs, name) }
	x.o = decide(ctx, x.s.opt.Table, x.s.opt.Registry, get(":method"), get(":path"), get)
	o := &x.o
	switch {
	case o.immediate():
		x.record(o.result)
		x.replied = true
		return immediate(o.status, o.message, o.retry)
	case !o.routed:
		x.record(o.result)
		x.final = true
		return x.s.pass
	}
	switch o.rule.Action {
	case route.ActionCreate, route.ActionDelete:
		// Ask Envoy for the response (mode override) where Envoy takes it:
		// the binding is written, or deleted, on the upstream's verdict.
		policy := x.overridePolicy()
		if policy == overrideUseless {
			x.done(ResultInvalid, "create/delete refused: Envoy ignores mode_override with send_body_without_waiting_for_header_response, so the binding could not be written")
			x.replied = true
			return immediate(500, "Gateway misconfigured for this route", false)
		}
		x.awaiting = true
		resp := x.s.routedHeaders(o)
		if policy == overrideSend {
			resp.ModeOverride = overrideHeadersOnly
			if o.rule.WantsBody() {
				resp.ModeOverride = overrideWithBody
			}
		}
		return resp
	}
	x.record(o.result)
	x.final = true
	return x.s.sharedRouted(o)
}

func (x *exchange) onResponseHeaders(ctx context.Context, h *extprocv3.HttpHeaders) {
	if !x.awaiting {
		x.emit(continueResponseHeaders())
		return
	}
	hdrs := h.GetHeaders().GetHeaders()
	x.status, _ = strconv.Atoi(headerValue(hdrs, ":status"))
	o := &x.o
	if x.status != o.rule.ExpectedStatus {
		x.done(ResultUpstreamError, "upstream answered a lifecycle route with an unexpected status", "status", x.status)
		x.emit(continueResponseHeaders())
		return
	}
	switch {
	case o.rule.Action == route.ActionDelete:
		if err := x.s.opt.Registry.DeleteDestination(ctx, o.id); err != nil {
			// The pod deleted it; a stale binding would route to a pod
			// that no longer has it. Say so loudly; the response stands.
			x.done(ResultRegistryError, "destination deleted upstream but its binding could not be removed", "err", err)
		} else {
			x.done(ResultDeregistered, "")
		}
	case o.rule.IDFromHeader != "":
		if reply := x.bind(ctx, headerValue(hdrs, o.rule.IDFromHeader)); reply != nil {
			x.emit(reply)
			return
		}
	case h.GetEndOfStream():
		x.done(ResultUpstreamError, "create response has no body: not bound")
	case x.resp.duplex():
		// Full duplex: hold the headers and the body until the binding
		// is written, as Envoy's BUFFERED mode holds them elsewhere.
		x.held = held{active: true}
		return
	}
	// create with id_from_json: the verdict comes with the body.
	x.emit(continueResponseHeaders())
}

func (x *exchange) onResponseBody(ctx context.Context, b *extprocv3.HttpBody) {
	switch {
	case x.held.active:
		x.hold(ctx, b)
		return
	case !x.awaiting || !x.o.rule.WantsBody():
	case x.status != x.o.rule.ExpectedStatus: // Envoy sends headers first; defensive
		x.done(ResultUpstreamError, "create response body without its expected status: not bound", "status", x.status)
	case len(b.GetBody()) > x.s.opt.BodyLimit:
		x.done(ResultUpstreamError, "create response body over the limit: not bound", "bytes", len(b.GetBody()), "limit", x.s.opt.BodyLimit)
	default:
		if reply := x.bindJSON(ctx, b.GetBody()); reply != nil {
			x.emit(reply)
			return
		}
	}
	x.emit(x.resp.bodyAnswer(b, responseBody))
}

// bindJSON binds the id read from a create response's JSON body.
func (x *exchange) bindJSON(ctx context.Context, body []byte) *extprocv3.ProcessingResponse {
	var doc map[string]json.RawMessage
	var id string
	err := json.Unmarshal(body, &doc)
	if err == nil {
		err = json.Unmarshal(doc[x.o.rule.IDFromJSON], &id)
	}
	if err != nil {
		x.done(ResultUpstreamError, "create response has no string field "+strconv.Quote(x.o.rule.IDFromJSON)+": not bound", "err", err)
		return nil
	}
	return x.bind(ctx, id)
}

// bind writes the new destination's binding before the response is
// released: Envoy holds the response until this answer. It returns the
// immediate response that replaces the upstream's, or nil to release it.
func (x *exchange) bind(ctx context.Context, id string) *extprocv3.ProcessingResponse {
	if !x.o.rule.ValidID(id) {
		x.done(ResultUpstreamError, "create response carries an invalid id: not bound", "id", id)
		return nil
	}
	if err := x.s.opt.Registry.Bind(ctx, id, x.o.member.ID); errors.Is(err, registry.ErrConflict) {
		// The destination exists on another pod: binding this one too
		// would split it (SPEC §5.3). Nothing was written.
		x.done(ResultUpstreamError, "create for a destination another member holds: not bound", "id", id)
		x.replied = true
		return immediate(409, "Destination already exists", false)
	} else if err != nil {
		// The client must not believe the create succeeded while no
		// request can reach it: fail it so it is retried.
		x.done(ResultRegistryError, "created upstream but the binding could not be written", "id", id, "err", err)
		x.replied = true
		return immediate(503, "Registry unavailable: binding not written", true)
	}
	x.o.id = id
	x.done(ResultSpawned, "")
	return nil
}

func (x *exchange) done(result, warning string, args ...any) {
	x.awaiting = false
	x.final = true
	if warning != "" {
		x.s.warn.Warn(warning, append([]any{"rule", x.o.rule.Name, "member", x.o.member.ID}, args...)...)
	}
	x.record(result)
}

func (x *exchange) record(result string) {
	if x.recorded {
		return
	}
	x.recorded = true
	x.s.opt.Metrics.decision(apiExtProc, x.o.action, result)
}

// finish records a lifecycle exchange whose response never came (upstream
// failure, client gone).
func (x *exchange) finish() {
	if x.awaiting {
		x.done(ResultUpstreamError, "stream ended before the upstream response")
	}
}

// headerValue returns the first value of a lower-case header. Envoy sends
// raw_value (value only from old versions).
func headerValue(hdrs []*corev3.HeaderValue, name string) string {
	for _, h := range hdrs {
		if h.GetKey() == name {
			return valueOf(h)
		}
	}
	return ""
}

// valueOf is a header's value: raw_value when Envoy sent one, else value.
func valueOf(h *corev3.HeaderValue) string {
	if len(h.GetRawValue()) > 0 {
		return string(h.GetRawValue())
	}
	return h.GetValue()
}

// requestHeader is headerValue for the request headers a route reads:
// a header present more than once is route.RepeatedHeader, never one of
// its values (SPEC §5.2), so both APIs refuse it alike.
func requestHeader(hdrs []*corev3.HeaderValue, name string) string {
	var found *corev3.HeaderValue
	for _, h := range hdrs {
		if h.GetKey() == name {
			if found != nil {
				return route.RepeatedHeader
			}
			found = h
		}
	}
	if found == nil {
		return ""
	}
	return valueOf(found)
}
