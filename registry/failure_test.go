package registry

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/coord-extproc/coord-extproc/internal/valkeytest"
)

// timedRoute resolves and fails the test if the call took longer than the
// Valkey deadline plus a margin for the race detector.
func timedRoute(t *testing.T, r *Registry, dest string, opt RouteOptions) (Decision, error) {
	t.Helper()
	start := time.Now()
	d, err := r.Route(context.Background(), dest, opt)
	if took := time.Since(start); took > r.opt.Timeout+150*time.Millisecond {
		t.Fatalf("resolution of %s took %s with a %s Valkey deadline", dest, took, r.opt.Timeout)
	}
	return d, err
}

func TestValkeyFailures(t *testing.T) {
	for _, mode := range []string{"paused", "stopped"} {
		t.Run(mode, func(t *testing.T) {
			srv := valkeytest.Start(t)
			c := rawClient(t, srv)
			const cacheTTL, staleMax = 200 * time.Millisecond, 1200 * time.Millisecond
			r := newRegistry(t, srv, func(o *Options) {
				o.Timeout, o.CacheTTL, o.StaleMax = 50*time.Millisecond, cacheTTL, staleMax
			})
			nodeMember(t, c, "coordinator", "m", 7001, 0)
			do(t, c, "SADD", "coordinator:destination:cached", "m")
			do(t, c, "HSET", "coordinator:lock:tx", "podId", "m", "destinationId", "cached")
			opt := RouteOptions{ClaimOnMiss: true, ReassignOrphans: true}
			eventually(t, time.Second, "warm cache", func() bool {
				h := r.Stats().CacheHits.Load()
				_, err := route(t, r, "cached", opt)
				return err == nil && r.Stats().CacheHits.Load() == h+1
			})
			if _, err := r.RouteLock(context.Background(), "tx"); err != nil {
				t.Fatal(err)
			}

			if mode == "paused" {
				srv.Pause()
			} else {
				srv.Stop()
			}
			time.Sleep(cacheTTL) // let every cache expire: each answer needs Valkey now
			d, err := timedRoute(t, r, "cached", opt)
			if err != nil || d.Member.ID != "m" || d.Result != ResultStale {
				t.Fatalf("cached destination during outage: %+v, %v; want stale answer", d, err)
			}
			if d, err := r.RouteLock(context.Background(), "tx"); err != nil || d.Result != ResultStale {
				t.Fatalf("cached lock during outage: %+v, %v; want stale answer", d, err)
			}
			if _, err := timedRoute(t, r, "uncached", opt); !errors.Is(err, ErrRegistryUnavailable) {
				t.Fatalf("uncached destination during outage: %v, want ErrRegistryUnavailable", err)
			}
			time.Sleep(staleMax) // the last good data is now too old
			if _, err := timedRoute(t, r, "cached", opt); !errors.Is(err, ErrRegistryUnavailable) {
				t.Fatalf("after stale_max: %v, want ErrRegistryUnavailable", err)
			}
			if r.Stats().StaleAnswers.Load() < 2 || r.Stats().ValkeyErrors.Load() == 0 {
				t.Fatalf("stats: stale=%d errors=%d", r.Stats().StaleAnswers.Load(), r.Stats().ValkeyErrors.Load())
			}

			if mode == "paused" {
				srv.Resume()
			} else {
				srv.Restart()
				c = rawClient(t, srv)
				nodeMember(t, c, "coordinator", "m", 7001, 0)
				do(t, c, "SADD", "coordinator:destination:cached", "m")
			}
			eventually(t, 5*time.Second, "resolution works again without restarting the registry", func() bool {
				d, err := route(t, r, "cached", opt)
				return err == nil && d.Result == ResultHit
			})
			// A Valkey error never made the member dead: nothing was
			// reassigned or removed.
			if got := smembers(t, c, "coordinator:destination:cached"); len(got) != 1 || got[0] != "m" {
				t.Fatalf("set after outage = %v", got)
			}
		})
	}
}

func TestBadData(t *testing.T) {
	srv := valkeytest.Start(t)
	c := rawClient(t, srv)
	r := newRegistry(t, srv, nil)
	do(t, c, "SADD", "coordinator:members", "good", "empty", "junk", "scheme", "port", "wrongtype", "badload")
	nodeMember(t, c, "coordinator", "good", 7001, 0)
	do(t, c, "HSET", "coordinator:member:empty", "address", "", "load", "1")
	do(t, c, "HSET", "coordinator:member:junk", "address", "not an address", "load", "1")
	do(t, c, "HSET", "coordinator:member:scheme", "address", "ftp://127.0.0.1:21")
	do(t, c, "HSET", "coordinator:member:port", "address", "127.0.0.1:99999")
	do(t, c, "HSET", "coordinator:member:badload", "address", "[::1]:7009", "load", "lots")
	do(t, c, "SET", "coordinator:member:wrongtype", "x")
	do(t, c, "SET", "coordinator:destination:notaset", "x")
	do(t, c, "SET", "coordinator:lock:notahash", "x")
	do(t, c, "HSET", "coordinator:lock:nopod", "destinationId", "d")

	tests := []struct {
		name    string
		members []string
		dest    string
		want    string // address, or "" when an error is expected
		wantErr error
	}{
		{"empty address counts as dead", []string{"empty"}, "", "", ErrNotFound},
		{"junk address is skipped for a good member", []string{"junk", "good"}, "", "127.0.0.1:7001", nil},
		{"only junk addresses: no capacity", []string{"junk", "scheme", "port"}, "", "", ErrNoCapacity},
		{"non-numeric load is 0, IPv6 kept bracketed", []string{"badload"}, "", "[::1]:7009", nil},
		{"member record of the wrong type is skipped", []string{"wrongtype", "good"}, "", "127.0.0.1:7001", nil},
		{"destination of the wrong type", nil, "notaset", "", ErrMalformedRecord},
		{"id with spaces", nil, "a b", "", ErrInvalidID},
		{"10 kB id", nil, strings.Repeat("x", 10<<10), "", ErrInvalidID},
		{"control byte", nil, "a\nb", "", ErrInvalidID},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dest := tt.dest
			if dest == "" {
				dest = "d" + string(rune('a'+i))
				do(t, c, append([]string{"SADD", "coordinator:destination:" + dest}, tt.members...)...)
			}
			for try := 0; try < 3; try++ { // cold, then cached
				d, err := route(t, r, dest, RouteOptions{})
				if !errors.Is(err, tt.wantErr) || d.Member.Address != tt.want {
					t.Fatalf("try %d: got %+v, %v; want %q, %v", try, d, err, tt.want, tt.wantErr)
				}
				if tt.want != "" && d.Member.Load != 0 {
					t.Fatalf("load = %d, want 0", d.Member.Load)
				}
			}
		})
	}
	for lock, want := range map[string]error{"notahash": ErrMalformedRecord, "nopod": ErrLockOwnerGone, "bad lock": ErrInvalidID} {
		if _, err := r.RouteLock(context.Background(), lock); !errors.Is(err, want) {
			t.Fatalf("lock %q: %v, want %v", lock, err, want)
		}
	}
	// Claims skip unroutable members and never pick the malformed one.
	for i := 0; i < 20; i++ {
		d, err := route(t, r, "claim-"+string(rune('a'+i)), RouteOptions{ClaimOnMiss: true})
		if err != nil || (d.Member.ID != "good" && d.Member.ID != "badload") {
			t.Fatalf("claim %d: %+v, %v", i, d, err)
		}
	}
}
