package main

import (
	"errors"
	"fmt"
	"strings"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"

	"github.com/coord-extproc/coord-extproc/envoy"
)

type phase int

const (
	phaseRequestHeaders phase = iota
	phaseRequestBody
	phaseRequestTrailers
	phaseResponseHeaders
	phaseResponseBody
	phaseResponseTrailers
)

// common returns the answer's CommonResponse when it is of the type the
// phase expects.
func common(resp *extprocv3.ProcessingResponse, ph phase) (*extprocv3.CommonResponse, bool) {
	switch ph {
	case phaseRequestHeaders:
		return resp.GetRequestHeaders().GetResponse(), resp.GetRequestHeaders() != nil
	case phaseResponseHeaders:
		return resp.GetResponseHeaders().GetResponse(), resp.GetResponseHeaders() != nil
	case phaseRequestBody:
		return resp.GetRequestBody().GetResponse(), resp.GetRequestBody() != nil
	case phaseResponseBody:
		return resp.GetResponseBody().GetResponse(), resp.GetResponseBody() != nil
	case phaseRequestTrailers:
		return &extprocv3.CommonResponse{HeaderMutation: resp.GetRequestTrailers().GetHeaderMutation()}, resp.GetRequestTrailers() != nil
	case phaseResponseTrailers:
		return &extprocv3.CommonResponse{HeaderMutation: resp.GetResponseTrailers().GetHeaderMutation()}, resp.GetResponseTrailers() != nil
	}
	return nil, false
}

// handle applies one answer to headers or trailers (h): an immediate
// response, the expected type (metadata, mode_override, header
// mutations), or anything else, which is spurious. A mutation Envoy
// refuses is a local reply with status_on_error (Filter::
// handleErrorResponse).
func (p *processor) handle(resp *extprocv3.ProcessingResponse, ph phase, h *headerMap) *localReply {
	if resp == nil {
		return nil
	}
	if ir := resp.GetImmediateResponse(); ir != nil {
		p.finish()
		return immediateReply(ir)
	}
	c, ok := common(resp, ph)
	if !ok {
		return p.spurious(fmt.Sprintf("%T", resp.GetResponse()))
	}
	if ph == phaseRequestHeaders || ph == phaseResponseHeaders {
		p.overrideMode(resp.GetModeOverride())
	}
	p.receiveMetadata(resp)
	if c.GetHeaderMutation() != nil && h != nil {
		if err := p.g.applyHeaderMutations(c.GetHeaderMutation(), h); err != nil {
			p.finish()
			return &localReply{status: p.g.cfg.statusOnError, details: err.Error()}
		}
	}
	return nil
}

// applyHeaderMutations mirrors MutationUtils::applyHeaderMutations
// (mutation_utils.cc) as released: removals first, then sets. A set's
// value is read from raw_value only (send_header_raw_value, on since
// 1.26), so a value in `value` alone arrives empty; only the deprecated
// `append` flag is honoured (unset: overwrite) — append_action is not
// read by any released ext_proc. Every name and value is validated and
// passed through the filter's mutation rules.
func (g *gateway) applyHeaderMutations(m *extprocv3.HeaderMutation, h *headerMap) error {
	for _, name := range m.GetRemoveHeaders() {
		if !validHeaderName(name) {
			return errors.New("Invalid character in remove_headers mutation.")
		}
		name = strings.ToLower(name)
		switch g.checker.Check(envoy.OpRemove, name) {
		case envoy.CheckOK:
			h.remove(name)
		case envoy.CheckIgnore:
			g.log.Debug("header may not be removed per rules", "header", name)
		case envoy.CheckFail:
			return fmt.Errorf("Invalid attempt to remove %s", name)
		}
	}
	for _, sh := range m.GetSetHeaders() {
		if sh.GetHeader() == nil {
			continue
		}
		name, value := strings.ToLower(sh.GetHeader().GetKey()), string(sh.GetHeader().GetRawValue())
		if !validHeaderName(name) || !validHeaderValue(value) {
			return errors.New("Invalid character in set_headers mutation.")
		}
		_, exists := h.get(name)
		appendMode := sh.GetAppend().GetValue()
		op := envoy.OpSet
		if appendMode && exists {
			op = envoy.OpAppend
		}
		switch g.checker.Check(op, name) {
		case envoy.CheckOK:
			if appendMode {
				h.add(name, value)
			} else {
				h.set(name, value)
			}
		case envoy.CheckIgnore:
			g.log.Debug("header may not be modified per rules", "header", name)
		case envoy.CheckFail:
			return fmt.Errorf("Invalid attempt to modify %s", name)
		}
	}
	return nil
}

// immediateReply mirrors Filter::sendImmediateResponse: a missing or
// sub-200 status becomes 200; its headers go through the filter's own
// mutation rules when the reply is written.
func immediateReply(ir *extprocv3.ImmediateResponse) *localReply {
	code := int(ir.GetStatus().GetCode())
	if code < 200 {
		code = 200
	}
	return &localReply{status: code, body: ir.GetBody(), mutation: ir.GetHeaders(), details: ir.GetDetails()}
}
