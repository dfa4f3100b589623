package extproc

import (
	"strings"
	"testing"

	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
)

func TestCreate(t *testing.T) {
	e := newEnv(t)
	e.pod(t, "live", 7001)
	tests := []struct {
		name     string
		path     string
		status   int
		body     string // "" for the header variant
		header   string
		wantBind string // destination id that must be bound to live, "" for none
		result   string
	}{
		{"id from JSON body", "/tenants", 201, `{"tenantId":"t-json","memberId":"live"}`, "", "t-json", "spawned"},
		{"id from response header", "/hdr-tenants", 201, "", "t-hdr", "t-hdr", "spawned"},
		{"unexpected status", "/tenants", 500, `{"tenantId":"t-500"}`, "", "", "upstream_error"},
		{"unexpected status, header variant", "/hdr-tenants", 409, "", "t-409", "", "upstream_error"},
		{"body too large", "/tenants", 201, `{"tenantId":"t-big","pad":"` + strings.Repeat("x", 2048) + `"}`, "", "", "upstream_error"},
		{"body not JSON", "/tenants", 201, `tenantId=t-form`, "", "", "upstream_error"},
		{"id field missing", "/tenants", 201, `{"id":"t-wrongfield"}`, "", "", "upstream_error"},
		{"id invalid", "/tenants", 201, `{"tenantId":"has space"}`, "", "", "upstream_error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := e.counter(t, apiExtProc, "create", tt.result)
			s := e.open(t)
			defer s.close()
			resp := s.send(reqHeaders("POST", tt.path))
			if setHeaders(resp)[DefaultEndpointHeader] != "127.0.0.1:7001" {
				t.Fatalf("create not routed to the picked member: %v", resp)
			}
			mo := resp.GetModeOverride()
			wantBody := filterv3.ProcessingMode_NONE
			if tt.header == "" {
				wantBody = filterv3.ProcessingMode_BUFFERED
			}
			if mo.GetResponseHeaderMode() != filterv3.ProcessingMode_SEND || mo.GetResponseBodyMode() != wantBody {
				t.Fatalf("mode override %v", mo)
			}
			var last = s.send(respHeaders(tt.status, "x-new-tenant", tt.header))
			if last.GetResponseHeaders() == nil {
				t.Fatalf("response headers answered with %v", last)
			}
			if tt.header == "" && tt.status == 201 {
				if last = s.send(respBody(tt.body)); last.GetResponseBody() == nil {
					t.Fatalf("response body answered with %v", last)
				}
			}
			// The verdict was the final answer: the stream ends with OK.
			s.expectEnd()
			// The answer that releases the response has arrived: the
			// binding must already be there.
			for _, id := range []string{"t-json", "t-hdr", "t-500", "t-409", "t-big", "t-form", "t-wrongfield"} {
				got := smembers(t, e, "coordinator:destination:"+id)
				if id == tt.wantBind && (len(got) != 1 || got[0] != "live") {
					t.Fatalf("%s bound to %v when the response was released, want [live]", id, got)
				}
				if id != tt.wantBind && len(got) != 0 && !(id == "t-json" || id == "t-hdr") {
					t.Fatalf("%s bound to %v: binding written in a failure case", id, got)
				}
			}
			if got := e.counter(t, apiExtProc, "create", tt.result); got != before+1 {
				t.Fatalf("result %s counted %v -> %v", tt.result, before, got)
			}
		})
	}
	// SPEC §5.3: a create never adds a second owner to an existing
	// destination: 409, nothing written (a client posting a victim's id
	// once split the victim's traffic over two pods).
	t.Run("id another member holds", func(t *testing.T) {
		e.do(t, "SADD", "coordinator:destination:t-taken", "other")
		before := e.counter(t, apiExtProc, "create", "upstream_error")
		s := e.open(t)
		defer s.close()
		s.send(reqHeaders("POST", "/tenants"))
		s.send(respHeaders(201))
		status, body, _ := immediateOf(s.send(respBody(`{"tenantId":"t-taken"}`)))
		if status != 409 || !strings.Contains(body, "Destination already exists") {
			t.Fatalf("create for a held id: %d %s, want 409", status, body)
		}
		if got := smembers(t, e, "coordinator:destination:t-taken"); len(got) != 1 || got[0] != "other" {
			t.Fatalf("t-taken = %v, want [other]", got)
		}
		if got := e.counter(t, apiExtProc, "create", "upstream_error"); got != before+1 {
			t.Fatalf("upstream_error counted %v -> %v", before, got)
		}
	})
	t.Run("no live member", func(t *testing.T) {
		e.do(t, "DEL", "coordinator:member:live")
		eventuallyTrue(t, func() bool {
			status, _, _ := immediateOf(e.headersOnly(t, "POST", "/tenants"))
			return status == 503
		})
	})
}

