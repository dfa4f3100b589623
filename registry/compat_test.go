package registry

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/coord-extproc/coord-extproc/internal/valkeytest"
)

// Records written with raw commands exactly as @platformatic/coordinator
// writes them resolve; records written by the Go Member have that shape.
func TestNodeCompatibility(t *testing.T) {
	srv := valkeytest.Start(t)
	c := rawClient(t, srv)
	r := newRegistry(t, srv, nil)
	ctx := context.Background()

	nodeMember(t, c, "coordinator", "node-a", 7001, 7)
	do(t, c, "SADD", "coordinator:destination:tenant-1", "node-a")
	do(t, c, "HSET", "coordinator:lock:tx-1", "podId", "node-a", "destinationId", "tenant-1", "startedAt", "1700000000000")

	d, err := r.Route(ctx, "tenant-1", RouteOptions{})
	if err != nil || d.Member.ID != "node-a" || d.Member.Address != "127.0.0.1:7001" || d.Member.Load != 7 || d.Result != ResultHit {
		t.Fatalf("node-written destination: %+v, %v", d, err)
	}
	d, err = r.RouteLock(ctx, "tx-1")
	if err != nil || d.Member.Address != "127.0.0.1:7001" || d.Result != ResultLockHit {
		t.Fatalf("node-written lock: %+v, %v", d, err)
	}

	m := newMember(t, c, "go-b", 7002, func(o *MemberOptions) { o.TTL = 30 * time.Second })
	if err := m.Register(ctx, 3); err != nil {
		t.Fatal(err)
	}
	if err := m.AddToDestination(ctx, "tenant-2"); err != nil {
		t.Fatal(err)
	}
	if err := m.RegisterLock(ctx, "tx-2", "tenant-2", map[string]string{"startedAt": "1"}, 0); err != nil {
		t.Fatal(err)
	}
	fields, _ := do(t, c, "HGETALL", "coordinator:member:go-b").AsStrMap()
	if len(fields) != 2 || fields["address"] != "http://127.0.0.1:7002" || fields["load"] != "3" {
		t.Fatalf("Go member record = %v, want exactly address and load", fields)
	}
	if ttl, _ := do(t, c, "TTL", "coordinator:member:go-b").AsInt64(); ttl < 29 || ttl > 30 {
		t.Fatalf("Go member TTL = %d, want 30", ttl)
	}
	if got := smembers(t, c, "coordinator:members"); len(got) != 2 || got[0] != "go-b" || got[1] != "node-a" {
		t.Fatalf("members set = %v", got)
	}
	if got := smembers(t, c, "coordinator:destination:tenant-2"); len(got) != 1 || got[0] != "go-b" {
		t.Fatalf("destination set = %v", got)
	}
	lock, _ := do(t, c, "HGETALL", "coordinator:lock:tx-2").AsStrMap()
	if len(lock) != 3 || lock["podId"] != "go-b" || lock["destinationId"] != "tenant-2" || lock["startedAt"] != "1" {
		t.Fatalf("Go lock record = %v", lock)
	}
	if ttl, _ := do(t, c, "TTL", "coordinator:lock:tx-2").AsInt64(); ttl != -1 {
		t.Fatalf("lock without lease has TTL %d, want none", ttl)
	}
	// A Node member and a Go member share one prefix: the Go member's
	// peers include the Node one, and resolution sees both.
	peers, err := m.ListPeerLoad(ctx)
	if err != nil || len(peers) != 2 || peers[1].ID != "node-a" || peers[1].Load != 7 {
		t.Fatalf("ListPeerLoad = %+v, %v", peers, err)
	}
	if d, err := r.Route(ctx, "tenant-2", RouteOptions{}); err != nil || d.Member.ID != "go-b" {
		t.Fatalf("Go-written destination: %+v, %v", d, err)
	}
}

func TestPrefixesAreIsolated(t *testing.T) {
	srv := valkeytest.Start(t)
	c := rawClient(t, srv)
	a := newRegistry(t, srv, func(o *Options) { o.Prefix = "alpha" })
	b := newRegistry(t, srv, func(o *Options) { o.Prefix = "beta" })
	nodeMember(t, c, "alpha", "m1", 7001, 0)
	nodeMember(t, c, "beta", "m2", 7002, 0)
	do(t, c, "SADD", "alpha:destination:d", "m1")
	do(t, c, "SADD", "beta:destination:d", "m2")

	if d, err := route(t, a, "d", RouteOptions{}); err != nil || d.Member.ID != "m1" {
		t.Fatalf("alpha: %+v %v", d, err)
	}
	if d, err := route(t, b, "d", RouteOptions{}); err != nil || d.Member.ID != "m2" {
		t.Fatalf("beta: %+v %v", d, err)
	}
	// A write under beta must not invalidate or change alpha's answers.
	do(t, c, "DEL", "beta:destination:d")
	eventually(t, 100*time.Millisecond, "beta sees its delete", func() bool {
		_, err := route(t, b, "d", RouteOptions{})
		return errors.Is(err, ErrNotFound)
	})
	if d, err := route(t, a, "d", RouteOptions{}); err != nil || d.Member.ID != "m1" {
		t.Fatalf("alpha after beta's delete: %+v %v", d, err)
	}
}
