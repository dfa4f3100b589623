package integration

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coord-extproc/coord-extproc/internal/valkeytest"
)

// SPEC §3, first contact: a coordinator started against a registry that
// Node pods wrote (no epoch marker) answers 404, claims, reassigns and
// deletes at once, over both APIs, from its first request after SERVING.
func TestFirstContactEndToEnd(t *testing.T) {
	for _, cfg := range []string{"envoy.yaml", "envoy-ext-authz.yaml"} {
		for _, gw := range []string{"standin", "envoy"} {
			t.Run(cfg+"/"+gw, func(t *testing.T) {
				if gw == "envoy" && os.Getenv("ENVOY_BIN") == "" {
					t.Skip("ENVOY_BIN is not set: this case's real-Envoy run is skipped (the stand-in run covers it)")
				}
				t.Parallel()
				upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					w.Header().Set("X-Served-By", "pod-a")
					if r.Method == http.MethodDelete {
						w.WriteHeader(http.StatusNoContent)
						return
					}
					fmt.Fprint(w, `{"ok":true}`)
				}))
				t.Cleanup(upstream.Close)
				s := &stack{t: t, valkey: valkeytest.Start(t), pods: map[string]*pod{}, client: &http.Client{Timeout: 5 * time.Second}}
				s.url, s.raw = s.valkey.URL(), s.valkey.Client(t)
				// Exactly the commands of @platformatic/coordinator's Member.
				node := func(args ...string) { valkeytest.Do(t, s.raw, args...) }
				node("SADD", "coordinator:members", "pod-a")
				node("HSET", "coordinator:member:pod-a", "address", upstream.URL, "load", "0")
				node("EXPIRE", "coordinator:member:pod-a", "30")
				node("SADD", "coordinator:destination:orphan", "pod-gone")

				o := stackOptions{config: cfg, gateway: gw, strategy: "round-robin", podTTL: 30 * time.Second}
				c := s.startCoord(o, 0)
				s.gws = append(s.gws, s.startGateway(o, c, 0))
				waitFor(t, 5*time.Second, "coord-extproc SERVING", func() bool { return s.status("http://"+c.metrics+"/healthz") == 200 })
				serving := time.Now()

				checks := []struct {
					method, path string
					status       int
					err, by      string
				}{
					{"GET", "/tenants/unknown/keys/k", 404, "Destination not found", ""},
					{"GET", "/sessions/new/keys/k", 200, "", "pod-a"},   // claim_on_miss
					{"GET", "/tenants/orphan/keys/k", 200, "", "pod-a"}, // reassign_orphans
					{"DELETE", "/tenants/unknown", 404, "Destination not found", ""},
					{"GET", "/transactions/tx-unknown/keys/k", 404, "Lock not found", ""},
				}
				for i, ck := range checks {
					a := s.do(0, ck.method, ck.path, "")
					if a.status != ck.status || a.str("error") != ck.err || a.servedBy != ck.by {
						t.Errorf("%s %s: %d %q served by %q, want %d %q by %q", ck.method, ck.path, a.status, a.raw, a.servedBy, ck.status, ck.err, ck.by)
					}
					if i == 0 {
						if since := time.Since(serving); since > 200*time.Millisecond {
							t.Errorf("first answer %s after SERVING, want within 200ms", since)
						}
					}
				}
				if got := s.smembers("coordinator:destination:new"); !slices.Equal(got, []string{"pod-a"}) {
					t.Errorf("claimed session bound to %v", got)
				}
			})
		}
	}
}

// SPEC §3 under a real fault, end to end: Valkey is SIGKILLed and restarted
// empty on the same port while demo pods (Go Members, heartbeat 1 s) serve
// tenants and transactions through the gateway. Nothing is answered 404 or
// served by another pod; answers while pods re-assert are 503 "Registry
// recovering".
func TestValkeyRestartEndToEnd(t *testing.T) {
	const restarts = 4
	eachGateway(t, stackOptions{podTTL: 5 * time.Second, heartbeat: time.Second}, func(t *testing.T, s *stack) {
		owner := map[string]string{}
		for i := 0; i < 12; i++ {
			name := fmt.Sprintf("t%d", i)
			owner["/tenants/"+name+"/keys/k"] = s.mustCreate(0, name)
			s.do(0, "PUT", "/tenants/"+name+"/keys/k", "v")
		}
		for i := 0; i < 4; i++ {
			tenant := fmt.Sprintf("t%d", i)
			begin := s.do(0, "POST", "/tenants/"+tenant+"/transactions", "")
			if begin.status != 201 || begin.str("lockId") == "" {
				t.Fatalf("begin: %d %s", begin.status, begin.raw)
			}
			s.do(0, "PUT", "/transactions/"+begin.str("lockId")+"/keys/k", "v")
			owner["/transactions/"+begin.str("lockId")+"/keys/k"] = begin.servedBy
		}
		paths := make([]string, 0, len(owner))
		for p := range owner {
			paths = append(paths, p)
		}
		slices.Sort(paths)

		var ok, recovering, unavailable atomic.Int64
		var mu sync.Mutex
		var wrong []string
		var stop atomic.Bool
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				for _, p := range paths {
					a := s.do(0, "GET", p, "")
					switch {
					case a.status == 200 && a.servedBy == owner[p]:
						ok.Add(1)
					case a.status == 503 && a.str("error") == "Registry recovering":
						recovering.Add(1)
					case a.status == 503 && a.str("error") == "Registry unavailable":
						unavailable.Add(1)
					default:
						mu.Lock()
						wrong = append(wrong, fmt.Sprintf("%s: %d %s by %q (owner %s)", p, a.status, strings.TrimSpace(a.raw), a.servedBy, owner[p]))
						mu.Unlock()
					}
				}
			}
		}()
		t.Cleanup(func() { stop.Store(true); wg.Wait() })
		for i := 0; i < restarts; i++ {
			s.valkey.Restart()
			var miss string
			deadline := time.Now().Add(4 * time.Second)
			for back := false; !back; {
				back = true
				for _, p := range paths {
					if a := s.do(0, "GET", p, ""); a.status != 200 || a.servedBy != owner[p] {
						miss, back = fmt.Sprintf("%s: %d %s by %q, owner %s", p, a.status, strings.TrimSpace(a.raw), a.servedBy, owner[p]), false
						break
					}
				}
				if !back && time.Now().After(deadline) {
					t.Fatalf("restart %d: not every tenant and transaction served by its owner within 4s; last: %s", i, miss)
				}
			}
		}
		stop.Store(true)
		wg.Wait()
		t.Logf("%d restarts: %d answers from the owner, %d 'Registry recovering', %d 'Registry unavailable', %d wrong",
			restarts, ok.Load(), recovering.Load(), unavailable.Load(), len(wrong))
		if len(wrong) > 0 {
			t.Fatalf("%d wrong answers, first: %v", len(wrong), wrong[:min(len(wrong), 5)])
		}
		for p, want := range owner {
			if tenant, ok := strings.CutPrefix(p, "/tenants/"); ok {
				tenant = strings.TrimSuffix(tenant, "/keys/k")
				if got := s.smembers("coordinator:destination:" + tenant); !slices.Equal(got, []string{want}) {
					t.Errorf("%s bound to %v after the restarts, want [%s]", tenant, got, want)
				}
			}
		}
	})
}
