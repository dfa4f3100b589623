package integration

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// eachGateway runs a case through the stand-in and, when ENVOY_BIN is
// set, through a real Envoy started from the same file.
func eachGateway(t *testing.T, o stackOptions, fn func(t *testing.T, s *stack)) {
	for _, gw := range []string{"standin", "envoy"} {
		t.Run(gw, func(t *testing.T) {
			o := o
			o.gateway = gw
			fn(t, newStack(t, o))
		})
	}
}

func (s *stack) mustCreate(gw int, tenant string) string {
	s.t.Helper()
	a := s.do(gw, "POST", "/tenants", fmt.Sprintf(`{"tenantId":%q}`, tenant))
	if a.status != 201 || a.str("tenantId") != tenant || a.servedBy == "" {
		s.t.Fatalf("create %s: %d %s %v", tenant, a.status, a.raw, a.err)
	}
	return a.servedBy
}

// 1. Create a tenant; reads and writes land on its pod; delete unbinds it;
// against every Valkey deployment (SPEC §4).
func TestCreateReadWriteDelete(t *testing.T) {
	for _, tc := range []struct{ cfg, deployment string }{
		{"envoy.yaml", ""}, {"envoy-ext-authz.yaml", ""}, {"envoy.yaml", "sentinel"}, {"envoy.yaml", "cluster"},
	} {
		t.Run(strings.TrimSuffix(tc.cfg+"/"+tc.deployment, "/"), func(t *testing.T) {
			if tc.deployment != "" {
				t.Parallel()
			}
			eachGateway(t, stackOptions{config: tc.cfg, deployment: tc.deployment}, func(t *testing.T, s *stack) {
				owner := s.mustCreate(0, "acme")
				if got := s.smembers("coordinator:destination:acme"); !slices.Equal(got, []string{owner}) {
					t.Fatalf("binding %v, want [%s]", got, owner)
				}
				for i := 0; i < 5; i++ {
					a := s.do(0, "PUT", fmt.Sprintf("/tenants/acme/keys/k%d", i), fmt.Sprint("v", i))
					b := s.do(0, "GET", fmt.Sprintf("/tenants/acme/keys/k%d", i), "")
					if a.status != 200 || b.status != 200 || a.servedBy != owner || b.servedBy != owner || b.str("value") != fmt.Sprint("v", i) {
						t.Fatalf("write/read %d: %d %s / %d %s, owner %s", i, a.status, a.servedBy, b.status, b.raw, owner)
					}
				}
				if a := s.do(0, "DELETE", "/tenants/acme", ""); a.status != 204 || a.servedBy != owner {
					t.Fatalf("delete: %d %s", a.status, a.raw)
				}
				waitFor(t, time.Second, "binding removed", func() bool { return len(s.smembers("coordinator:destination:acme")) == 0 })
				if a := s.do(0, "GET", "/tenants/acme/keys/k1", ""); a.status != 404 || a.str("error") != "Destination not found" {
					t.Fatalf("after delete: %d %s", a.status, a.raw)
				}
			})
		})
	}
}

// 2. Claim on miss spreads new destinations over all pods.
func TestClaimOnMissSpreads(t *testing.T) {
	for _, strat := range []string{"round-robin", "least-loaded"} {
		t.Run(strat, func(t *testing.T) {
			eachGateway(t, stackOptions{strategy: strat}, func(t *testing.T, s *stack) {
				seen := map[string]int{}
				for i := 0; i < 6; i++ {
					a := s.do(0, "PUT", fmt.Sprintf("/sessions/s%d/keys/x", i), "1")
					if a.status != 200 || a.servedBy == "" {
						t.Fatalf("session %d: %d %s %v", i, a.status, a.raw, a.err)
					}
					seen[a.servedBy]++
					if got := s.smembers(fmt.Sprintf("coordinator:destination:s%d", i)); !slices.Equal(got, []string{a.servedBy}) {
						t.Fatalf("s%d bound to %v, served by %s", i, got, a.servedBy)
					}
				}
				if len(seen) != 3 {
					t.Fatalf("6 claims landed on %v, want all 3 pods", seen)
				}
			})
		})
	}
}

