package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

// bufferLimit is Envoy's default per-connection buffer limit (1 MiB): the
// most a BUFFERED body phase holds, and where BUFFERED_PARTIAL sends.
const bufferLimit = 1 << 20

// chunkSize is the most the stand-in reads at once; Envoy's codecs hand
// the filter chain what arrived, which for the suite's paced writers is
// one write at a time.
const chunkSize = 16 << 10

// side names one direction's messages.
type side struct {
	body, trailers phase
	response       bool
}

var (
	requestSide  = side{phaseRequestBody, phaseRequestTrailers, false}
	responseSide = side{phaseResponseBody, phaseResponseTrailers, true}
)

func (s side) bodyMode(m *filterv3.ProcessingMode) filterv3.ProcessingMode_BodySendMode {
	if s.response {
		return m.GetResponseBodyMode()
	}
	return m.GetRequestBodyMode()
}

// sendsTrailers: trailers are sent only when the mode says SEND
// (DEFAULT means SKIP for trailers).
func (s side) sendsTrailers(m *filterv3.ProcessingMode) bool {
	if s.response {
		return m.GetResponseTrailerMode() == filterv3.ProcessingMode_SEND
	}
	return m.GetRequestTrailerMode() == filterv3.ProcessingMode_SEND
}

func (s side) bodyMsg(b []byte, eos bool) *extprocv3.ProcessingRequest {
	hb := &extprocv3.HttpBody{Body: b, EndOfStream: eos}
	if s.response {
		return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseBody{ResponseBody: hb}}
	}
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: hb}}
}

func (s side) trailersMsg(h headerMap) *extprocv3.ProcessingRequest {
	t := &extprocv3.HttpTrailers{Trailers: h.proto()}
	if s.response {
		return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_ResponseTrailers{ResponseTrailers: t}}
	}
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestTrailers{RequestTrailers: t}}
}

// body is one direction's body on its way through the filter.
type body struct {
	p        *processor
	s        side
	src      io.Reader
	length   int64              // -1: not known (chunked)
	trailers func() http.Header // the source's trailers, valid once src is at EOF
	// out receives what Envoy passes on (streamed modes); outTrailers is
	// complete when out is closed; reply is the local reply the body
	// ended in, if any.
	out         *io.PipeWriter
	in          *io.PipeReader
	outTrailers http.Header
	reply       *localReply
	done        chan struct{}
}

