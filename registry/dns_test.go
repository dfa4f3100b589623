package registry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coord-extproc/coord-extproc/internal/logbuf"
	"github.com/coord-extproc/coord-extproc/internal/valkeytest"
)

// SPEC §4 "Hostnames": with a healthy resolver a member registered by
// hostname is routed on the very first request (it waits for the first
// answer, inside the budget).
func TestHostnameRoutedOnFirstRequest(t *testing.T) {
	for round := range 5 { // the first answer raced the request in one run of two
		t.Run(fmt.Sprint(round), func(t *testing.T) {
			srv := valkeytest.Start(t)
			c := rawClient(t, srv)
			r := newRegistry(t, srv, func(o *Options) {
				o.LookupHost = func(ctx context.Context, host string) ([]string, error) {
					time.Sleep(2 * time.Millisecond) // a healthy resolver, not an instant one
					return []string{"10.0.0.9"}, nil
				}
			})
			do(t, c, "SADD", "coordinator:members", "named")
			do(t, c, "HSET", "coordinator:member:named", "address", "http://pod-1.local:3000", "load", "0")
			do(t, c, "SADD", "coordinator:destination:d", "named")
			d, err := r.Route(WithBudget(context.Background(), 150*time.Millisecond), "d", RouteOptions{})
			if err != nil || d.Member.Address != "10.0.0.9:3000" {
				t.Fatalf("first request: %+v, %v; want 10.0.0.9:3000", d, err)
			}
		})
	}
}

// SPEC §4 "Hostnames": a hostname member behind a DNS server that never
// answers costs one budget, once: the first request waits for the first
// answer within its budget, no later one waits; once the name resolves the
// member is routed, and still no request waits on DNS.
func TestHostnameMemberNeverDelaysRequests(t *testing.T) {
	srv := valkeytest.Start(t)
	c := rawClient(t, srv)
	var answering atomic.Bool
	r := newRegistry(t, srv, func(o *Options) {
		o.LookupHost = func(ctx context.Context, host string) ([]string, error) {
			if !answering.Load() {
				<-ctx.Done()
				return nil, ctx.Err()
			}
			return []string{"10.0.0.9"}, nil
		}
	})
	do(t, c, "SADD", "coordinator:members", "named")
	do(t, c, "HSET", "coordinator:member:named", "address", "http://pod.example.test:8080", "load", "0")
	do(t, c, "SADD", "coordinator:destination:d", "named")

	var worst, first time.Duration
	for i := 0; i < 100; i++ {
		start := time.Now()
		_, err := r.Route(WithBudget(context.Background(), 150*time.Millisecond), "d", RouteOptions{})
		if took := time.Since(start); i == 0 {
			first = took
		} else {
			worst = max(worst, took)
		}
		if !errors.Is(err, ErrNoCapacity) {
			t.Fatalf("request %d while DNS is silent: %v, want ErrNoCapacity (member unroutable)", i, err)
		}
	}
	t.Logf("100 requests with DNS silent: the first took %s (its budget is 150ms), the slowest of the rest %s", first.Round(time.Microsecond), worst.Round(time.Microsecond))
	if first > 150*time.Millisecond+100*time.Millisecond {
		t.Fatalf("the first request took %s, past its 150ms budget", first)
	}
	// A later request that waited would take its whole budget (150 ms);
	// the bound leaves room for a busy machine's stalls.
	if worst > 75*time.Millisecond {
		t.Fatalf("a later request took %s with DNS silent; only the first may wait, within its budget", worst)
	}
	answering.Store(true)
	worst = 0
	deadline := time.Now().Add(dnsTimeout + 3*time.Second)
	for {
		start := time.Now()
		d, err := r.Route(context.Background(), "d", RouteOptions{})
		worst = max(worst, time.Since(start))
		if err == nil {
			if d.Member.Address != "10.0.0.9:8080" {
				t.Fatalf("routed to %+v", d.Member)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still unroutable after DNS started answering: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if worst > 75*time.Millisecond {
		t.Fatalf("a request took %s while the name resolved in the background", worst)
	}
}

// SPEC §4 "Upstream address policy", at Route level: records pointing at
// loopback or a metadata service are unroutable by default, logged once.
func TestAddressPolicyRefusesSelfAndMetadata(t *testing.T) {
	srv := valkeytest.Start(t)
	c := rawClient(t, srv)
	var logs logbuf.Buffer
	r := newRegistry(t, srv, func(o *Options) {
		o.AllowUpstream = nil
		o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		o.LookupHost = func(context.Context, string) ([]string, error) { return []string{"127.0.0.1"}, nil } // localhost
	})
	for id, addr := range map[string]string{"self": "http://localhost:9901", "v6self": "[::1]:80", "imds": "http://169.254.169.254:80"} {
		do(t, c, "SADD", "coordinator:members", id)
		do(t, c, "HSET", "coordinator:member:"+id, "address", addr, "load", "0")
		do(t, c, "SADD", "coordinator:destination:d-"+id, id)
	}
	for _, id := range []string{"self", "v6self", "imds"} {
		eventually(t, 3*time.Second, id+" refused", func() bool {
			_, err := route(t, r, "d-"+id, RouteOptions{})
			return errors.Is(err, ErrNoCapacity) && strings.Contains(logs.String(), "member="+id)
		})
		for i := 0; i < 5; i++ {
			_, _ = route(t, r, "d-"+id, RouteOptions{})
		}
		if n := strings.Count(logs.String(), "member="+id+" "); n != 1 {
			t.Errorf("%s logged %d times, want once:\n%s", id, n, logs.String())
		}
	}
}