// 3. Transactions are served by the lock owner; outside reads do not see
// uncommitted data; commit and rollback; unknown lock is 404.
func TestTransactions(t *testing.T) {
	for _, deployment := range []string{"", "cluster"} {
		t.Run("valkey="+deployment, func(t *testing.T) { transactions(t, deployment) })
	}
}

func transactions(t *testing.T, deployment string) {
	eachGateway(t, stackOptions{deployment: deployment}, func(t *testing.T, s *stack) {
		owner := s.mustCreate(0, "bank")
		s.do(0, "PUT", "/tenants/bank/keys/balance", "100")
		begin := s.do(0, "POST", "/tenants/bank/transactions", "")
		lock := begin.str("lockId")
		if begin.status != 201 || lock == "" || begin.servedBy != owner {
			t.Fatalf("begin: %d %s", begin.status, begin.raw)
		}
		if a := s.do(0, "PUT", "/transactions/"+lock+"/keys/balance", "50"); a.status != 200 || a.servedBy != owner {
			t.Fatalf("tx put: %d %s", a.status, a.raw)
		}
		if a := s.do(0, "GET", "/transactions/"+lock+"/keys/balance", ""); a.str("value") != "50" || a.servedBy != owner {
			t.Fatalf("tx get: %s", a.raw)
		}
		if a := s.do(0, "GET", "/tenants/bank/keys/balance", ""); a.str("value") != "100" {
			t.Fatalf("outside read saw uncommitted data: %s", a.raw)
		}
		if a := s.do(0, "POST", "/transactions/"+lock+"/commit", ""); a.status != 200 || a.servedBy != owner {
			t.Fatalf("commit: %d %s", a.status, a.raw)
		}
		if a := s.do(0, "GET", "/tenants/bank/keys/balance", ""); a.str("value") != "50" {
			t.Fatalf("after commit: %s", a.raw)
		}
		waitFor(t, time.Second, "lock record removed", func() bool {
			return s.do(0, "GET", "/transactions/"+lock+"/keys/balance", "").str("error") == "Lock not found"
		})
		rb := s.do(0, "POST", "/tenants/bank/transactions", "").str("lockId")
		s.do(0, "PUT", "/transactions/"+rb+"/keys/balance", "0")
		if a := s.do(0, "POST", "/transactions/"+rb+"/rollback", ""); a.status != 200 {
			t.Fatalf("rollback: %d %s", a.status, a.raw)
		}
		if a := s.do(0, "GET", "/tenants/bank/keys/balance", ""); a.str("value") != "50" {
			t.Fatalf("after rollback: %s", a.raw)
		}
		if a := s.do(0, "GET", "/transactions/tx-unknown/keys/balance", ""); a.status != 404 || a.str("error") != "Lock not found" {
			t.Fatalf("unknown lock: %d %s", a.status, a.raw)
		}
	})
}

