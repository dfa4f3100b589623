package extproc

import (
	"strings"
	"testing"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
)

// Issue #25 finding 3: a create or delete answer carries mode_override
// only where Envoy takes it (modeoverride.go). Under a full-duplex body
// mode (which protocol_config reports, route-level or not) none is sent:
// Envoy would apply it for a route-level full duplex and the chunk answers
// would turn spurious. With send_body_without_waiting_for_header_response
// Envoy ignores it and the binding could never be written: the request
// is refused, not done unbound.
func TestModeOverrideOnlyWhereEnvoyTakesIt(t *testing.T) {
	e := newEnv(t)
	e.pod(t, "live", 7001)
	fd, none := filterv3.ProcessingMode_FULL_DUPLEX_STREAMED, filterv3.ProcessingMode_NONE
	for _, tc := range []struct {
		name         string
		pc           *extprocv3.ProtocolConfiguration
		wantOverride bool
		wantStatus   int // immediate response; 0: routed
	}{
		{"headers only", &extprocv3.ProtocolConfiguration{}, true, 0},
		{"no protocol_config (Envoy before 1.34)", nil, true, 0},
		{"full-duplex request body", &extprocv3.ProtocolConfiguration{RequestBodyMode: fd, ResponseBodyMode: none}, false, 0},
		{"full-duplex response body", &extprocv3.ProtocolConfiguration{ResponseBodyMode: fd}, false, 0},
		{"body sent without waiting", &extprocv3.ProtocolConfiguration{RequestBodyMode: filterv3.ProcessingMode_STREAMED, SendBodyWithoutWaitingForHeaderResponse: true}, false, 500},
	} {
		for _, method := range []string{"POST /tenants", "DELETE /tenants/t1"} {
			t.Run(tc.name+"/"+method, func(t *testing.T) {
				e.do(t, "SADD", "coordinator:destination:t1", "live")
				s := e.open(t)
				defer s.close()
				verb, path, _ := strings.Cut(method, " ")
				req := reqHeaders(verb, path)
				req.ProtocolConfig = tc.pc
				resp := s.send(req)
				if status, body, _ := immediateOf(resp); status != tc.wantStatus {
					t.Fatalf("immediate status %d %q, want %d", status, body, tc.wantStatus)
				}
				if got := resp.GetModeOverride() != nil; got != tc.wantOverride {
					t.Fatalf("mode override sent: %v, want %v (%v)", got, tc.wantOverride, resp)
				}
			})
		}
	}
}
