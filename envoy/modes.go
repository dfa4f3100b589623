package envoy

import (
	"fmt"
	"slices"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/coord-extproc/coord-extproc/extproc"
)

// checkLifecycleModes refuses ext_proc settings under which a create or
// delete can never see the upstream's response, so its binding is never
// written or removed (extproc/modeoverride.go says when Envoy takes the
// server's mode_override): send_body_without_waiting_for_header_response
// (Envoy ignores every override), allowed_override_modes without the
// server's two, and a full-duplex body mode that does not send the
// response headers (the server sends no override under full duplex).
func checkLifecycleModes(f *extprocv3.ExternalProcessor, fail func(string, ...any)) {
	if f.GetSendBodyWithoutWaitingForHeaderResponse() {
		fail("ext_proc: send_body_without_waiting_for_header_response makes Envoy ignore mode_override: create/delete routes could not bind (the server refuses them)")
	}
	if allowed := f.GetAllowedOverrideModes(); len(allowed) > 0 {
		headersOnly, withBody := extproc.LifecycleModes()
		for _, want := range []*extprocv3.ProcessingMode{headersOnly, withBody} {
			// Filter::onReceiveMessage compares these five, not the
			// request header mode.
			if !slices.ContainsFunc(allowed, func(m *extprocv3.ProcessingMode) bool {
				return m.GetRequestBodyMode() == want.GetRequestBodyMode() && m.GetRequestTrailerMode() == want.GetRequestTrailerMode() &&
					m.GetResponseHeaderMode() == want.GetResponseHeaderMode() && m.GetResponseBodyMode() == want.GetResponseBodyMode() &&
					m.GetResponseTrailerMode() == want.GetResponseTrailerMode()
			}) {
				fail("ext_proc: allowed_override_modes lacks the server's override %v: Envoy would drop it and create/delete could not bind", want)
			}
		}
	}
	checkDuplexSendsResponse("ext_proc processing_mode", f.GetProcessingMode(), fail)
}

func checkDuplexSendsResponse(where string, pm *extprocv3.ProcessingMode, fail func(string, ...any)) {
	fd := extprocv3.ProcessingMode_FULL_DUPLEX_STREAMED
	if (pm.GetRequestBodyMode() == fd || pm.GetResponseBodyMode() == fd) && pm.GetResponseHeaderMode() != extprocv3.ProcessingMode_SEND {
		fail("%s: a FULL_DUPLEX_STREAMED body mode without response_header_mode SEND: no mode_override applies there, so create/delete would never see the response", where)
	}
}

// checkPerRouteModes applies the same to ExtProcPerRoute overrides on a
// virtual host or route (filter is the ext_proc filter's name).
func checkPerRouteModes(filter string, vh *routev3.VirtualHost, fail func(string, ...any)) {
	check := func(where string, cfgs map[string]*anypb.Any) {
		a := cfgs[filter]
		if a == nil {
			return
		}
		var pr extprocv3.ExtProcPerRoute
		if err := a.UnmarshalTo(&pr); err != nil {
			fail("%s: typed_per_filter_config[%s]: %v", where, filter, err)
			return
		}
		if pr.GetOverrides().GetProcessingMode() != nil {
			checkDuplexSendsResponse(where+" ExtProcPerRoute", pr.GetOverrides().GetProcessingMode(), fail)
		}
	}
	check(fmt.Sprintf("virtual host %s", vh.GetName()), vh.GetTypedPerFilterConfig())
	for _, rt := range vh.GetRoutes() {
		check(fmt.Sprintf("route %v", rt.GetMatch()), rt.GetTypedPerFilterConfig())
	}
}
