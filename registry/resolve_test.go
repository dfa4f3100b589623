package registry

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coord-extproc/coord-extproc/internal/valkeytest"
)

// Every row of the resolution table in SPEC §4.
func TestResolutionTable(t *testing.T) {
	srv := valkeytest.Start(t)
	c := rawClient(t, srv)
	r := newRegistry(t, srv, nil)

	tests := []struct {
		name    string
		setup   func(p string)
		opt     RouteOptions
		want    Result
		wantIn  []string // acceptable member ids
		wantErr error
		after   func(t *testing.T, p string) // checks on Valkey afterwards
	}{
		{
			name:    "empty set, no claim: 404",
			setup:   func(p string) { nodeMember(t, c, "coordinator", p+"live", 7001, 0) },
			wantErr: ErrNotFound,
		},
		{
			name:   "empty set, claim on miss",
			setup:  func(p string) { nodeMember(t, c, "coordinator", p+"live", 7001, 0) },
			opt:    RouteOptions{ClaimOnMiss: true},
			want:   ResultClaimed,
			wantIn: []string{"live"},
			after: func(t *testing.T, p string) {
				if got := smembers(t, c, "coordinator:destination:"+p+"dest"); len(got) != 1 || got[0] != p+"live" {
					t.Fatalf("claimed set = %v", got)
				}
			},
		},
		{
			name: "live members",
			setup: func(p string) {
				nodeMember(t, c, "coordinator", p+"live", 7001, 0)
				do(t, c, "SADD", "coordinator:destination:"+p+"dest", p+"live")
			},
			want:   ResultHit,
			wantIn: []string{"live"},
		},
		{
			name: "some dead: route to live, dead removed in background",
			setup: func(p string) {
				nodeMember(t, c, "coordinator", p+"live", 7001, 0)
				do(t, c, "SADD", "coordinator:destination:"+p+"dest", p+"live", p+"dead1", p+"dead2")
			},
			want:   ResultHit,
			wantIn: []string{"live"},
			after: func(t *testing.T, p string) {
				eventually(t, 2*time.Second, "dead ids removed from the set", func() bool {
					got := smembers(t, c, "coordinator:destination:"+p+"dest")
					return len(got) == 1 && got[0] == p+"live"
				})
			},
		},
		{
			name: "all dead, no reassignment: 404, set untouched",
			setup: func(p string) {
				nodeMember(t, c, "coordinator", p+"live", 7001, 0)
				do(t, c, "SADD", "coordinator:destination:"+p+"dest", p+"dead")
			},
			opt:     RouteOptions{ClaimOnMiss: true},
			wantErr: ErrNotFound,
			after: func(t *testing.T, p string) {
				if got := smembers(t, c, "coordinator:destination:"+p+"dest"); len(got) != 1 || got[0] != p+"dead" {
					t.Fatalf("set = %v, want untouched", got)
				}
			},
		},
		{
			name: "all dead, reassign orphans",
			setup: func(p string) {
				nodeMember(t, c, "coordinator", p+"live", 7001, 0)
				do(t, c, "SADD", "coordinator:destination:"+p+"dest", p+"dead1", p+"dead2")
			},
			opt:    RouteOptions{ReassignOrphans: true},
			want:   ResultOrphanReassigned,
			wantIn: []string{"live"},
			after: func(t *testing.T, p string) {
				if got := smembers(t, c, "coordinator:destination:"+p+"dest"); len(got) != 1 || got[0] != p+"live" {
					t.Fatalf("reassigned set = %v", got)
				}
			},
		},
		{
			name:    "no live members at all, claim: 503",
			opt:     RouteOptions{ClaimOnMiss: true, ReassignOrphans: true},
			wantErr: ErrNoCapacity,
		},
		{
			name:    "all dead and no live member to reassign to: 503",
			setup:   func(p string) { do(t, c, "SADD", "coordinator:destination:"+p+"dest", p+"dead") },
			opt:     RouteOptions{ReassignOrphans: true},
			wantErr: ErrNoCapacity,
		},
		{
			name:    "invalid id",
			wantErr: ErrInvalidID,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clearRegistry(t, r, c)
			p := t.Name()[len("TestResolutionTable/"):] + "-"
			p = p[:min(len(p), 40)]
			p = sanitize(p)
			if tt.setup != nil {
				tt.setup(p)
			}
			dest := p + "dest"
			if tt.wantErr == ErrInvalidID {
				dest = "has space"
			}
			d, err := route(t, r, dest, tt.opt)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
			} else {
				if err != nil || d.Result != tt.want {
					t.Fatalf("got %+v, %v; want result %s", d, err, tt.want)
				}
				ok := false
				for _, id := range tt.wantIn {
					ok = ok || d.Member.ID == p+id
				}
				if !ok {
					t.Fatalf("routed to %q, want one of %v", d.Member.ID, tt.wantIn)
				}
			}
			if tt.after != nil {
				tt.after(t, p)
			}
		})
	}
}