// 4. SIGTERM moves a pod's destinations at once; SIGKILL within the
// member TTL; the killed pod's open lock answers 410.
func TestFailover(t *testing.T) {
	const ttl = time.Second
	eachGateway(t, stackOptions{podTTL: ttl, heartbeat: 200 * time.Millisecond}, func(t *testing.T, s *stack) {
		tenantOf := map[string]string{} // pod -> a tenant it owns
		for i := 0; len(tenantOf) < 3 && i < 30; i++ {
			name := fmt.Sprintf("t%d", i)
			owner := s.mustCreate(0, name)
			s.do(0, "PUT", "/tenants/"+name+"/keys/k", "v")
			if _, ok := tenantOf[owner]; !ok {
				tenantOf[owner] = name
			}
		}
		if len(tenantOf) != 3 {
			t.Fatalf("tenants spread over %v", tenantOf)
		}
		termed, killed := "pod-1", "pod-2"
		lock := s.do(0, "POST", "/tenants/"+tenantOf[killed]+"/transactions", "").str("lockId")

		s.pods[termed].proc.signal(syscall.SIGTERM)
		s.pods[termed].proc.exited(t, 5*time.Second)
		start := time.Now()
		waitFor(t, 500*time.Millisecond, "terminated pod's tenant served by a survivor", func() bool {
			a := s.do(0, "GET", "/tenants/"+tenantOf[termed]+"/keys/k", "")
			return a.servedBy != "" && a.servedBy != termed
		})
		t.Logf("SIGTERM: tenant moved after %s", time.Since(start).Round(time.Millisecond))

		s.pods[killed].proc.kill()
		start = time.Now()
		waitFor(t, ttl+time.Second, "killed pod's tenant served by the survivor", func() bool {
			a := s.do(0, "GET", "/tenants/"+tenantOf[killed]+"/keys/k", "")
			return a.servedBy == "pod-3"
		})
		t.Logf("SIGKILL: tenant moved after %s (member TTL %s)", time.Since(start).Round(time.Millisecond), ttl)
		if a := s.do(0, "GET", "/transactions/"+lock+"/keys/k", ""); a.status != 410 || a.str("error") != "Lock owner is gone" {
			t.Fatalf("lock of the killed pod: %d %s", a.status, a.raw)
		}
	})
}

// 5. A destination held above the pod's cap fans out to a second pod, and
// both serve it.
func TestFanOut(t *testing.T) {
	eachGateway(t, stackOptions{fanoutCap: 2}, func(t *testing.T, s *stack) {
		first := s.mustCreate(0, "hot")
		var stop atomic.Bool
		var wg sync.WaitGroup
		var mu sync.Mutex
		served := map[string]int{}
		for g := 0; g < 6; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for n := 0; n < 100 && !stop.Load(); n++ {
					a := s.do(0, "GET", "/tenants/hot/keys/none?delay=150ms", "")
					mu.Lock()
					served[a.servedBy]++
					mu.Unlock()
				}
			}()
		}
		waitFor(t, 8*time.Second, "a second pod joins and serves the hot destination", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(s.smembers("coordinator:destination:hot")) >= 2 && len(served) >= 2 && served[""] == 0
		})
		stop.Store(true)
		wg.Wait()
		if served[first] == 0 || len(served) < 2 || served[""] != 0 {
			t.Fatalf("served %v (first owner %s)", served, first)
		}
	})
}

// 6. Two replicas route every destination to the same pods; a delete
// through one is a 404 through the other without waiting for any TTL.
func TestTwoReplicas(t *testing.T) {
	for _, deployment := range []string{"", "sentinel", "cluster"} {
		t.Run("valkey="+deployment, func(t *testing.T) {
			if deployment != "" {
				t.Parallel()
			}
			twoReplicas(t, deployment)
		})
	}
}

func twoReplicas(t *testing.T, deployment string) {
	eachGateway(t, stackOptions{replicas: 2, deployment: deployment}, func(t *testing.T, s *stack) {
		for i := 0; i < 10; i++ {
			path := fmt.Sprintf("/sessions/r%d/keys/x", i)
			a, b := s.do(0, "PUT", path, "1"), s.do(1, "GET", path, "")
			if a.servedBy == "" || a.servedBy != b.servedBy || b.str("value") != "1" {
				t.Fatalf("r%d: replica A -> %s, replica B -> %s (%s)", i, a.servedBy, b.servedBy, b.raw)
			}
		}
		owner := s.mustCreate(0, "shared")
		if a := s.do(1, "GET", "/tenants/shared/keys/x", ""); a.servedBy != owner {
			t.Fatalf("replica B routed a new tenant to %q, want %s", a.servedBy, owner)
		}
		if a := s.do(0, "DELETE", "/tenants/shared", ""); a.status != 204 {
			t.Fatalf("delete via A: %d", a.status)
		}
		start := time.Now()
		waitFor(t, 200*time.Millisecond, "replica B answers 404", func() bool {
			return s.do(1, "GET", "/tenants/shared/keys/x", "").status == 404
		})
		t.Logf("replica B saw the delete after %s (cache TTL 5s)", time.Since(start).Round(time.Microsecond))
	})
}

