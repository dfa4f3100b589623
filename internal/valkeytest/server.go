package valkeytest

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/coord-extproc/coord-extproc/internal/valkeyserver"
	"github.com/valkey-io/valkey-go"
)

// Server is a valkey-server owned by one test.
type Server struct {
	*valkeyserver.Server
	t testing.TB
}

// Start runs a fresh server with no persistence in a temporary directory
// and stops it when the test ends. It fails the test if no binary exists:
// CI must never skip the registry tests silently.
func Start(t testing.TB) *Server { t.Helper(); return StartWith(t) }

// StartWith is Start with extra server arguments.
func StartWith(t testing.TB, args ...string) *Server {
	t.Helper()
	s, err := valkeyserver.StartWith(t.TempDir(), args)
	if err != nil {
		t.Fatalf("valkeytest: %v", err)
	}
	t.Cleanup(s.Stop)
	return &Server{Server: s, t: t}
}

// Restart stops the server and starts a new, empty one on the same port.
func (s *Server) Restart() {
	s.t.Helper()
	if err := s.Server.Restart(); err != nil {
		s.t.Fatalf("valkeytest: %v", err)
	}
}

// Pause freezes the server with SIGSTOP.
func (s *Server) Pause() {
	s.t.Helper()
	if err := s.Server.Pause(); err != nil {
		s.t.Fatalf("valkeytest: %v", err)
	}
}

// Resume undoes Pause.
func (s *Server) Resume() {
	s.t.Helper()
	if err := s.Server.Resume(); err != nil {
		s.t.Fatalf("valkeytest: %v", err)
	}
}

// Client returns a plain connection (no client-side cache) to the server,
// closed when the test ends: tests use it to play pods, other replicas or
// an operator writing the registry directly.
func (s *Server) Client(t testing.TB) valkey.Client {
	t.Helper()
	c, err := valkey.NewClient(valkey.ClientOption{InitAddress: []string{s.Addr()}, DisableCache: true})
	if err != nil {
		t.Fatalf("valkeytest: connect: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// Do runs a raw command and fails the test on any error but nil.
func Do(t testing.TB, c valkey.Client, args ...string) valkey.ValkeyResult {
	t.Helper()
	res := c.Do(context.Background(), c.B().Arbitrary(args...).Build())
	if err := res.Error(); err != nil && !valkey.IsValkeyNil(err) {
		t.Fatalf("valkeytest: %v: %v", args, err)
	}
	return res
}

// CommandCount is the number of commands the server has run (INFO
// commandstats, scripts' inner commands included, INFO itself excluded).
func CommandCount(t testing.TB, c valkey.Client) int64 {
	t.Helper()
	info, err := Do(t, c, "INFO", "commandstats").ToString()
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, line := range strings.Split(info, "\n") {
		if !strings.HasPrefix(line, "cmdstat_") || strings.HasPrefix(line, "cmdstat_info:") {
			continue
		}
		_, stats, _ := strings.Cut(line, ":")
		calls, _, _ := strings.Cut(strings.TrimPrefix(stats, "calls="), ",")
		n, _ := strconv.ParseInt(calls, 10, 64)
		total += n
	}
	return total
}

// Calls is how many times the server has run one command (lower-case
// name, e.g. "hgetall"), from INFO commandstats.
func Calls(t testing.TB, c valkey.Client, name string) int64 {
	t.Helper()
	info, err := Do(t, c, "INFO", "commandstats").ToString()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\n") {
		if stats, ok := strings.CutPrefix(line, "cmdstat_"+name+":"); ok {
			calls, _, _ := strings.Cut(strings.TrimPrefix(stats, "calls="), ",")
			n, _ := strconv.ParseInt(calls, 10, 64)
			return n
		}
	}
	return 0
}
