package extproc

import (
	"bytes"
	"context"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

// direction is what Envoy told us about one direction of the request:
// its body mode (ProcessingRequest.protocol_config) and whether its end
// has come.
type direction struct {
	mode  filterv3.ProcessingMode_BodySendMode
	ended bool // end_of_stream on its headers or body, or its trailers, arrived
}

// duplex: Envoy drained every chunk it sent and forwards only what comes
// back in streamed_response (source/extensions/filters/http/ext_proc/
// ext_proc.cc, handleDataFullDuplexStreamedMode); any other body answer is
// a spurious message (processor_state.cc, handleStreamedBodyCallback).
func (d *direction) duplex() bool { return d.mode == filterv3.ProcessingMode_FULL_DUPLEX_STREAMED }

// flowing: chunks only we hold may still be on their way. A full-duplex
// response counts as flowing before its headers arrive: Envoy may send
// its first chunk (or, with response headers SKIP, only chunks) at any
// moment, and a chunk sent into a stream we just ended is lost.
func (d *direction) flowing() bool { return d.duplex() && !d.ended }

func (d *direction) saw(endOfStream bool) {
	if endOfStream {
		d.ended = true
	}
}

type side int

const (
	requestBody side = iota
	responseBody
)

// bodyAnswer gives a chunk back unchanged in the form its mode requires:
// an empty BodyResponse (Envoy keeps its copy: BUFFERED, STREAMED,
// BUFFERED_PARTIAL) or, in full duplex, the chunk itself.
func (d *direction) bodyAnswer(b *extprocv3.HttpBody, s side) *extprocv3.ProcessingResponse {
	var br *extprocv3.BodyResponse
	if d.duplex() {
		br = streamed(b.GetBody(), b.GetEndOfStream())
	} else {
		br = &extprocv3.BodyResponse{}
	}
	if s == requestBody {
		return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestBody{RequestBody: br}}
	}
	return &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{ResponseBody: br}}
}

func streamed(body []byte, eos bool) *extprocv3.BodyResponse {
	return &extprocv3.BodyResponse{Response: &extprocv3.CommonResponse{
		BodyMutation: &extprocv3.BodyMutation{Mutation: &extprocv3.BodyMutation_StreamedResponse{
			StreamedResponse: &extprocv3.StreamedBodyResponse{Body: body, EndOfStream: eos},
		}},
	}}
}

// held is a full-duplex create response kept back until its binding is
// written: the response headers' answer and every body chunk. Envoy runs
// no message timer in full duplex (ProcessorState::onStartProcessorCall),
// so holding costs the client only the time the body takes to arrive.
type held struct {
	active bool
	chunks []*extprocv3.HttpBody
	size   int
}

// hold keeps one more chunk; at the end of the body it binds and
// releases; past the body limit it releases everything unbound.
func (x *exchange) hold(ctx context.Context, b *extprocv3.HttpBody) {
	x.held.chunks = append(x.held.chunks, b)
	x.held.size += len(b.GetBody())
	switch {
	case x.held.size > x.s.opt.BodyLimit:
		x.done(ResultUpstreamError, "create response body over the limit: not bound", "bytes", x.held.size, "limit", x.s.opt.BodyLimit)
		x.flush()
	case b.GetEndOfStream():
		x.release(ctx)
	}
}

// release ends the hold at the end of the body (or at the trailers,
// whose own answer follows the chunks'):
// bind, then let the response through, or replace it if the binding
// could not be written.
func (x *exchange) release(ctx context.Context) {
	var body bytes.Buffer
	for _, c := range x.held.chunks {
		body.Write(c.GetBody())
	}
	if reply := x.bindJSON(ctx, body.Bytes()); reply != nil {
		x.held = held{}
		x.emit(reply)
		return
	}
	x.flush()
}

// flush answers the held headers and chunks, unchanged and in order.
func (x *exchange) flush() {
	x.emit(continueResponseHeaders())
	for _, c := range x.held.chunks {
		x.emit(&extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_ResponseBody{
			ResponseBody: streamed(c.GetBody(), c.GetEndOfStream()),
		}})
	}
	x.held = held{}
}