// 7. A client naming an upstream in the endpoint header never reaches it.
func TestClientCannotChooseUpstream(t *testing.T) {
	for _, cfg := range []string{"envoy.yaml", "envoy-ext-authz.yaml"} {
		t.Run(cfg, func(t *testing.T) {
			eachGateway(t, stackOptions{config: cfg}, func(t *testing.T, s *stack) {
				var hits atomic.Int64
				canary := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits.Add(1) }))
				defer canary.Close()
				target := canary.Listener.Addr().String()
				owner := s.mustCreate(0, "victim")
				for _, c := range []struct {
					method, path string
					hdr          []string
				}{
					{"GET", "/tenants/victim/keys/k", []string{"x-gateway-destination-endpoint", target}},
					{"GET", "/tenants/victim/keys/k", []string{"X-Gateway-Destination-Endpoint", target, "x-gateway-destination-endpoint", target}},
					{"POST", "/tenants", []string{"x-gateway-destination-endpoint", target}},
					{"GET", "/tenants/unknown/keys/k", []string{"x-gateway-destination-endpoint", target}},
					{"GET", "/not/routed", []string{"x-gateway-destination-endpoint", target}},
					{"GET", "/transactions/nope/keys/k", []string{"x-gateway-destination-endpoint", target}},
					{"GET", "/tenants/bad%20id/keys/k", []string{"x-gateway-destination-endpoint", target}},
				} {
					a := s.do(0, c.method, c.path, `{"tenantId":"other"}`, c.hdr...)
					if a.err != nil {
						t.Fatalf("%s %s: %v", c.method, c.path, a.err)
					}
					if c.path == "/tenants/victim/keys/k" && a.servedBy != owner {
						t.Fatalf("routed request served by %q, want %s", a.servedBy, owner)
					}
				}
				if n := hits.Load(); n != 0 {
					t.Fatalf("the canary at %s received %d requests", target, n)
				}
			})
		})
	}
}

// 8. Valkey paused, then stopped, mid-traffic: no request hangs past the
// message timeout, answers are 503 or served stale, never a dropped
// connection; after a restart (empty) traffic recovers with no process
// restarted, the pods re-asserting their bindings.
func TestValkeyOutageMidTraffic(t *testing.T) {
	eachGateway(t, stackOptions{heartbeat: 200 * time.Millisecond}, func(t *testing.T, s *stack) {
		owner := s.mustCreate(0, "steady")
		s.do(0, "PUT", "/tenants/steady/keys/k", "v")
		var stop atomic.Bool
		var wg sync.WaitGroup
		var mu sync.Mutex
		statuses := map[int]int{}
		var worst time.Duration
		var failures []string
		for g := 0; g < 4; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for n := 0; !stop.Load() && n < 5000; n++ {
					path := "/tenants/steady/keys/k"
					if n%3 == 0 {
						path = fmt.Sprintf("/sessions/new-%d-%d/keys/k", g, n) // uncached: needs Valkey
					}
					a := s.do(0, "GET", path, "")
					mu.Lock()
					statuses[a.status]++
					worst = max(worst, a.took)
					if a.err != nil || (a.status != 200 && a.status != 404 && a.status != 503) ||
						(path == "/tenants/steady/keys/k" && a.status == 200 && a.servedBy != owner) {
						failures = append(failures, fmt.Sprintf("%s -> %d %q %v", path, a.status, a.raw, a.err))
					}
					mu.Unlock()
					time.Sleep(5 * time.Millisecond)
				}
			}()
		}
		time.Sleep(300 * time.Millisecond)
		s.valkey.Pause()
		time.Sleep(time.Second)
		s.valkey.Resume()
		time.Sleep(300 * time.Millisecond)
		s.valkey.Stop()
		time.Sleep(time.Second)
		s.valkey.Restart()
		s.raw = s.valkey.Client(t)
		waitFor(t, 5*time.Second, "traffic recovers after the restart", func() bool {
			a := s.do(0, "GET", "/tenants/steady/keys/k", "")
			b := s.do(0, "PUT", "/sessions/after-restart/keys/k", "1")
			return a.status == 200 && a.servedBy == owner && b.status == 200
		})
		stop.Store(true)
		wg.Wait()
		t.Logf("statuses %v, slowest answer %s", statuses, worst)
		if len(failures) > 0 {
			t.Fatalf("%d bad answers, first: %s", len(failures), failures[0])
		}
		// message_timeout is 200 ms; allow the gateway and client overhead.
		if worst > 700*time.Millisecond {
			t.Fatalf("slowest answer %s: a request hung", worst)
		}
		if statuses[503] == 0 || statuses[200] == 0 {
			t.Fatalf("statuses %v: expected stale 200s and 503s during the outage", statuses)
		}
	})
}

