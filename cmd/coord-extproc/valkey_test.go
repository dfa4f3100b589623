package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/coord-extproc/coord-extproc/internal/valkeyserver"
	"github.com/coord-extproc/coord-extproc/internal/valkeytest"
)

// running is a serve started by a test.
type running struct {
	grpc, metrics string
	logs          *syncBuffer
	done          chan error
	stop          context.CancelFunc
}

func startServe(t *testing.T, valkeyURL string) *running {
	t.Helper()
	r := &running{grpc: freeAddr(t), metrics: freeAddr(t), logs: &syncBuffer{}, done: make(chan error, 1)}
	ctx, stop := context.WithCancel(context.Background())
	r.stop = stop
	go func() {
		r.done <- Main(ctx, nil, env(map[string]string{
			"COORD_LISTEN": r.grpc, "COORD_METRICS_LISTEN": r.metrics, "COORD_VALKEY_URL": valkeyURL,
			"COORD_LOG_FORMAT": "text", "COORD_SHUTDOWN_GRACE": "1s",
		}), io.Discard, r.logs)
	}()
	t.Cleanup(func() {
		stop()
		select {
		case <-r.done:
		case <-time.After(5 * time.Second):
			t.Error("serve did not stop")
		}
	})
	return r
}

// health returns the gRPC health status ("" when unreachable) and the
// /healthz status code (0 when unreachable).
func (r *running) health(t *testing.T) (string, int) {
	t.Helper()
	conn, err := grpc.NewClient(r.grpc, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	status := ""
	if resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err == nil {
		status = resp.GetStatus().String()
	}
	code := 0
	if resp, err := (&http.Client{Timeout: 200 * time.Millisecond}).Get("http://" + r.metrics + "/healthz"); err == nil {
		code = resp.StatusCode
		resp.Body.Close()
	}
	return status, code
}

// SPEC §6: with Valkey down at start-up both listeners answer at once,
// NOT_SERVING, and the server turns SERVING when Valkey appears.
func TestValkeyDownAtStart(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close() // nothing listens there now
	started := time.Now()
	r := startServe(t, "redis://127.0.0.1:"+strconv.Itoa(port))
	waitFor(t, "listeners answering", func() bool {
		s, code := r.health(t)
		return s != "" && code != 0
	})
	if s, code := r.health(t); s != "NOT_SERVING" || code != http.StatusServiceUnavailable {
		t.Fatalf("health with Valkey down: %s, /healthz %d", s, code)
	}
	if since := time.Since(started); since > 2*time.Second {
		t.Fatalf("health answered %s after start, want within 2s", since)
	}
	if err := Main(context.Background(), []string{"health", "--listen", r.grpc}, env(nil), io.Discard, io.Discard); err == nil {
		t.Fatal("health subcommand succeeded while NOT_SERVING")
	}
	srv, err := valkeyserver.Start(t.TempDir(), port)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	waitFor(t, "SERVING once Valkey is up", func() bool { s, code := r.health(t); return s == "SERVING" && code == 200 })
	if !strings.Contains(r.logs.String(), "cannot reach valkey yet") {
		t.Fatalf("no warning while Valkey was down:\n%s", r.logs.String())
	}
}

// SPEC §6: a URL that valkey-go would misread stops start-up or keeps the
// server NOT_SERVING with a message naming the problem; never SERVING
// while every request fails.
func TestMisconfiguredValkeyURLs(t *testing.T) {
	ss := valkeytest.StartSentinels(t)
	sentinel := "redis://" + ss.Sentinels[0].Addr()
	for _, tc := range []struct {
		name, url, want string
		exits           bool
	}{
		{"misspelt master_set", sentinel + "?masterset=mymaster", `unknown query key "masterset"`, true},
		{"RESP2", sentinel + "?master_set=mymaster&protocol=2", "needs RESP3", true},
		{"Sentinel address without master_set", sentinel, "points at a Sentinel but has no ?master_set", true},
		{"wrong master name", sentinel + "?master_set=nosuch", "No such master", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := startServe(t, tc.url)
			if tc.exits {
				select {
				case err := <-r.done:
					r.done <- err // for the cleanup
					if err == nil || !strings.Contains(err.Error(), tc.want) {
						t.Fatalf("serve ended with %v, want it to mention %q", err, tc.want)
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("serve still running with %s", tc.url)
				}
				return
			}
			waitFor(t, "a warning naming the problem", func() bool { return strings.Contains(r.logs.String(), tc.want) })
			if s, code := r.health(t); s != "NOT_SERVING" || code != http.StatusServiceUnavailable {
				t.Fatalf("health: %s, /healthz %d, want NOT_SERVING", s, code)
			}
		})
	}
	t.Run("correct URL names the mode", func(t *testing.T) {
		r := startServe(t, ss.URL())
		waitFor(t, "SERVING", func() bool { s, _ := r.health(t); return s == "SERVING" })
		if logs := r.logs.String(); !strings.Contains(logs, "mode=sentinel") || !strings.Contains(logs, "master_set=mymaster") {
			t.Fatalf("start-up lines do not name the mode and master set:\n%s", logs)
		}
	})
}