func sanitize(s string) string {
	b := []byte(s)
	for i, ch := range b {
		if ch <= ' ' || ch >= 0x7f || ch == ',' || ch == ':' || ch == '/' {
			b[i] = '_'
		}
	}
	return string(b)
}

func TestLockResolution(t *testing.T) {
	srv := valkeytest.Start(t)
	c := rawClient(t, srv)
	r := newRegistry(t, srv, nil)
	nodeMember(t, c, "coordinator", "alive", 7001, 0)
	do(t, c, "HSET", "coordinator:lock:held", "podId", "alive", "destinationId", "t")
	do(t, c, "HSET", "coordinator:lock:orphan", "podId", "gone", "destinationId", "t")
	do(t, c, "HSET", "coordinator:lock:nopod", "destinationId", "t")

	tests := []struct {
		lock    string
		wantErr error
	}{
		{"held", nil},
		{"missing", ErrLockNotFound},
		{"orphan", ErrLockOwnerGone},
		{"nopod", ErrLockOwnerGone},
		{"bad id", ErrInvalidID},
	}
	for _, tt := range tests {
		t.Run(tt.lock, func(t *testing.T) {
			d, err := r.RouteLock(context.Background(), tt.lock)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if tt.wantErr == nil && (d.Member.Address != "127.0.0.1:7001" || d.Result != ResultLockHit) {
				t.Fatalf("decision %+v", d)
			}
		})
	}
	// A lock created after a cached "not found" is seen at once.
	do(t, c, "HSET", "coordinator:lock:missing", "podId", "alive", "destinationId", "t")
	eventually(t, time.Second, "new lock visible", func() bool {
		_, err := r.RouteLock(context.Background(), "missing")
		return err == nil
	})
}

// A negative answer is confirmed against Valkey (negative.go): a binding
// written by a client whose invalidation has not arrived yet routes once
// the empty read is older than NegativeTTL; within it, the 404 stands.
func TestNegativeAnswerIsConfirmed(t *testing.T) {
	srv := valkeytest.Start(t)
	c := rawClient(t, srv)
	var skew atomic.Int64
	r := newRegistry(t, srv, func(o *Options) {
		o.Now = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	})
	nodeMember(t, c, "coordinator", "m", 7001, 0)
	if _, err := route(t, r, "d", RouteOptions{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("want ErrNotFound first, got %v", err)
	}
	// Simulate the invalidation being late: write, then put the stale
	// empty entry back into the negative cache by hand.
	stale, ok := r.negative.Peek("d")
	if !ok {
		t.Fatal("the empty read is not in the negative cache")
	}
	do(t, c, "SADD", "coordinator:destination:d", "m")
	eventually(t, time.Second, "invalidation processed", func() bool { return stale.invalid.Load() })
	stale.invalid.Store(false)
	r.negative.Add("d", stale)
	if _, err := route(t, r, "d", RouteOptions{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("within NegativeTTL the empty read stands: got %v", err)
	}
	skew.Store(int64(DefaultNegativeTTL + time.Millisecond))
	d, err := route(t, r, "d", RouteOptions{})
	if err != nil || d.Member.ID != "m" {
		t.Fatalf("got %+v %v; the stale empty set must be confirmed before a 404", d, err)
	}
}
