package registry

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/coord-extproc/coord-extproc/internal/valkeytest"
)

func benchRegistry(b *testing.B, pods int) (*Registry, func() int64) {
	srv := valkeytest.Start(b)
	c := rawClient(b, srv)
	r := newRegistry(b, srv, nil)
	ids := make([]string, pods)
	for i := range ids {
		ids[i] = fmt.Sprintf("m%d", i)
		nodeMember(b, c, "coordinator", ids[i], 7000+i, i)
	}
	do(b, c, append([]string{"SADD", "coordinator:destination:d"}, ids...)...)
	do(b, c, "HSET", "coordinator:lock:l", "podId", "m0", "destinationId", "d")
	ctx := context.Background()
	eventually(b, 2*time.Second, "warm caches", func() bool {
		h := r.Stats().CacheHits.Load()
		_, e1 := r.Route(ctx, "d", RouteOptions{})
		_, e2 := r.RouteLock(ctx, "l")
		return e1 == nil && e2 == nil && r.Stats().CacheHits.Load() == h+2
	})
	return r, func() int64 { return commandCount(b, c) }
}

// benchCached resolves a warm destination (or lock) from parallel
// goroutines and reports the Valkey commands it cost.
func benchCached(b *testing.B, pods int, resolve func(*Registry, context.Context) (Decision, error)) {
	r, cmds := benchRegistry(b, pods)
	ctx := context.Background()
	before := cmds()
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := resolve(r, ctx); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(cmds()-before)/float64(b.N), "valkey-cmds/op")
}

func routeD(r *Registry, ctx context.Context) (Decision, error) {
	return r.Route(ctx, "d", RouteOptions{})
}
func lockL(r *Registry, ctx context.Context) (Decision, error) { return r.RouteLock(ctx, "l") }

func BenchmarkResolveCached1Pod(b *testing.B)  { benchCached(b, 1, routeD) }
func BenchmarkResolveCached3Pods(b *testing.B) { benchCached(b, 3, routeD) }
func BenchmarkResolveLockCached(b *testing.B)  { benchCached(b, 1, lockL) }

// BenchmarkClaimOnMiss claims a new destination per op: it reports the
// Valkey commands (including those run inside the script) per claim.
func BenchmarkClaimOnMiss(b *testing.B) {
	r, cmds := benchRegistry(b, 5)
	ctx := context.Background()
	before := cmds()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if d, err := r.Route(ctx, fmt.Sprintf("claim-%d", i), RouteOptions{ClaimOnMiss: true}); err != nil || d.Result != ResultClaimed {
			b.Fatalf("%+v %v", d, err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(cmds()-before)/float64(b.N), "valkey-cmds/op")
}

// BenchmarkOrphanReassign reassigns a destination whose only member is
// dead, per op, and reports Valkey commands per reassignment.
func BenchmarkOrphanReassign(b *testing.B) {
	srv := valkeytest.Start(b)
	c := rawClient(b, srv)
	r := newRegistry(b, srv, nil)
	for i := 0; i < 5; i++ {
		nodeMember(b, c, "coordinator", fmt.Sprintf("m%d", i), 7000+i, 0)
	}
	for i := 0; i < b.N; i++ {
		do(b, c, "SADD", fmt.Sprintf("coordinator:destination:o-%d", i), "dead")
	}
	ctx := context.Background()
	before := commandCount(b, c)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d, err := r.Route(ctx, fmt.Sprintf("o-%d", i), RouteOptions{ReassignOrphans: true})
		if err != nil || d.Result != ResultOrphanReassigned {
			b.Fatalf("%+v %v", d, err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(commandCount(b, c)-before)/float64(b.N), "valkey-cmds/op")
}