// chunks hands on each read as it comes, as Envoy's codec hands the
// filter chain each piece with end_stream: with a known length the last
// piece ends the body; a chunked body ends with an empty piece (HTTP/1's
// terminating chunk), or with trailers.
func (b *body) chunks(yield func(data []byte, last bool) bool) error {
	var seen int64
	for {
		buf := make([]byte, chunkSize)
		n, err := b.src.Read(buf)
		seen += int64(n)
		known := b.length > 0 && seen == b.length
		if n > 0 && !yield(buf[:n], known) {
			return nil
		}
		if known {
			return nil
		}
		if errors.Is(err, io.EOF) {
			if len(b.trailers()) == 0 { // trailers end the body themselves
				yield(nil, true)
			}
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func toHeaderMap(h http.Header) headerMap {
	var m headerMap
	for k, vs := range h {
		for _, v := range vs {
			m = append(m, header{strings.ToLower(k), v})
		}
	}
	return m
}

// finishTrailers sends the trailers when the mode asks for them (and
// applies the answer), or passes them on unchanged.
func (b *body) finishTrailers(ctx context.Context, t http.Header, send bool) *localReply {
	if len(t) == 0 {
		return nil
	}
	tm := toHeaderMap(t)
	if send && !b.p.isComplete() {
		if r := b.p.send(ctx, b.s.trailersMsg(tm)); r != nil {
			return r
		}
		resp, r := b.p.next(ctx, b.timeout())
		if r != nil {
			return r
		}
		if r := b.p.handle(resp, b.s.trailers, &tm); r != nil {
			return r
		}
		if b.s == responseSide {
			b.p.lastResponse()
		}
	}
	b.outTrailers = tm.httpHeader()
	return nil
}

func (b *body) timeout() time.Duration {
	if b.s.bodyMode(b.p.mode) == filterv3.ProcessingMode_FULL_DUPLEX_STREAMED {
		return 0 // no message timer in full duplex
	}
	return b.p.g.cfg.messageTimeout
}

// buffered plays BUFFERED and BUFFERED_PARTIAL, which hold the headers
// until the body's answer (handleDataBufferedMode,
// handleDataBufferedPartialMode): the body up to the limit goes out in
// one message; in partial mode the rest then passes unprocessed. h is the
// held headers, which the answer may still change.
func (b *body) buffered(ctx context.Context, h *headerMap, partial bool) (io.Reader, int64, *localReply) {
	data, out, r := b.bufferedData(ctx, h, partial)
	if r != nil {
		return nil, 0, r
	}
	if out != nil {
		return out, -1, nil
	}
	if len(b.outTrailers) > 0 {
		return bytes.NewReader(data), -1, nil
	}
	return bytes.NewReader(data), int64(len(data)), nil
}

func (b *body) bufferedData(ctx context.Context, h *headerMap, partial bool) ([]byte, io.Reader, *localReply) {
	data, err := io.ReadAll(io.LimitReader(b.src, bufferLimit+1))
	if err != nil {
		return nil, nil, &localReply{status: 400, details: "body_read_error"}
	}
	ended := len(data) <= bufferLimit
	if !ended && !partial {
		if b.s.response {
			return nil, nil, &localReply{status: 500, body: []byte("Internal Server Error"), details: "response_payload_too_large"}
		}
		return nil, nil, &localReply{status: 413, body: []byte("Payload Too Large"), details: "request_payload_too_large"}
	}
	var t http.Header
	if ended {
		t = b.trailers()
	}
	if r := b.p.send(ctx, b.s.bodyMsg(data, ended && len(t) == 0)); r != nil {
		return nil, nil, r
	}
	resp, r := b.p.next(ctx, b.timeout())
	if r != nil {
		return nil, nil, r
	}
	if resp != nil {
		if c, ok := common(resp, b.s.body); ok && c.GetBodyMutation().GetStreamedResponse() != nil {
			if r := b.p.spurious("streamed_response outside FULL_DUPLEX_STREAMED"); r != nil {
				return nil, nil, r
			}
		} else if r := b.p.handle(resp, b.s.body, h); r != nil {
			return nil, nil, r
		} else if ok {
			data = mutateBody(c, data)
		}
	}
	if !ended {
		return nil, io.MultiReader(bytes.NewReader(data), b.src), nil
	}
	if r := b.finishTrailers(ctx, t, b.s.sendsTrailers(b.p.mode)); r != nil {
		return nil, nil, r
	}
	return data, nil, nil
}

// mutateBody mirrors MutationUtils::applyBodyMutations.
func mutateBody(c *extprocv3.CommonResponse, data []byte) []byte {
	switch m := c.GetBodyMutation().GetMutation().(type) {
	case *extprocv3.BodyMutation_Body:
		return m.Body
	case *extprocv3.BodyMutation_ClearBody:
		if m.ClearBody {
			return nil
		}
	}
	return data
}

// stream plays STREAMED and FULL_DUPLEX_STREAMED. STREAMED keeps each
// chunk it sends in a queue and passes on, in order, what each answer
// makes of it (handleStreamedBodyResponse). Full duplex drains each chunk
// and passes on only what comes back in streamed_response
// (handleDataFullDuplexStreamedMode, handleDuplexStreamedBodyResponse):
// a chunk in flight when the stream ends is gone. On a clean close Envoy
// re-injects the STREAMED queue and passes the rest unprocessed
// (ProcessorState::clearAsyncState). Chunks are sent as they arrive,
// without waiting for answers; full duplex sends the trailers as soon as
// they arrive too (onTrailers), STREAMED once every chunk is answered
// (finalizeBodyResponse).
type stream struct {
	*body
	fd          bool
	mu          sync.Mutex
	cond        *sync.Cond
	queue       [][]byte // STREAMED: sent, not yet answered
	bypass      bool     // processing complete: pass chunks straight on
	srcDone     bool
	srcTrailers http.Header
}

func (b *body) startStream(ctx context.Context) *stream {
	st := &stream{body: b, fd: b.s.bodyMode(b.p.mode) == filterv3.ProcessingMode_FULL_DUPLEX_STREAMED}
	st.cond = sync.NewCond(&st.mu)
	b.in, b.out = io.Pipe()
	b.done = make(chan struct{})
	go st.send(ctx)
	return st
}

// flowBody is what the stream passes on, read as it comes.
func (st *stream) flowBody() *flowBody {
	return &flowBody{
		r: st.in, length: -1, done: st.done,
		trailers: func() http.Header { <-st.done; return st.outTrailers },
		reply: func() *localReply {
			<-st.done
			st.mu.Lock()
			defer st.mu.Unlock()
			return st.reply
		},
	}
}

func (st *stream) send(ctx context.Context) {
	_ = st.chunks(func(data []byte, eos bool) bool {
		st.mu.Lock()
		if st.bypass {
			st.mu.Unlock()
			_, err := st.out.Write(data)
			return err == nil
		}
		if !st.fd {
			st.queue = append(st.queue, data)
			st.cond.Broadcast()
		}
		st.mu.Unlock()
		if r := st.p.send(ctx, st.s.bodyMsg(data, eos)); r != nil {
			st.fail(r)
			return false
		}
		return true
	})
	t := st.trailers()
	if st.fd && len(t) > 0 && st.s.sendsTrailers(st.p.mode) {
		if r := st.p.send(ctx, st.s.trailersMsg(toHeaderMap(t))); r != nil {
			st.fail(r)
		}
	}
	st.mu.Lock()
	st.srcDone, st.srcTrailers = true, t
	st.cond.Broadcast()
	st.mu.Unlock()
}

func (st *stream) fail(r *localReply) {
	st.mu.Lock()
	if st.reply == nil {
		st.reply = r
	}
	st.cond.Broadcast()
	st.mu.Unlock()
}

// receive reads the answers until the body (and trailers) are through,
// writing what Envoy passes on to out. It runs after the headers' answer.
func (st *stream) receive(ctx context.Context) {
	defer close(st.done)
	if st.fd {
		st.receiveDuplex(ctx)
	} else {
		st.receiveStreamed(ctx)
	}
	st.mu.Lock()
	r := st.reply
	st.mu.Unlock()
	if r != nil {
		st.out.CloseWithError(fmt.Errorf("local reply %d", r.status))
		return
	}
	st.out.Close()
}

// answer waits for the next answer; false when the body is finished
// another way (local reply, or the processor gone: rest passed on).
func (st *stream) answer(ctx context.Context) (*extprocv3.ProcessingResponse, bool) {
	resp, r := st.p.next(ctx, st.timeout())
	switch {
	case r != nil:
		st.fail(r)
		return nil, false
	case resp == nil: // the stream ended: pass on what Envoy still holds
		st.bypassRest()
		return nil, false
	case resp.GetImmediateResponse() != nil:
		st.p.finish()
		st.fail(immediateReply(resp.GetImmediateResponse()))
		return nil, false
	}
	st.p.receiveMetadata(resp)
	return resp, true
}

func (st *stream) receiveStreamed(ctx context.Context) {
	for st.waitOwed() {
		resp, ok := st.answer(ctx)
		if !ok {
			return
		}
		c, ok := common(resp, st.s.body)
		if !ok || c.GetBodyMutation().GetStreamedResponse() != nil {
			st.failSpurious(fmt.Sprintf("%T in STREAMED mode", resp.GetResponse()))
			return
		}
		st.mu.Lock()
		data := st.queue[0]
		st.queue = st.queue[1:]
		st.mu.Unlock()
		if _, err := st.out.Write(mutateBody(c, data)); err != nil {
			return
		}
	}
	st.mu.Lock()
	t, failed := st.srcTrailers, st.reply != nil
	st.mu.Unlock()
	if failed {
		return
	}
	if st.s == responseSide && !(len(t) > 0 && st.s.sendsTrailers(st.p.mode)) {
		st.p.lastResponse() // the last chunk's answer was the last one
	}
	if r := st.finishTrailers(ctx, t, st.s.sendsTrailers(st.p.mode)); r != nil {
		st.fail(r)
	}
}

func (st *stream) receiveDuplex(ctx context.Context) {
	for {
		resp, ok := st.answer(ctx)
		if !ok {
			return
		}
		if _, isTrailers := common(resp, st.s.trailers); isTrailers {
			st.mu.Lock()
			for !st.srcDone {
				st.cond.Wait()
			}
			tm := toHeaderMap(st.srcTrailers)
			st.mu.Unlock()
			if r := st.p.handle(resp, st.s.trailers, &tm); r != nil {
				st.fail(r)
				return
			}
			st.outTrailers = tm.httpHeader()
			if st.s == responseSide {
				st.p.lastResponse()
			}
			return
		}
		c, ok := common(resp, st.s.body)
		sr := c.GetBodyMutation().GetStreamedResponse()
		if !ok || sr == nil {
			st.failSpurious(fmt.Sprintf("%T without streamed_response in FULL_DUPLEX_STREAMED mode", resp.GetResponse()))
			return
		}
		if _, err := st.out.Write(sr.GetBody()); err != nil {
			return
		}
		if sr.GetEndOfStream() {
			if st.s == responseSide { // isLastBodyResponse: streamed_response.end_of_stream
				st.p.lastResponse()
			}
			return
		}
	}
}

// waitOwed blocks until an answer is owed (true) or the body is through
// with nothing owed (false).
func (st *stream) waitOwed() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	for len(st.queue) == 0 && !st.srcDone && st.reply == nil {
		st.cond.Wait()
	}
	return len(st.queue) > 0 && st.reply == nil
}

// bypassRest: processing is complete; what Envoy still holds goes on,
// then the rest of the body and its trailers, unprocessed.
func (st *stream) bypassRest() {
	st.mu.Lock()
	st.bypass = true
	// Under the lock, so the sender's next chunk cannot overtake these.
	for _, d := range st.queue { // full duplex queued nothing: those bytes are lost
		if _, err := st.out.Write(d); err != nil {
			break
		}
	}
	st.queue = nil
	for !st.srcDone {
		st.cond.Wait()
	}
	t := st.srcTrailers
	st.mu.Unlock()
	st.outTrailers = t
}

func (st *stream) failSpurious(what string) {
	if r := st.p.spurious(what); r != nil {
		st.fail(r)
		return
	}
	st.bypassRest() // legacy or fail-open: go on without the processor
}
