package registry

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/coord-extproc/coord-extproc/internal/valkeytest"
)

func TestMemberLifecycle(t *testing.T) {
	srv := valkeytest.Start(t)
	c := rawClient(t, srv)
	ctx := context.Background()
	m := newMember(t, c, "pod-1", 7001, func(o *MemberOptions) { o.TTL = 2 * time.Second; o.HeartbeatInterval = 500 * time.Millisecond })
	key := "coordinator:member:pod-1"

	if err := m.Register(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if pttl, _ := do(t, c, "PTTL", key).AsInt64(); pttl <= 1000 || pttl > 2000 {
		t.Fatalf("PTTL after register = %d, want (1000, 2000]", pttl)
	}
	do(t, c, "PEXPIRE", key, "500")
	if recovered, err := m.Heartbeat(ctx, 9); err != nil || recovered {
		t.Fatalf("heartbeat: recovered=%v err=%v", recovered, err)
	}
	if f, _ := do(t, c, "HGETALL", key).AsStrMap(); f["load"] != "9" || f["address"] != "http://127.0.0.1:7001" {
		t.Fatalf("after heartbeat: %v", f)
	}
	if pttl, _ := do(t, c, "PTTL", key).AsInt64(); pttl <= 1000 {
		t.Fatalf("heartbeat did not refresh the TTL: %d", pttl)
	}

	t.Run("expired record is restored whole by the next heartbeat", func(t *testing.T) {
		if err := m.AddToDestination(ctx, "d1"); err != nil {
			t.Fatal(err)
		}
		do(t, c, "DEL", key)
		do(t, c, "SREM", "coordinator:members", "pod-1")
		do(t, c, "DEL", "coordinator:destination:d1")
		recovered, err := m.Heartbeat(ctx, 4)
		if err != nil || !recovered {
			t.Fatalf("heartbeat after expiry: recovered=%v err=%v", recovered, err)
		}
		f, _ := do(t, c, "HGETALL", key).AsStrMap()
		if f["address"] != "http://127.0.0.1:7001" || f["load"] != "4" {
			t.Fatalf("restored record = %v", f)
		}
		if pttl, _ := do(t, c, "PTTL", key).AsInt64(); pttl <= 0 {
			t.Fatalf("restored record has no TTL (%d)", pttl)
		}
		if got := smembers(t, c, "coordinator:members"); len(got) != 1 || got[0] != "pod-1" {
			t.Fatalf("members = %v", got)
		}
		if got := smembers(t, c, "coordinator:destination:d1"); len(got) != 1 || got[0] != "pod-1" {
			t.Fatalf("binding not re-asserted: %v", got)
		}
	})

	t.Run("lock metadata cannot overwrite podId or destinationId", func(t *testing.T) {
		for _, field := range []string{"podId", "destinationId"} {
			err := m.RegisterLock(ctx, "tx", "d1", map[string]string{field: "evil"}, 0)
			if !errors.Is(err, ErrReservedField) {
				t.Fatalf("metadata %s: err = %v, want ErrReservedField", field, err)
			}
		}
		if n, _ := do(t, c, "EXISTS", "coordinator:lock:tx").AsInt64(); n != 0 {
			t.Fatal("a refused lock was written")
		}
	})

	t.Run("lock lease expires unless refreshed", func(t *testing.T) {
		if err := m.RegisterLock(ctx, "leased", "d1", map[string]string{"k": "v"}, 300*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		if err := m.RegisterLock(ctx, "kept", "d1", nil, 300*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(900 * time.Millisecond)
		for time.Now().Before(deadline) {
			if err := m.RefreshLock(ctx, "kept", 300*time.Millisecond); err != nil {
				t.Fatalf("refresh: %v", err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if n, _ := do(t, c, "EXISTS", "coordinator:lock:leased").AsInt64(); n != 0 {
			t.Fatal("unrefreshed lease did not expire")
		}
		if n, _ := do(t, c, "EXISTS", "coordinator:lock:kept").AsInt64(); n != 1 {
			t.Fatal("refreshed lease expired")
		}
		if err := m.RefreshLock(ctx, "leased", time.Second); !errors.Is(err, ErrLockNotFound) {
			t.Fatalf("refresh of an expired lease: %v, want ErrLockNotFound", err)
		}
		// An expired lease is not resurrected by recovery.
		do(t, c, "DEL", key)
		if _, err := m.Heartbeat(ctx, 0); err != nil {
			t.Fatal(err)
		}
		if n, _ := do(t, c, "EXISTS", "coordinator:lock:leased").AsInt64(); n != 0 {
			t.Fatal("recovery resurrected an expired lease")
		}
		if err := m.UnregisterLock(ctx, "kept"); err != nil {
			t.Fatal(err)
		}
		if n, _ := do(t, c, "EXISTS", "coordinator:lock:kept").AsInt64(); n != 0 {
			t.Fatal("unregistered lock still there")
		}
	})

	t.Run("deregister", func(t *testing.T) {
		if err := m.Deregister(ctx); err != nil {
			t.Fatal(err)
		}
		if n, _ := do(t, c, "EXISTS", key).AsInt64(); n != 0 {
			t.Fatal("record still there")
		}
		if got := smembers(t, c, "coordinator:members"); len(got) != 0 {
			t.Fatalf("members = %v", got)
		}
	})
}

func TestFanOutPicksLeastLoadedOther(t *testing.T) {
	srv := valkeytest.Start(t)
	c := rawClient(t, srv)
	ctx := context.Background()
	self := newMember(t, c, "self", 7000, nil)
	if err := self.Register(ctx, 0); err != nil { // least loaded, but it is itself
		t.Fatal(err)
	}
	nodeMember(t, c, "coordinator", "busy", 7001, 50)
	nodeMember(t, c, "coordinator", "idle", 7002, 2)
	nodeMember(t, c, "coordinator", "serving", 7003, 1) // already in the set
	do(t, c, "SADD", "coordinator:members", "dead")
	if err := self.AddToDestination(ctx, "hot"); err != nil {
		t.Fatal(err)
	}
	do(t, c, "SADD", "coordinator:destination:hot", "serving")

	p, err := self.FanOut(ctx, "hot")
	if err != nil || p.ID != "idle" {
		t.Fatalf("FanOut = %+v, %v; want idle", p, err)
	}
	if got := smembers(t, c, "coordinator:destination:hot"); len(got) != 3 || got[0] != "idle" {
		t.Fatalf("set = %v", got)
	}
	if p, err = self.FanOut(ctx, "hot"); err != nil || p.ID != "busy" {
		t.Fatalf("second FanOut = %+v, %v; want busy", p, err)
	}
	if _, err = self.FanOut(ctx, "hot"); !errors.Is(err, ErrNoCapacity) {
		t.Fatalf("third FanOut: %v, want ErrNoCapacity", err)
	}
}

func TestMemberRunDeregistersOnCancel(t *testing.T) {
	srv := valkeytest.Start(t)
	c := rawClient(t, srv)
	var load int64 = 5
	m := newMember(t, c, "runner", 7000, func(o *MemberOptions) {
		o.TTL, o.HeartbeatInterval = time.Second, 50*time.Millisecond
		o.Load = func() int64 { return load }
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	eventually(t, 2*time.Second, "registered with load 5", func() bool {
		f, _ := do(t, c, "HGETALL", "coordinator:member:runner").AsStrMap()
		return f["load"] == "5"
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if n, _ := do(t, c, "EXISTS", "coordinator:member:runner").AsInt64(); n != 0 {
		t.Fatal("record left after Run returned")
	}
}

func TestNewMemberValidates(t *testing.T) {
	srv := valkeytest.Start(t)
	c := rawClient(t, srv)
	tests := []struct {
		name string
		opt  MemberOptions
	}{
		{"no client", MemberOptions{Address: "127.0.0.1:1"}},
		{"junk address", MemberOptions{Client: c, Address: "not an address"}},
		{"bad id", MemberOptions{Client: c, ID: "a b", Address: "127.0.0.1:1"}},
		{"heartbeat not under TTL", MemberOptions{Client: c, Address: "127.0.0.1:1", TTL: time.Second, HeartbeatInterval: time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := NewMember(tt.opt); err == nil {
				t.Fatal("NewMember accepted it")
			}
		})
	}
}

// A lock refreshed while the registry is empty (a wipe, before this
// member's heartbeat re-asserted it) is re-asserted, not forgotten: the
// end-to-end restart test lost a transaction so, when a request reached
// the pod between the wipe and its next heartbeat.
func TestRefreshLockAfterWipe(t *testing.T) {
	srv := valkeytest.Start(t)
	c := rawClient(t, srv)
	ctx := context.Background()
	m := newMember(t, c, "pod-a", 7001, nil)
	if err := m.Register(ctx, 0); err != nil {
		t.Fatal(err)
	}
	if err := m.RegisterLock(ctx, "tx", "d1", map[string]string{"k": "v"}, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	do(t, c, "FLUSHALL")
	if err := m.RefreshLock(ctx, "tx", 30*time.Second); err != nil {
		t.Fatalf("refresh after the wipe: %v, want the lock re-asserted", err)
	}
	if _, err := m.Heartbeat(ctx, 0); err != nil { // the recovery that follows
		t.Fatal(err)
	}
	got, err := do(t, c, "HGETALL", "coordinator:lock:tx").AsStrMap()
	if err != nil || got["podId"] != "pod-a" || got["destinationId"] != "d1" || got["k"] != "v" {
		t.Fatalf("lock after the wipe: %v %v", got, err)
	}
	if ms, _ := do(t, c, "PTTL", "coordinator:lock:tx").AsInt64(); ms <= 0 || ms > 30_000 {
		t.Fatalf("lock lease after re-assertion: %d ms", ms)
	}
}
