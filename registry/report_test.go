package registry

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coord-extproc/coord-extproc/internal/logbuf"
	"github.com/coord-extproc/coord-extproc/internal/valkeytest"
)

// SPEC §4: failures are logged, rate-limited, with counts; recovery is
// logged once; no line per request.
func TestValkeyTroubleIsLogged(t *testing.T) {
	srv := valkeytest.Start(t)
	c := rawClient(t, srv)
	var logs logbuf.Buffer
	r := newRegistry(t, srv, func(o *Options) {
		o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
		o.CacheTTL = 300 * time.Millisecond // so requests go to Valkey during the outage
	})
	nodeMember(t, c, "coordinator", "m", 7001, 0)
	do(t, c, "SADD", "coordinator:destination:d", "m")
	do(t, c, "SET", "coordinator:destination:junk", "not a set")
	if _, err := route(t, r, "junk", RouteOptions{}); !errors.Is(err, ErrMalformedRecord) {
		t.Fatalf("wrong-type destination: %v, want ErrMalformedRecord", err)
	}
	// waitLog finds a line containing what, written after byte offset from.
	waitLog := func(what string, within time.Duration, from int) string {
		t.Helper()
		deadline := time.Now().Add(within)
		for time.Now().Before(deadline) {
			for _, l := range strings.Split(logs.String()[from:], "\n") {
				if strings.Contains(l, what) {
					return l
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("no %q log line within %s:\n%s", what, within, logs.String())
		return ""
	}
	if l := waitLog("malformed_records=1", 3*time.Second, 0); !strings.Contains(l, "WRONGTYPE") {
		t.Fatalf("malformed record report without the error: %s", l)
	}
	waitLog("valkey healthy again", 3*time.Second, 0)

	var requests atomic.Int64
	var stop atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		for !stop.Load() {
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			_, _ = r.Route(ctx, "d", RouteOptions{})
			cancel()
			requests.Add(1)
			time.Sleep(time.Millisecond)
		}
	}()
	t.Cleanup(func() { stop.Store(true); <-done })
	mark := len(logs.String())
	srv.Pause()
	paused := time.Now()
	l := waitLog("valkey trouble", 4*time.Second, mark)
	if !strings.Contains(l, "valkey_errors=") || strings.Contains(l, "valkey_errors=0 ") {
		t.Fatalf("outage report without an error count: %s", l)
	}
	t.Logf("outage reported %s after it began: %s", time.Since(paused).Round(time.Millisecond), l)
	time.Sleep(3 * time.Second)
	srv.Resume()
	resumed := time.Now()
	waitLog("valkey healthy again", 4*time.Second, mark)
	t.Logf("recovery reported %s after Valkey resumed", time.Since(resumed).Round(time.Millisecond))
	stop.Store(true)
	<-done
	lines := strings.Count(logs.String()[mark:], "\n")
	t.Logf("%d requests during the test, %d log lines", requests.Load(), lines)
	if lines > 4 {
		t.Fatalf("%d log lines for one 3s outage, want at most 4 (rate-limited):\n%s", lines, logs.String())
	}
}
