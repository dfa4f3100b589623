package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// processor is the ext_proc filter for one HTTP request: one gRPC stream,
// one message in flight at a time, as Envoy's Filter and its two
// ProcessorStates (source/extensions/filters/http/ext_proc/ext_proc.cc,
// processor_state.cc).
type processor struct {
	g        *gateway
	mode     *filterv3.ProcessingMode
	stream   extprocv3.ExternalProcessor_ProcessClient
	cancel   context.CancelFunc
	recv     chan recvResult
	complete bool // Filter::processing_complete_
	metadata map[string]*structpb.Struct
}

type recvResult struct {
	resp *extprocv3.ProcessingResponse
	err  error
}

type phase int

const (
	phaseRequestHeaders phase = iota
	phaseRequestBody
	phaseResponseHeaders
	phaseResponseBody
)

func (g *gateway) newProcessor() *processor {
	return &processor{g: g, mode: proto.Clone(g.cfg.mode).(*filterv3.ProcessingMode), metadata: map[string]*structpb.Struct{}}
}

// open starts the stream lazily, like Filter::openStream.
func (p *processor) open(ctx context.Context) error {
	if p.stream != nil {
		return nil
	}
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	if t := p.g.cfg.streamTimeout; t > 0 {
		sctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), t)
	}
	s, err := p.g.proc.Process(sctx)
	if err != nil {
		cancel()
		return err
	}
	p.stream, p.cancel, p.recv = s, cancel, make(chan recvResult, 1)
	go func() {
		for {
			r, err := s.Recv()
			p.recv <- recvResult{r, err}
			if err != nil {
				return
			}
		}
	}()
	return nil
}

// close mirrors Filter::closeStream: half-close and drop the stream.
func (p *processor) close() {
	if p.stream == nil {
		return
	}
	_ = p.stream.CloseSend()
	p.cancel()
	p.stream = nil
}

// headerModeSends: DEFAULT means SEND for headers (ProcessingMode docs).
func headerModeSends(m filterv3.ProcessingMode_HeaderSendMode) bool {
	return m != filterv3.ProcessingMode_SKIP
}

// call sends one message and waits for its answer under message_timeout.
// A nil response with a nil reply means "continue without the processor"
// (failure_mode_allow, stream closed, spurious message).
func (p *processor) call(ctx context.Context, req *extprocv3.ProcessingRequest, ph phase) (*extprocv3.ProcessingResponse, *localReply) {
	if p.complete {
		return nil, nil
	}
	if err := p.open(ctx); err != nil {
		return nil, p.onGrpcError(status.Code(err))
	}
	if err := p.stream.Send(req); err != nil {
		return nil, p.onGrpcError(status.Code(err))
	}
	timer := time.NewTimer(p.g.cfg.messageTimeout)
	defer timer.Stop()
	restarted := false
	for {
		select {
		case <-ctx.Done(): // the downstream went away
			p.complete = true
			p.close()
			return nil, nil
		case <-timer.C:
			return nil, p.onMessageTimeout()
		case r := <-p.recv:
			if r.err != nil {
				if errors.Is(r.err, io.EOF) {
					p.onGrpcClose()
					return nil, nil
				}
				return nil, p.onGrpcError(status.Code(r.err))
			}
			resp := r.resp
			// Filter::onNewTimeout: once per call, within [1ms, max_message_timeout].
			if ot := resp.GetOverrideMessageTimeout(); ot != nil {
				d := ot.AsDuration()
				if !restarted && d >= time.Millisecond && d <= p.g.cfg.maxMessageTimeout {
					timer.Reset(d)
					restarted = true
				}
				continue
			}
			// Filter::onReceiveMessage: mode_override only with
			// allow_mode_override and only while in a headers state.
			if p.g.cfg.allowModeOverride && (ph == phaseRequestHeaders || ph == phaseResponseHeaders) && resp.GetModeOverride() != nil {
				p.mode = proto.Clone(resp.GetModeOverride()).(*filterv3.ProcessingMode)
			}
			return resp, nil
		}
	}
}

// onGrpcError mirrors Filter::onGrpcError.
func (p *processor) onGrpcError(code codes.Code) *localReply {
	p.complete = true
	p.close()
	if p.g.cfg.failureModeAllow {
		return nil
	}
	return &localReply{status: 500, details: fmt.Sprintf("ext_proc_error_gRPC_error_%d", code)}
}

// onGrpcClose mirrors Filter::onGrpcClose: the server is done with us.
func (p *processor) onGrpcClose() {
	p.complete = true
	p.close()
}

// onMessageTimeout mirrors Filter::onMessageTimeout.
func (p *processor) onMessageTimeout() *localReply {
	p.complete = true
	p.close()
	if p.g.cfg.failureModeAllow {
		return nil
	}
	return &localReply{status: 504, details: "ext_proc_error_per-message_timeout_exceeded"}
}

