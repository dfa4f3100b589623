package extproc

import (
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	"google.golang.org/protobuf/proto"
)

// The mode overrides create and delete answers carry to get the
// upstream's response headers (and, for an id read from the response
// body, the body buffered): without the response the binding is never
// written. Shared by every answer (read-only once built).
var (
	overrideHeadersOnly = &filterv3.ProcessingMode{
		RequestHeaderMode:   filterv3.ProcessingMode_SEND,
		ResponseHeaderMode:  filterv3.ProcessingMode_SEND,
		RequestBodyMode:     filterv3.ProcessingMode_NONE,
		ResponseBodyMode:    filterv3.ProcessingMode_NONE,
		RequestTrailerMode:  filterv3.ProcessingMode_SKIP,
		ResponseTrailerMode: filterv3.ProcessingMode_SKIP,
	}
	overrideWithBody = func() *filterv3.ProcessingMode {
		m := proto.Clone(overrideHeadersOnly).(*filterv3.ProcessingMode)
		m.ResponseBodyMode = filterv3.ProcessingMode_BUFFERED
		return m
	}()
)

// LifecycleModes returns copies of the two overrides create and delete
// answers carry. A configuration with allowed_override_modes must list
// both (envoy.CheckExtProc).
func LifecycleModes() (headersOnly, withBody *filterv3.ProcessingMode) {
	return proto.Clone(overrideHeadersOnly).(*filterv3.ProcessingMode), proto.Clone(overrideWithBody).(*filterv3.ProcessingMode)
}

// When Envoy takes a mode override (Filter::onReceiveMessage, v1.37–1.40):
// only with allow_mode_override, without
// send_body_without_waiting_for_header_response, while headers are being
// processed, when the *filter-level* body modes are not
// FULL_DUPLEX_STREAMED, and when allowed_override_modes (if any) lists
// it. The server sees the effective body modes and that flag in
// protocol_config, not the filter level, so:
//   - either body mode full duplex: no override is sent. A route-level full
//     duplex under a filter-level one that is not would take the override
//     and turn the server's chunk answers into spurious messages (a
//     corrupted body, a 500); a filter-level one ignores it anyway. The
//     response headers come if the configuration sends them, which the
//     wiring check insists on for full-duplex modes.
//   - send_body_without_waiting_for_header_response: the override is
//     ignored, Envoy (1.37+) closes the stream after the headers' answer
//     and the binding would never be written: create and delete are
//     refused (500) rather than done unbound.
type overridePolicy int

const (
	overrideSend overridePolicy = iota
	overrideOmit
	overrideUseless
)

func (x *exchange) overridePolicy() overridePolicy {
	switch {
	case x.bodyEarly:
		return overrideUseless
	case x.req.duplex() || x.resp.duplex():
		return overrideOmit
	}
	return overrideSend
}
