package main

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/coord-extproc/coord-extproc/internal/valkeytest"
)

// Issue #24 finding 1: idle streams cost memory and had no deadline. Here
// five streams open and send nothing against a cap of four: one is
// refused at once, the other four end at the first-message deadline (2 s: all five are open long before, even on a busy machine), and
// both are counted.
func TestSilentStreamsAreEndedAndCapped(t *testing.T) {
	srv := valkeytest.Start(t)
	grpcAddr, metricsAddr := freeAddr(t), freeAddr(t)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Main(ctx, nil, env(map[string]string{
			"COORD_LISTEN": grpcAddr, "COORD_METRICS_LISTEN": metricsAddr, "COORD_VALKEY_URL": srv.URL(),
			"COORD_FIRST_MESSAGE_TIMEOUT": "2s", "COORD_MAX_OPEN_STREAMS": "4", "COORD_SHUTDOWN_GRACE": "1s",
		}), io.Discard, io.Discard)
	}()
	t.Cleanup(func() { stop(); <-done })
	conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	waitFor(t, "metrics page", func() bool {
		resp, err := http.Get("http://" + metricsAddr + "/metrics")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})

	proc := extprocv3.NewExternalProcessorClient(conn)
	codesSeen := map[codes.Code]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range 5 {
		s, err := proc.Process(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.Recv()
			mu.Lock()
			codesSeen[status.Code(err)]++
			mu.Unlock()
		}()
	}
	waitDone := make(chan struct{})
	go func() { wg.Wait(); close(waitDone) }()
	select {
	case <-waitDone:
	case <-time.After(10 * time.Second):
		t.Fatal("silent streams still open after 10 s")
	}
	if codesSeen[codes.ResourceExhausted] != 1 || codesSeen[codes.DeadlineExceeded] != 4 {
		t.Fatalf("streams ended with %v, want 1 ResourceExhausted and 4 DeadlineExceeded", codesSeen)
	}
	metrics := get(t, "http://"+metricsAddr+"/metrics")
	for _, want := range []string{
		`coord_extproc_streams_refused_total{reason="first_message_timeout"} 4`,
		`coord_extproc_streams_refused_total{reason="too_many_streams"} 1`,
		"coord_extproc_grpc_streams_open 0",
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
