package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// processor is the ext_proc filter for one HTTP request: one gRPC stream,
// as Envoy's Filter and its two ProcessorStates
// (source/extensions/filters/http/ext_proc/ext_proc.cc,
// processor_state.cc). Sends may come from two goroutines (a full-duplex
// body is sent while its answers are read); answers are read by one
// goroutine at a time.
type processor struct {
	g        *gateway
	mode     *filterv3.ProcessingMode // current, after any mode_override
	recv     chan recvResult
	mu       sync.Mutex // guards what follows
	stream   extprocv3.ExternalProcessor_ProcessClient
	cancel   context.CancelFunc
	complete bool // Filter::processing_complete_
	sentCfg  bool // protocol_config goes with the first message only
	metadata map[string]*structpb.Struct
	// bodySeen: a full-duplex body chunk went out, so the filter can no
	// longer fail open (ProcessorState::canFailOpen).
	bodySeen bool
}

type recvResult struct {
	resp *extprocv3.ProcessingResponse
	err  error
}

func (g *gateway) newProcessor() *processor {
	return &processor{g: g, mode: proto.Clone(g.cfg.mode).(*filterv3.ProcessingMode), metadata: map[string]*structpb.Struct{}}
}

func (p *processor) isComplete() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.complete
}

// finish marks processing complete and closes the stream (Filter::
// closeStream): nothing more is sent or taken from the processor.
func (p *processor) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.complete = true
	if p.stream != nil {
		_ = p.stream.CloseSend()
		p.cancel()
		p.stream = nil
	}
}

// lastResponse is Filter::closeGrpcStreamIfLastRespReceived (Envoy 1.37+,
// ext_proc_stream_close_optimization): once the answer that ends the
// response path has arrived — the response headers' with no body or trailers
// still to send, the last streamed or full-duplex chunk's, the trailers' —
// Envoy closes the stream. Never after a BUFFERED or BUFFERED_PARTIAL body
// answer: there the server must end the stream (isLastBodyResponse).
func (p *processor) lastResponse() {
	if !p.g.cfg.legacy {
		p.finish()
	}
}

// send opens the stream lazily (Filter::openStream) and sends one
// message; the first carries protocol_config (Filter::encodeProtocolConfig).
// A failure to open or send is onGrpcError.
func (p *processor) send(ctx context.Context, req *extprocv3.ProcessingRequest) *localReply {
	p.mu.Lock()
	if p.complete {
		p.mu.Unlock()
		return nil
	}
	if p.stream == nil {
		// The stream lives as long as the HTTP request at most; Envoy has
		// no whole-stream deadline (grpc_service.timeout is ignored).
		sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		s, err := p.g.proc.Process(sctx)
		if err != nil {
			cancel()
			p.mu.Unlock()
			return p.onGrpcError(status.Code(err))
		}
		p.stream, p.cancel, p.recv = s, cancel, make(chan recvResult, 64)
		go func() {
			for {
				r, err := s.Recv()
				p.recv <- recvResult{r, err}
				if err != nil {
					return
				}
			}
		}()
	}
	if !p.sentCfg {
		p.sentCfg = true
		req.ProtocolConfig = &extprocv3.ProtocolConfiguration{
			RequestBodyMode: p.mode.GetRequestBodyMode(), ResponseBodyMode: p.mode.GetResponseBodyMode(),
		}
	}
	fd := filterv3.ProcessingMode_FULL_DUPLEX_STREAMED
	switch req.GetRequest().(type) {
	case *extprocv3.ProcessingRequest_RequestBody:
		p.bodySeen = p.bodySeen || p.mode.GetRequestBodyMode() == fd
	case *extprocv3.ProcessingRequest_ResponseBody:
		p.bodySeen = p.bodySeen || p.mode.GetResponseBodyMode() == fd
	}
	err := p.stream.Send(req)
	p.mu.Unlock()
	if err != nil && !errors.Is(err, io.EOF) { // EOF: the server ended the stream; Recv says how
		return p.onGrpcError(status.Code(err))
	}
	return nil
}

// next waits for the processor's next answer. nil, nil means "go on
// without the processor" (stream closed, fail-open). timeout 0: no timer
// (full-duplex bodies run none, ProcessorState::onStartProcessorCall).
func (p *processor) next(ctx context.Context, timeout time.Duration) (*extprocv3.ProcessingResponse, *localReply) {
	if p.isComplete() {
		return nil, nil
	}
	var timer <-chan time.Time
	var t *time.Timer
	if timeout > 0 {
		t = time.NewTimer(timeout)
		defer t.Stop()
		timer = t.C
	}
	restarted := false
	for {
		select {
		case <-ctx.Done(): // the downstream went away
			p.finish()
			return nil, nil
		case <-timer:
			return nil, p.onMessageTimeout()
		case r := <-p.recv:
			if r.err != nil {
				if errors.Is(r.err, io.EOF) {
					p.finish() // Filter::onGrpcClose: the server is done with us
					return nil, nil
				}
				return nil, p.onGrpcError(status.Code(r.err))
			}
			// Filter::onNewTimeout: once per call, within [1ms, max_message_timeout].
			if ot := r.resp.GetOverrideMessageTimeout(); ot != nil {
				if d := ot.AsDuration(); t != nil && !restarted && d >= time.Millisecond && d <= p.g.cfg.maxMessageTimeout {
					t.Reset(d)
					restarted = true
				}
				continue
			}
			return r.resp, nil
		}
	}
}

