package valkeytest

import (
	"testing"
	"time"

	"github.com/valkey-io/valkey-go"

	"github.com/coord-extproc/coord-extproc/internal/valkeyserver"
)

// StartCluster runs a real 3-master + 3-replica Valkey Cluster for one test.
func StartCluster(t testing.TB) *valkeyserver.Cluster {
	t.Helper()
	c, err := valkeyserver.StartCluster(t.TempDir(), 3, 1)
	if err != nil {
		t.Fatalf("valkeytest: cluster: %v", err)
	}
	t.Cleanup(c.Stop)
	return c
}

// StartSentinels runs a real master + replica + 3 Sentinels for one test.
func StartSentinels(t testing.TB) *valkeyserver.Sentinels {
	t.Helper()
	ss, err := valkeyserver.StartSentinels(t.TempDir())
	if err != nil {
		t.Fatalf("valkeytest: sentinels: %v", err)
	}
	t.Cleanup(ss.Stop)
	return ss
}

// ClientFor connects a plain client (no client-side cache) by URL, closed
// when the test ends: standalone, Sentinel or Cluster alike.
func ClientFor(t testing.TB, url string) valkey.Client {
	t.Helper()
	opt, err := valkey.ParseURL(url)
	if err != nil {
		t.Fatalf("valkeytest: %s: %v", url, err)
	}
	opt.DisableCache = true
	if opt.ConnWriteTimeout == 0 {
		opt.ConnWriteTimeout = time.Second // drop a hung master's connection as the registry does
	}
	c, err := valkey.NewClient(opt)
	if err != nil {
		t.Fatalf("valkeytest: connect %s: %v", url, err)
	}
	t.Cleanup(c.Close)
	return c
}
