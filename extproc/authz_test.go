package extproc

import (
	"context"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/codes"

	"github.com/coord-extproc/coord-extproc/route"
)

func (e *env) check(t *testing.T, method, path string, kv ...string) *authv3.CheckResponse {
	t.Helper()
	h := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		h[kv[i]] = kv[i+1]
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := e.authz.Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{Method: method, Path: path, Headers: h}},
	}})
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	return resp
}

// ext_authz gives the same answers as ext_proc where it can.
func TestAuthzParity(t *testing.T) {
	e := newEnv(t)
	e.pod(t, "live", 7001)
	e.do(t, "SADD", "coordinator:destination:bound", "live")
	e.do(t, "SADD", "coordinator:destination:deadonly", "dead")
	e.do(t, "HSET", "coordinator:lock:tx1", "podId", "live", "destinationId", "bound")
	e.do(t, "HSET", "coordinator:lock:txgone", "podId", "dead", "destinationId", "bound")
	tests := []struct {
		name, method, path string
		routed             string
		status             int
		body               string
	}{
		{"hit", "GET", "/tenants/bound/x", "127.0.0.1:7001", 0, ""},
		{"claimed", "GET", "/claim/new", "127.0.0.1:7001", 0, ""},
		{"lock hit", "GET", "/transactions/tx1/x", "127.0.0.1:7001", 0, ""},
		{"create routes without binding", "POST", "/tenants", "127.0.0.1:7001", 0, ""},
		{"delete routes without deleting", "DELETE", "/tenants/bound", "127.0.0.1:7001", 0, ""},
		{"not found", "GET", "/tenants/nope/x", "", 404, `{"error":"Destination not found"}`},
		{"invalid", "GET", "/tenants/a%20b/x", "", 400, `{"error":"Invalid id"}`},
		{"lock not found", "GET", "/transactions/nope/x", "", 404, `{"error":"Lock not found"}`},
		{"lock gone", "GET", "/transactions/txgone/x", "", 410, `{"error":"Lock owner is gone"}`},
		{"no route", "GET", "/elsewhere", "", 404, `{"error":"No route"}`},
		{"dead-pod delete answered here", "DELETE", "/tenants/deadonly", "", 204, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := e.check(t, tt.method, tt.path)
			if tt.routed != "" {
				if resp.GetStatus().GetCode() != int32(codes.OK) {
					t.Fatalf("status %v", resp.GetStatus())
				}
				got := map[string]string{}
				for _, h := range resp.GetOkResponse().GetHeaders() {
					// Envoy reads value and the append flag only: unset overwrites.
					if h.GetAppend().GetValue() || len(h.GetHeader().GetRawValue()) != 0 {
						t.Fatalf("ext_authz header %v: want value (not raw_value), set (append unset)", h)
					}
					got[h.GetHeader().GetKey()] = h.GetHeader().GetValue()
				}
				if got[DefaultEndpointHeader] != tt.routed || got[MemberHeader] != "live" {
					t.Fatalf("headers %v", got)
				}
				// Envoy files the whole struct under the ext_authz filter's
				// name: it holds the key itself, not a namespace.
				if md := resp.GetDynamicMetadata().GetFields(); len(md) != 1 || md[DefaultEndpointHeader].GetStringValue() != tt.routed {
					t.Fatalf("dynamic metadata %v, want {%s: %s}", md, DefaultEndpointHeader, tt.routed)
				}
				return
			}
			d := resp.GetDeniedResponse()
			if resp.GetStatus().GetCode() == int32(codes.OK) || d == nil || int(d.GetStatus().GetCode()) != tt.status || d.GetBody() != tt.body {
				t.Fatalf("denied %v", resp)
			}
		})
	}
	if n := e.counterVec(t, "coord_extproc_authz_lifecycle_unhandled_total"); n != 2 {
		t.Fatalf("lifecycle calls through ext_authz counted %v, want 2", n)
	}
	if members := smembers(t, e, "coordinator:destination:deadonly"); len(members) != 0 {
		t.Fatalf("dead-only binding not removed: %v", members)
	}
	if members := smembers(t, e, "coordinator:destination:bound"); len(members) != 1 {
		t.Fatalf("ext_authz delete must not delete: %v", members)
	}
}

