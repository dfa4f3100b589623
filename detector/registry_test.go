package detector

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/valkey-io/valkey-go"

	"github.com/coord-extproc/coord-extproc/internal/valkeytest"
	"github.com/coord-extproc/coord-extproc/registry"
)

// Against a real registry: a Node pod (whose heartbeat never touches the
// mark) killed and back on the same address is routed again within about
// a second of listening, by the re-probe alone.
func TestNodePodBackOnItsAddress(t *testing.T) {
	srv := valkeytest.Start(t)
	c := srv.Client(t)
	// One report is sent, so one MarkDown: the request path's 50 ms per
	// call failed it once under -race beside a busy core (in production
	// every failed request reports again).
	reg, err := registry.New(context.Background(), registry.Options{
		Client:        valkey.ClientOption{InitAddress: []string{srv.Addr()}},
		AllowUpstream: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")},
		Timeout:       time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reg.Close)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	for _, cmd := range [][]string{
		{"SADD", "coordinator:members", "node-1"},
		{"HSET", "coordinator:member:node-1", "address", "http://" + addr, "load", "0"},
		{"EXPIRE", "coordinator:member:node-1", "30"},
		{"SADD", "coordinator:destination:d", "node-1"},
	} {
		valkeytest.Do(t, c, cmd...)
	}
	routed := func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		dec, err := reg.Route(ctx, "d", registry.RouteOptions{})
		return err == nil && dec.Member.ID == "node-1"
	}
	if !routed() {
		t.Fatal("not routed before the failure")
	}
	d := New(Options{Registry: reg, Recheck: 200 * time.Millisecond})
	t.Cleanup(d.Close)

	l.Close() // the pod dies; its record lives on for 30 s
	d.Report(addr)
	waitFor(t, 5*time.Second, "node-1 marked down", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := reg.Route(ctx, "d", registry.RouteOptions{})
		return errors.Is(err, registry.ErrNotFound)
	})
	l2, err := net.Listen("tcp", addr) // back on the same address
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l2.Close() })
	back := time.Now()
	waitFor(t, 3*time.Second, "node-1 routed again", routed)
	t.Logf("routed again %s after it listened (re-probe every 200ms)", time.Since(back).Round(time.Millisecond))
	// The counter follows ClearDown's reply; the route may see the
	// invalidation first.
	waitFor(t, time.Second, "the clear counted", func() bool { return d.Stats().Cleared.Load() == 1 })
	if n := d.Stats().Confirmed.Load(); n != 1 {
		t.Errorf("confirmed %d, want 1", n)
	}
}