func TestDelete(t *testing.T) {
	e := newEnv(t)
	e.pod(t, "live", 7001)
	// keep_dead_bindings: a delete no pod can approve is refused (404) and
	// the binding stays (issue 24 #11).
	t.Run("dead binding kept when the rule says so", func(t *testing.T) {
		e.do(t, "SADD", "coordinator:destination:strict-dead", "dead1")
		status, _, _ := immediateOf(e.headersOnly(t, "DELETE", "/strict/strict-dead"))
		if got := smembers(t, e, "coordinator:destination:strict-dead"); status != 404 || len(got) != 1 {
			t.Fatalf("strict delete of a dead binding: %d, set %v; want 404 and the binding kept", status, got)
		}
	})
	e.do(t, "SADD", "coordinator:destination:gone-ok", "live")
	e.do(t, "SADD", "coordinator:destination:kept", "live")
	e.do(t, "SADD", "coordinator:destination:deadpod", "dead1", "dead2")

	t.Run("deregistered on the expected status", func(t *testing.T) {
		s := e.open(t)
		defer s.close()
		resp := s.send(reqHeaders("DELETE", "/tenants/gone-ok"))
		if setHeaders(resp)[DefaultEndpointHeader] != "127.0.0.1:7001" || resp.GetModeOverride().GetResponseBodyMode() != filterv3.ProcessingMode_NONE {
			t.Fatalf("delete not routed with a headers-only override: %v", resp)
		}
		s.send(respHeaders(204))
		if got := smembers(t, e, "coordinator:destination:gone-ok"); len(got) != 0 {
			t.Fatalf("binding still %v", got)
		}
		if e.counter(t, apiExtProc, "delete", "deregistered") != 1 {
			t.Fatal("deregistered not counted")
		}
	})
	t.Run("kept on another status", func(t *testing.T) {
		s := e.open(t)
		defer s.close()
		s.send(reqHeaders("DELETE", "/tenants/kept"))
		s.send(respHeaders(500))
		if got := smembers(t, e, "coordinator:destination:kept"); len(got) != 1 {
			t.Fatalf("binding changed to %v", got)
		}
	})
	t.Run("dead pod: answered without any upstream", func(t *testing.T) {
		status, body, hdrs := immediateOf(e.headersOnly(t, "DELETE", "/tenants/deadpod"))
		if status != 204 || body != "" || hdrs["content-type"] != "" {
			t.Fatalf("immediate %d %q %v, want 204 with no body and no content type", status, body, hdrs)
		}
		if got := smembers(t, e, "coordinator:destination:deadpod"); len(got) != 0 {
			t.Fatalf("binding still %v", got)
		}
		if e.counter(t, apiExtProc, "delete", "deregistered_dead_pod") != 1 {
			t.Fatal("not counted")
		}
	})
	t.Run("unknown", func(t *testing.T) {
		if status, _, _ := immediateOf(e.headersOnly(t, "DELETE", "/tenants/never")); status != 404 {
			t.Fatalf("status %d", status)
		}
	})
}

// A create response body that arrives without response headers (Envoy
// always sends them first) is never bound: no status was checked.
func TestCreateBodyWithoutHeadersIsNotBound(t *testing.T) {
	e := newEnv(t)
	e.pod(t, "live", 7001)
	s := e.open(t)
	defer s.close()
	s.send(reqHeaders("POST", "/tenants"))
	if last := s.send(respBody(`{"tenantId":"t-skipped"}`)); last.GetResponseBody() == nil {
		t.Fatalf("response body answered with %v", last)
	}
	if got := smembers(t, e, "coordinator:destination:t-skipped"); len(got) != 0 {
		t.Fatalf("bound without a status check: %v", got)
	}
}

// What a client can trigger per request is logged once per interval with a
// count, its values cut (issue 24 #7: a WARN per request, ids up to 64 KiB).
func TestClientTriggeredWarningsAggregated(t *testing.T) {
	e := newEnv(t)
	e.pod(t, "live", 7001)
	for range 50 {
		s := e.open(t)
		s.send(reqHeaders("POST", "/tenants"))
		s.send(respHeaders(500))
		s.expectEnd()
		s.close()
	}
	s := e.open(t)
	s.send(reqHeaders("POST", "/tenants"))
	s.send(respHeaders(201))
	s.send(respBody(`{"tenantId":"` + strings.Repeat("x", 900) + ` invalid"}`)) // within the body limit, not a valid id
	s.close()
	logs := e.logs.String()
	if n := strings.Count(logs, "unexpected status"); n != 1 {
		t.Fatalf("50 unexpected statuses logged %d times:\n%s", n, logs)
	}
	if !strings.Contains(logs, "invalid id") || strings.Contains(logs, strings.Repeat("x", 300)) {
		t.Fatalf("the invalid id was not logged cut:\n%s", logs)
	}
}