func smembers(t *testing.T, e *env, key string) []string {
	t.Helper()
	s, err := e.do(t, "SMEMBERS", key).AsStrSlice()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (e *env) counterVec(t *testing.T, name string) float64 {
	t.Helper()
	mfs, err := e.prom.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var total float64
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				total += m.GetCounter().GetValue()
			}
		}
	}
	return total
}

// SPEC §5.2: a request carrying its id header twice is 400 in both APIs,
// never routed on one of the values; "." and ".." are never ids.
func TestRepeatedIDHeaderAndPathSteps(t *testing.T) {
	e := newEnv(t)
	e.pod(t, "live", 7001)
	e.do(t, "SADD", "coordinator:destination:t1", "live")
	twice := []*corev3.HeaderValue{
		{Key: ":method", RawValue: []byte("GET")}, {Key: ":path", RawValue: []byte("/x")},
		{Key: "x-destination-id", RawValue: []byte("t1")}, {Key: "x-destination-id", RawValue: []byte("other")},
	}
	s := e.open(t)
	defer s.close()
	resp := s.send(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{Headers: &corev3.HeaderMap{Headers: twice}}}})
	if status, body, _ := immediateOf(resp); status != 400 || body != `{"error":"Invalid id"}` {
		t.Fatalf("ext_proc with the id header twice: %d %s, want 400", status, body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for name, req := range map[string]*authv3.AttributeContext_HttpRequest{
		// Envoy joins repeated headers with "," in the headers map; newer
		// Envoys can send the list (header_map) instead.
		"headers map": {Method: "GET", Path: "/x", Headers: map[string]string{"x-destination-id": "t1,other"}},
		"header_map":  {Method: "GET", Path: "/x", HeaderMap: &corev3.HeaderMap{Headers: twice[2:]}},
	} {
		cr, err := e.authz.Check(ctx, &authv3.CheckRequest{Attributes: &authv3.AttributeContext{Request: &authv3.AttributeContext_Request{Http: req}}})
		if err != nil || cr.GetDeniedResponse().GetStatus().GetCode() != 400 {
			t.Fatalf("ext_authz (%s) with the id header twice: %v %v, want 400", name, cr, err)
		}
	}
	for _, path := range []string{"/tenants/../keys", "/tenants/%2E%2E/keys", "/tenants/./keys"} {
		if status, _, _ := immediateOf(e.headersOnly(t, "GET", path)); status != 400 {
			t.Errorf("%s: %d, want 400", path, status)
		}
	}
}

// In ext_authz's header map Envoy joins a repeated header with ',': such a
// value is a repeated header (400), even under an id_pattern allowing ','.
func TestAuthzJoinedHeaderIsRepeated(t *testing.T) {
	tbl, err := route.Parse([]byte("id_pattern: '^[a-z,]{1,20}$'\nrules:\n  - name: h\n    destination_header: x-destination-id\n    action: route\n"))
	if err != nil {
		t.Fatal(err)
	}
	get := authzHeaders(&authv3.AttributeContext_HttpRequest{Headers: map[string]string{"x-destination-id": "a,b"}})
	if _, err := tbl.Match("GET", "/", get); err == nil {
		t.Fatal(`"a,b" from the header map matched as one id`)
	}
	get = authzHeaders(&authv3.AttributeContext_HttpRequest{Headers: map[string]string{"x-destination-id": "ab"}})
	if m, err := tbl.Match("GET", "/", get); err != nil || m.ID != "ab" {
		t.Fatalf("a single value: %+v %v", m, err)
	}
}
