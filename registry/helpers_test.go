package registry

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/valkey-io/valkey-go"

	"github.com/coord-extproc/coord-extproc/internal/valkeytest"
	"github.com/coord-extproc/coord-extproc/strategy"
)

func rawClient(t testing.TB, srv *valkeytest.Server) valkey.Client { return srv.Client(t) }

// patientTimeout is the per-call deadline of the test registries that do
// not test deadlines.
const patientTimeout = time.Second

func newRegistry(t testing.TB, srv *valkeytest.Server, mod func(*Options)) *Registry {
	t.Helper()
	opt := Options{
		AllowUpstream: loopbackAllowed.allow, // test pods listen on loopback
		Client:        valkey.ClientOption{InitAddress: []string{srv.Addr()}},
		Strategy:      strategy.NewRoundRobin(0),
		// Most tests check what is decided, not how fast: under -race with
		// 50 goroutines on a busy machine a call can outlast the 50 ms
		// default, which is no wrong decision (the suite failed so). Tests
		// of deadlines set Timeout themselves.
		Timeout: patientTimeout,
	}
	if mod != nil {
		mod(&opt)
	}
	r, err := New(context.Background(), opt)
	if err != nil {
		t.Fatalf("registry.New: %v", err)
	}
	t.Cleanup(r.Close)
	return r
}

func newMember(t testing.TB, c valkey.Client, id string, port int, mod func(*MemberOptions)) *Member {
	t.Helper()
	opt := MemberOptions{Client: c, ID: id, Address: fmt.Sprintf("http://127.0.0.1:%d", port)}
	if mod != nil {
		mod(&opt)
	}
	m, err := NewMember(opt)
	if err != nil {
		t.Fatalf("NewMember(%s): %v", id, err)
	}
	return m
}

func do(t testing.TB, c valkey.Client, args ...string) valkey.ValkeyResult {
	t.Helper()
	return valkeytest.Do(t, c, args...)
}

func smembers(t testing.TB, c valkey.Client, key string) []string {
	t.Helper()
	s, err := do(t, c, "SMEMBERS", key).AsStrSlice()
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(s)
	return s
}

// nodeMember writes a member exactly as @platformatic/coordinator does.
func nodeMember(t testing.TB, c valkey.Client, prefix, id string, port, load int) {
	t.Helper()
	do(t, c, "SADD", prefix+":members", id)
	do(t, c, "HSET", prefix+":member:"+id, "address", fmt.Sprintf("http://127.0.0.1:%d", port), "load", fmt.Sprint(load))
	do(t, c, "EXPIRE", prefix+":member:"+id, "30")
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", within, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func route(t testing.TB, r *Registry, dest string, opt RouteOptions) (Decision, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return r.Route(ctx, dest, opt)
}

// clearRegistry deletes every registry key but the recovery key (whose loss
// would be a wipe, SPEC §3) and waits until r has seen the invalidations,
// as any request arriving a few hundred microseconds later would.
func clearRegistry(t testing.TB, r *Registry, c valkey.Client) {
	t.Helper()
	keys, err := do(t, c, "KEYS", "coordinator:*").AsStrSlice()
	if err != nil {
		t.Fatal(err)
	}
	keys = slices.DeleteFunc(keys, func(k string) bool {
		return k == "coordinator:recovery" || strings.HasPrefix(k, "coordinator:probe:")
	})
	if len(keys) == 0 {
		return
	}
	seq := r.inv.seq.Load()
	do(t, c, append([]string{"DEL"}, keys...)...)
	eventually(t, time.Second, "invalidations of the cleared keys", func() bool { return r.inv.seq.Load() != seq })
}

// waitHoldEnd routes to dest until the recovery hold releases it (a 404:
// its set is gone and nobody holds it) and returns how long after wiped
// that was; anything but "recovering" meanwhile, or a hold past bound,
// fails the test.
func waitHoldEnd(t *testing.T, r *Registry, dest string, wiped time.Time, bound time.Duration) time.Duration {
	t.Helper()
	for {
		_, err := route(t, r, dest, RouteOptions{})
		if errors.Is(err, ErrNotFound) {
			return time.Since(wiped)
		}
		if !errors.Is(err, ErrRecovering) {
			t.Fatalf("during the hold: %v", err)
		}
		if time.Since(wiped) > bound {
			t.Fatalf("hold still in force %s after the wipe, bound %s", time.Since(wiped).Round(time.Millisecond), bound)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
