package extproc

import (
	"fmt"
	"testing"
	"time"

	"github.com/coord-extproc/coord-extproc/internal/valkeytest"
	"github.com/coord-extproc/coord-extproc/registry"
)

// Each action and result over a real gRPC stream, with the metrics moving.
func TestActionsAndResults(t *testing.T) {
	e := newEnv(t)
	e.pod(t, "live", 7001)
	e.do(t, "SADD", "coordinator:destination:bound", "live")
	e.do(t, "SADD", "coordinator:destination:orphan", "dead")
	e.do(t, "HSET", "coordinator:lock:tx1", "podId", "live", "destinationId", "bound")
	e.do(t, "HSET", "coordinator:lock:txgone", "podId", "dead", "destinationId", "bound")

	tests := []struct {
		name, method, path string
		action, result     string
		routedTo           string // address, for routed answers
		status             int    // immediate response status
		body               string
		retry              bool
	}{
		{"route hit", "GET", "/tenants/bound/keys/a", "route", "hit", "127.0.0.1:7001", 0, "", false},
		{"claimed", "GET", "/claim/fresh", "route", "claimed", "127.0.0.1:7001", 0, "", false},
		{"orphan reassigned", "GET", "/tenants/orphan/x", "route", "orphan_reassigned", "127.0.0.1:7001", 0, "", false},
		{"not found", "GET", "/tenants/unknown/x", "route", "not_found", "", 404, `{"error":"Destination not found"}`, false},
		{"invalid id", "GET", "/tenants/bad%20id/x", "route", "invalid", "", 400, `{"error":"Invalid id"}`, false},
		{"lock hit", "POST", "/transactions/tx1/commit", "route_lock", "lock_hit", "127.0.0.1:7001", 0, "", false},
		{"lock not found", "GET", "/transactions/nope/x", "route_lock", "lock_not_found", "", 404, `{"error":"Lock not found"}`, false},
		{"lock owner gone", "GET", "/transactions/txgone/x", "route_lock", "lock_gone", "", 410, `{"error":"Lock owner is gone"}`, false},
		{"no route", "GET", "/elsewhere", "none", "not_found", "", 404, `{"error":"No route"}`, false},
		{"pass", "GET", "/public/index.html", "pass", "pass", "", 0, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := e.counter(t, apiExtProc, tt.action, tt.result)
			resp := e.headersOnly(t, tt.method, tt.path)
			status, body, h := immediateOf(resp)
			switch {
			case tt.routedTo != "":
				set := setHeaders(resp)
				if set[DefaultEndpointHeader] != tt.routedTo || set[MemberHeader] != "live" || len(set) != 2 {
					t.Fatalf("set headers %v, want endpoint %s and member live", set, tt.routedTo)
				}
				md := resp.GetDynamicMetadata().GetFields()["envoy.lb"].GetStructValue().GetFields()[DefaultEndpointHeader].GetStringValue()
				if md != tt.routedTo {
					t.Fatalf("dynamic metadata envoy.lb = %q", md)
				}
			case tt.status != 0:
				if status != tt.status || body != tt.body || h["content-type"] != "application/json" || (h["retry-after"] != "") != tt.retry {
					t.Fatalf("immediate %d %s %v, want %d %s", status, body, h, tt.status, tt.body)
				}
			default:
				if !removed(resp, DefaultEndpointHeader) || len(setHeaders(resp)) != 0 {
					t.Fatalf("pass must only strip the endpoint header: %v", resp)
				}
			}
			if got := e.counter(t, apiExtProc, tt.action, tt.result); got != before+1 {
				t.Fatalf("decisions{action=%s,result=%s} went %v -> %v", tt.action, tt.result, before, got)
			}
		})
	}

	t.Run("invalid id makes no Valkey call", func(t *testing.T) {
		before := valkeytest.CommandCount(t, e.c)
		for _, p := range []string{"/tenants/a%20b/x", "/transactions/" + string(make([]byte, 0)) + "%00/x", "/claim/" + longID()} {
			if s, _, _ := immediateOf(e.headersOnly(t, "GET", p)); s != 400 {
				t.Fatalf("%s: status %d, want 400", p, s)
			}
		}
		if n := valkeytest.CommandCount(t, e.c) - before; n != 0 {
			t.Fatalf("invalid ids caused %d Valkey commands", n)
		}
	})
}

func longID() string {
	b := make([]byte, 10<<10)
	for i := range b {
		b[i] = 'a'
	}
	return string(b)
}