// Path steps cannot reach another tenant's data on the wrong pod: the
// shipped configs normalise the path before coord-extproc reads the id
// from it, and refuse escaped slashes (SPEC §5.5, issue: path traversal).
func TestPathStepsCannotCrossTenants(t *testing.T) {
	eachGateway(t, stackOptions{}, func(t *testing.T, s *stack) {
		owners := map[string]string{}
		for i := 0; len(owners) < 2 || owners["t1"] == owners["t2"]; i++ {
			if i > 12 {
				t.Fatal("could not place t1 and t2 on different pods")
			}
			name := fmt.Sprintf("t%d", len(owners)+1)
			if len(owners) == 2 {
				s.do(0, "DELETE", "/tenants/t2", "")
				delete(owners, "t2")
				name = "t2"
			}
			owners[name] = s.mustCreate(0, name)
		}
		s.do(0, "PUT", "/tenants/t2/keys/k", "secret")
		for _, tc := range []struct {
			path, by string
			status   int
		}{
			{"/tenants/t1/../t2/keys/k", owners["t2"], 200},
			{"/tenants/t1/%2E%2E/t2/keys/k", owners["t2"], 200},
			{"/tenants/t1/../../admin", "", 404},
			{"/tenants/t1%2F..%2Ft2/keys/k", "", 400},
			{"/tenants/t1//keys/k", owners["t1"], 404}, // merged: t1's own (missing) key
		} {
			a := s.do(0, "GET", tc.path, "")
			if a.status != tc.status || a.servedBy != tc.by {
				t.Errorf("GET %s: %d by %q, want %d by %q (%s)", tc.path, a.status, a.servedBy, tc.status, tc.by, a.raw)
			}
			if a.servedBy == owners["t1"] && strings.Contains(a.raw, "secret") {
				t.Errorf("GET %s: t2's data served by t1's pod", tc.path)
			}
		}
	})
}

// A client creating a tenant under another pod's id never splits it
// (SPEC §5.3): every such create answers 409 and the tenant keeps its one
// owner, through ext_proc and through ext_authz (where the pod binds what
// it creates itself).
func TestCreateCannotSplitATenant(t *testing.T) {
	for _, cfg := range []string{"envoy.yaml", "envoy-ext-authz.yaml"} {
		t.Run(cfg, func(t *testing.T) {
			eachGateway(t, stackOptions{config: cfg}, func(t *testing.T, s *stack) {
				owner := s.mustCreate(0, "victim")
				for i := range 6 { // round-robin offers every pod the create
					if a := s.do(0, "POST", "/tenants", `{"tenantId":"victim"}`); a.status != 409 {
						t.Fatalf("create %d of a held id: %d %s, want 409", i, a.status, a.raw)
					}
				}
				if got := s.smembers("coordinator:destination:victim"); !slices.Equal(got, []string{owner}) {
					t.Fatalf("victim bound to %v, want [%s]", got, owner)
				}
			})
		})
	}
}