// failOpen mirrors Filter::failureModeAllow: never once a full-duplex
// body chunk has left.
func (p *processor) failOpen() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.g.cfg.failureModeAllow && !p.bodySeen
}

// onGrpcError mirrors Filter::onGrpcError: status_on_error (500 unless
// set) with failure mode closed.
func (p *processor) onGrpcError(code codes.Code) *localReply {
	open := p.failOpen()
	p.finish()
	if open {
		return nil
	}
	return &localReply{status: p.g.cfg.statusOnError, details: fmt.Sprintf("ext_proc_error_gRPC_error_%d", code)}
}

// onMessageTimeout mirrors Filter::onMessageTimeout.
func (p *processor) onMessageTimeout() *localReply {
	open := p.failOpen()
	p.finish()
	if open {
		return nil
	}
	return &localReply{status: 504, details: "ext_proc_error_per-message_timeout_exceeded"}
}

// spurious is an answer of the wrong type for the state (processor_state
// returns FailedPrecondition). Envoy 1.34 dropped the processor and went
// on; since 1.35 (ext_proc_fail_close_spurious_resp) failure mode closed
// answers status_on_error.
func (p *processor) spurious(what string) *localReply {
	p.g.log.Warn("spurious ext_proc response", "got", what)
	open := p.g.cfg.legacy || p.failOpen()
	p.finish()
	if open {
		return nil
	}
	return &localReply{status: p.g.cfg.statusOnError, details: "spurious message"}
}

// overrideMode mirrors Filter::onReceiveMessage's mode_override handling:
// taken only with allow_mode_override, while headers are being processed,
// and when neither configured body mode is FULL_DUPLEX_STREAMED; header
// and trailer modes left DEFAULT keep the configured ones, body modes are
// taken as sent (effectiveModeOverride).
func (p *processor) overrideMode(o *filterv3.ProcessingMode) {
	cfg := p.g.cfg.mode
	fd := filterv3.ProcessingMode_FULL_DUPLEX_STREAMED
	if o == nil || !p.g.cfg.allowModeOverride || cfg.GetRequestBodyMode() == fd || cfg.GetResponseBodyMode() == fd {
		return
	}
	m := proto.Clone(cfg).(*filterv3.ProcessingMode)
	if o.GetRequestHeaderMode() != filterv3.ProcessingMode_DEFAULT {
		m.RequestHeaderMode = o.GetRequestHeaderMode()
	}
	if o.GetResponseHeaderMode() != filterv3.ProcessingMode_DEFAULT {
		m.ResponseHeaderMode = o.GetResponseHeaderMode()
	}
	if o.GetRequestTrailerMode() != filterv3.ProcessingMode_DEFAULT {
		m.RequestTrailerMode = o.GetRequestTrailerMode()
	}
	if o.GetResponseTrailerMode() != filterv3.ProcessingMode_DEFAULT {
		m.ResponseTrailerMode = o.GetResponseTrailerMode()
	}
	m.RequestBodyMode, m.ResponseBodyMode = o.GetRequestBodyMode(), o.GetResponseBodyMode()
	p.mode = m
}

// receiveMetadata mirrors Filter::setDynamicMetadata: only namespaces
// listed in metadata_options.receiving_namespaces are taken.
func (p *processor) receiveMetadata(resp *extprocv3.ProcessingResponse) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for ns, v := range resp.GetDynamicMetadata().GetFields() {
		for _, allowed := range p.g.cfg.receivingNS {
			if ns == allowed && v.GetStructValue() != nil {
				p.metadata[ns] = v.GetStructValue()
			}
		}
	}
}

// expectsResponse: the response path still sends the processor something
// (ProcessorState::noExternalProcess is its negation).
func (p *processor) expectsResponse() bool {
	m := p.mode
	return m.GetResponseHeaderMode() != filterv3.ProcessingMode_SKIP || m.GetResponseBodyMode() != filterv3.ProcessingMode_NONE ||
		m.GetResponseTrailerMode() == filterv3.ProcessingMode_SEND
}

// settle is called when the request path is done with the processor.
// Envoy ≥ 1.37 closes the stream itself once no answer is expected
// (Filter::closeGrpcStreamIfLastRespReceived, on by default through
// ext_proc_stream_close_optimization). Envoy 1.34–1.36 keeps it until the
// HTTP request ends (Filter::onDestroy): a stream the server has not
// ended can still fail, and that fails the request. watch reports such a
// failure; call its stop when the request ends.
func (p *processor) settle() (stop func() *localReply) {
	if !p.g.cfg.legacy && !p.expectsResponse() {
		p.finish()
	}
	return p.watch()
}

// watch reads the stream while nothing else waits on it (between the
// request and response paths, and after the response path): an error
// there is Filter::onGrpcError with processing not complete.
func (p *processor) watch() (stop func() *localReply) {
	if p.isComplete() {
		return func() *localReply { return nil }
	}
	quit := make(chan struct{})
	done := make(chan *localReply, 1)
	go func() {
		select {
		case <-quit:
			done <- nil
		case r := <-p.recv:
			switch {
			case r.err == nil:
				done <- p.spurious(fmt.Sprintf("%T while no answer was expected", r.resp.GetResponse()))
			case errors.Is(r.err, io.EOF):
				p.finish()
				done <- nil
			default:
				done <- p.onGrpcError(status.Code(r.err))
			}
		}
	}()
	return func() *localReply {
		close(quit)
		return <-done
	}
}