// handle applies one answer: the expected response type, an immediate
// response, or anything else (spurious: ignore the processor from now on,
// Filter::onReceiveMessage's FailedPrecondition branch).
func (p *processor) handle(resp *extprocv3.ProcessingResponse, ph phase, h *headerMap, body *[]byte) *localReply {
	if resp == nil {
		return nil
	}
	if ir := resp.GetImmediateResponse(); ir != nil {
		p.complete = true
		p.close()
		return immediateReply(ir)
	}
	var common *extprocv3.CommonResponse
	var ok bool
	switch ph {
	case phaseRequestHeaders:
		common, ok = resp.GetRequestHeaders().GetResponse(), resp.GetRequestHeaders() != nil
	case phaseResponseHeaders:
		common, ok = resp.GetResponseHeaders().GetResponse(), resp.GetResponseHeaders() != nil
	case phaseRequestBody:
		common, ok = resp.GetRequestBody().GetResponse(), resp.GetRequestBody() != nil
	case phaseResponseBody:
		common, ok = resp.GetResponseBody().GetResponse(), resp.GetResponseBody() != nil
	}
	if !ok {
		p.g.log.Warn("spurious ext_proc response; ignoring the processor for the rest of the request", "got", fmt.Sprintf("%T", resp.GetResponse()))
		p.complete = true
		p.close()
		return nil
	}
	p.receiveMetadata(resp)
	if common.GetHeaderMutation() != nil && h != nil {
		if err := p.g.applyHeaderMutations(common.GetHeaderMutation(), h, p.g.checker); err != nil {
			// Any non-spurious failure is a 500 local reply.
			p.complete = true
			p.close()
			return &localReply{status: 500, details: err.Error()}
		}
	}
	if bm := common.GetBodyMutation(); bm != nil && body != nil {
		switch m := bm.GetMutation().(type) {
		case *extprocv3.BodyMutation_Body:
			*body = m.Body
		case *extprocv3.BodyMutation_ClearBody:
			if m.ClearBody {
				*body = nil
			}
		}
	}
	return nil
}

// receiveMetadata mirrors Filter::setDynamicMetadata: only namespaces
// listed in metadata_options.receiving_namespaces are taken.
func (p *processor) receiveMetadata(resp *extprocv3.ProcessingResponse) {
	for ns, v := range resp.GetDynamicMetadata().GetFields() {
		for _, allowed := range p.g.cfg.receivingNS {
			if ns == allowed && v.GetStructValue() != nil {
				p.metadata[ns] = v.GetStructValue()
			}
		}
	}
}

// applyHeaderMutations mirrors MutationUtils::applyHeaderMutations
// (mutation_utils.cc): removals first, then sets; the value is read from
// raw_value only; an unset append_action falls back to the deprecated
// `append` flag, whose default is false (overwrite).
func (g *gateway) applyHeaderMutations(m *extprocv3.HeaderMutation, h *headerMap, ck *checker) error {
	for _, name := range m.GetRemoveHeaders() {
		if !validHeaderName(name) {
			return errors.New("Invalid character in remove_headers mutation.")
		}
		switch ck.check(name) {
		case checkOK:
			h.remove(strings.ToLower(name))
		case checkIgnore:
			g.log.Debug("header may not be removed per rules", "header", name)
		case checkFail:
			return fmt.Errorf("Invalid attempt to remove %s", strings.ToLower(name))
		}
	}
	for _, sh := range m.GetSetHeaders() {
		if sh.GetHeader() == nil {
			continue
		}
		if sh.GetHeader().GetValue() != "" && len(sh.GetHeader().GetRawValue()) != 0 {
			return errors.New("Only one of value or raw_value in the HeaderValue message should be set.")
		}
		name, value := strings.ToLower(sh.GetHeader().GetKey()), string(sh.GetHeader().GetRawValue())
		if !validHeaderName(name) || !validHeaderValue(value) {
			return errors.New("Invalid character in set_headers mutation.")
		}
		_, exists := h.get(name)
		appendMode, apply := false, true
		switch sh.GetAppendAction() {
		case corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD: // 0: the deprecated flag decides
			appendMode = sh.GetAppend().GetValue()
		case corev3.HeaderValueOption_ADD_IF_ABSENT:
			appendMode, apply = true, !exists
		case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD:
		case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS:
			apply = exists
		default:
			return fmt.Errorf("Invalid append_action value %s", name)
		}
		if !apply {
			continue
		}
		switch ck.check(name) {
		case checkOK:
			if appendMode {
				h.add(name, value)
			} else {
				h.set(name, value)
			}
		case checkIgnore:
			g.log.Debug("header may not be modified per rules", "header", name)
		case checkFail:
			return fmt.Errorf("Invalid attempt to modify %s", name)
		}
	}
	return nil
}

// immediateReply mirrors Filter::sendImmediateResponse: a missing or
// sub-200 status becomes 200; headers go through the permissive checker.
func immediateReply(ir *extprocv3.ImmediateResponse) *localReply {
	code := int(ir.GetStatus().GetCode())
	if code < 200 {
		code = 200
	}
	return &localReply{status: code, body: ir.GetBody(), mutation: ir.GetHeaders(), details: ir.GetDetails()}
}