func TestNoCapacityAndRegistryUnavailable(t *testing.T) {
	e := newEnv(t)
	status, body, h := immediateOf(e.headersOnly(t, "GET", "/claim/anything"))
	if status != 503 || h["retry-after"] == "" || body != `{"error":"No capacity"}` {
		t.Fatalf("no live member: %d %s %v", status, body, h)
	}
	e.srv.Stop()
	status, body, h = immediateOf(e.headersOnly(t, "GET", "/tenants/x/y"))
	if status != 503 || h["retry-after"] == "" || body != `{"error":"Registry unavailable"}` {
		t.Fatalf("valkey down: %d %s %v", status, body, h)
	}
	if e.counter(t, apiExtProc, "route", "registry_error") != 1 || e.counter(t, apiExtProc, "route", "unavailable") != 1 {
		t.Fatal("503 results not counted")
	}
}

// A client-sent endpoint header never survives: routed requests overwrite
// it (OVERWRITE_IF_EXISTS_OR_ADD replaces every copy, any case: Envoy
// lower-cases names), pass requests remove it, errors never reach a pod.
func TestClientCannotChooseUpstream(t *testing.T) {
	e := newEnv(t)
	e.pod(t, "live", 7001)
	e.do(t, "SADD", "coordinator:destination:bound", "live")
	evil := []string{"x-gateway-destination-endpoint", "127.0.0.1:6666", "x-gateway-destination-endpoint", "10.0.0.1:1"}
	for _, p := range []string{"/tenants/bound/x", "/public/x", "/tenants/unknown/x", "/elsewhere", "/tenants/%20/x"} {
		resp := e.headersOnly(t, "GET", p, evil...)
		set := setHeaders(resp)
		switch {
		case set[DefaultEndpointHeader] != "":
			if set[DefaultEndpointHeader] != "127.0.0.1:7001" {
				t.Fatalf("%s: endpoint set to %q", p, set[DefaultEndpointHeader])
			}
		case resp.GetImmediateResponse() != nil:
			// never forwarded
		case !removed(resp, DefaultEndpointHeader):
			t.Fatalf("%s: client endpoint header neither overwritten nor removed: %v", p, resp)
		}
	}
	// ext_authz: routed answers set (overwrite), pass answers remove.
	for _, p := range []string{"/tenants/bound/x", "/public/x"} {
		resp := e.check(t, "GET", p, evil...)
		ok := resp.GetOkResponse()
		if ok == nil {
			t.Fatalf("%s: not OK: %v", p, resp)
		}
		set := false
		for _, h := range ok.GetHeaders() {
			set = set || (h.GetHeader().GetKey() == DefaultEndpointHeader && h.GetHeader().GetValue() == "127.0.0.1:7001")
		}
		stripped := false
		for _, h := range ok.GetHeadersToRemove() {
			stripped = stripped || h == DefaultEndpointHeader
		}
		if set == stripped { // exactly one of the two, never both (remove runs after set)
			t.Fatalf("%s: set=%v removed=%v", p, set, stripped)
		}
	}
}

// Claims on miss past the replica's rate limit answer 503 with Retry-After
// and write nothing (issue 24 #3: random ids once created 20 000 keys in
// 7 s).
func TestClaimRateLimit(t *testing.T) {
	e := newEnvTB(t, func(o *registry.Options) { o.ClaimRate = 5 })
	e.pod(t, "live", 7001)
	claimed, limited := 0, 0
	start := time.Now()
	for i := range 40 {
		status, body, h := immediateOf(e.headersOnly(t, "GET", fmt.Sprintf("/claim/flood-%d", i)))
		switch {
		case status == 0:
			claimed++
		case status == 503 && h["retry-after"] != "" && body == `{"error":"Claim rate exceeded"}`:
			limited++
		default:
			t.Fatalf("claim %d: %d %s", i, status, body)
		}
	}
	keys, _ := e.do(t, "KEYS", "coordinator:destination:flood-*").AsStrSlice()
	t.Logf("40 claims at a limit of 5/s: %d claimed, %d refused, %d keys", claimed, limited, len(keys))
	bound := 5 + int(5*time.Since(start).Seconds()) + 1 // the burst, and what refilled meanwhile
	if claimed < 5 || claimed > bound || len(keys) != claimed || limited != 40-claimed {
		t.Fatalf("%d claimed, %d refused, %d keys written", claimed, limited, len(keys))
	}
	if n := e.reg.Stats().ClaimsLimited.Load(); n != uint64(limited) {
		t.Fatalf("ClaimsLimited = %d, want %d", n, limited)
	}
}
