package integration

import (
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/coord-extproc/coord-extproc/internal/valkeytest"
)

// The member TTL of the pods in these tests: what a dead pod's
// destinations would wait for without failure reports (SPEC §8.1).
const longTTL = 30 * time.Second

// probe is one request of the load: when it was sent, who answered.
type probe struct {
	at       time.Time
	status   int
	servedBy string
}

// load sends a GET for each destination every interval through gateway 0
// until stop, recording every answer.
type load struct {
	mu  sync.Mutex
	log map[string][]probe
	wg  sync.WaitGroup
}

func (s *stack) startLoad(dests []string, interval time.Duration, stop <-chan struct{}) *load {
	l := &load{log: map[string][]probe{}}
	for _, d := range dests {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			t := time.NewTicker(interval)
			defer t.Stop()
			for {
				a := s.do(0, "GET", "/sessions/"+d+"/keys/k", "")
				l.mu.Lock()
				l.log[d] = append(l.log[d], probe{at: time.Now(), status: a.status, servedBy: a.servedBy})
				l.mu.Unlock()
				select {
				case <-stop:
					return
				case <-t.C:
				}
			}
		}()
	}
	return l
}

// rerouted returns, for dest, how long after since the last answer not
// from a live pod came (0 if none), and how many answers failed; ok is
// false if no live pod answered after it.
func (l *load) rerouted(dest, dead string, since time.Time) (after time.Duration, failed int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, p := range l.log[dest] {
		if p.at.Before(since) {
			continue
		}
		live := p.servedBy != "" && p.servedBy != dead
		switch {
		case !live:
			failed++
			after, ok = p.at.Sub(since), false
		default:
			ok = true
		}
	}
	return after, failed, ok
}

// A pod killed with SIGKILL (no deregistration, member TTL 30 s) under
// load through one gateway in front of two replicas: every destination it
// held is served by a live pod again within a second, over several kills,
// and both replicas see it down. Without the failure reports this waits
// out the TTL (the test's mutation check: remove upstream_log from the
// gateway's config and every round fails).
func TestKilledPodMovesInASecond(t *testing.T) {
	eachGateway(t, stackOptions{replicas: 2, sharedGateway: true, podTTL: longTTL, heartbeat: 10 * time.Second}, func(t *testing.T, s *stack) {
		const rounds, perPod = 5, 8
		var moves []time.Duration
		failedTotal := 0
		for round := range rounds {
			victim := s.startPod(fmt.Sprintf("victim-%d", round), stackOptions{podTTL: longTTL, heartbeat: 10 * time.Second})
			var dests []string
			for i := range perPod {
				d := fmt.Sprintf("k%d-%d", round, i)
				valkeytest.Do(t, s.raw, "SADD", "coordinator:destination:"+d, victim.id)
				if a := s.do(0, "PUT", "/sessions/"+d+"/keys/k", "v"); a.servedBy != victim.id {
					t.Fatalf("%s served by %q (%d %s), want %s", d, a.servedBy, a.status, a.raw, victim.id)
				}
				dests = append(dests, d)
			}
			stop := make(chan struct{})
			l := s.startLoad(dests, 20*time.Millisecond, stop)
			time.Sleep(100 * time.Millisecond) // traffic flowing before the kill (a baseline, not a wait for a condition)
			victim.proc.kill()
			killed := time.Now()
			waitFor(t, longTTL/2, "every destination of the killed pod served by a live pod", func() bool {
				for _, d := range dests {
					if _, _, ok := l.rerouted(d, victim.id, killed); !ok {
						return false
					}
				}
				return true
			})
			time.Sleep(200 * time.Millisecond) // a few more answers: none may fail after the move
			close(stop)
			l.wg.Wait()
			var worst time.Duration
			for _, d := range dests {
				after, failed, ok := l.rerouted(d, victim.id, killed)
				if !ok {
					t.Fatalf("round %d: %s failed again after it moved", round, d)
				}
				worst = max(worst, after)
				failedTotal += failed
			}
			moves = append(moves, worst)
			t.Logf("round %d: every destination served by a live pod %s after the kill", round, worst.Round(time.Millisecond))
			for i, c := range s.coords {
				waitFor(t, 3*time.Second, fmt.Sprintf("replica %d sees %s marked down", i+1, victim.id), func() bool {
					return s.metric(c, "coord_extproc_members_marked_down") >= 1
				})
			}
			for _, d := range dests { // both replicas route each destination to one pod
				owners := s.smembers("coordinator:destination:" + d)
				if len(owners) != 1 || owners[0] == victim.id {
					t.Fatalf("round %d: %s is bound to %v", round, d, owners)
				}
			}
			delete(s.pods, victim.id)
		}
		slices.Sort(moves)
		t.Logf("kill to reroute over %d kills: p50 %s, max %s; %d requests failed in all (%d a kill)",
			rounds, moves[rounds/2].Round(time.Millisecond), moves[rounds-1].Round(time.Millisecond), failedTotal, failedTotal/rounds)
		if moves[rounds-1] > time.Second {
			t.Fatalf("slowest reroute %s, want at most 1s (the member TTL is %s)", moves[rounds-1], longTTL)
		}
	})
}

// What must never move a destination: a pod stopped (SIGSTOP) for 3 s, a
// pod answering 500 to everything, and a flood of forged reports naming a
// live pod's address.
func TestNoFalseDowns(t *testing.T) {
	s := newStack(t, stackOptions{replicas: 2, sharedGateway: true, podTTL: longTTL, heartbeat: 10 * time.Second})
	bind := func(prefix, owner string, n int) []string {
		var dests []string
		for i := range n {
			d := fmt.Sprintf("%s%d", prefix, i)
			valkeytest.Do(t, s.raw, "SADD", "coordinator:destination:"+d, owner)
			dests = append(dests, d)
		}
		return dests
	}
	unmoved := func(t *testing.T, dests []string, owner string) {
		t.Helper()
		for _, d := range dests {
			if got := s.smembers("coordinator:destination:" + d); len(got) != 1 || got[0] != owner {
				t.Errorf("%s moved: %v, want [%s]", d, got, owner)
			}
		}
		for _, c := range s.coords {
			if n := s.metric(c, "coord_extproc_failure_confirmed_total"); n != 0 {
				t.Errorf("replica %s confirmed %v failures", c.grpc, n)
			}
		}
	}

	t.Run("stopped for 3s", func(t *testing.T) {
		p := s.pods["pod-1"]
		dests := bind("stopped", p.id, 4)
		stop := make(chan struct{})
		s.client.Timeout = 10 * time.Second
		l := s.startLoad(dests, 50*time.Millisecond, stop)
		p.proc.signal(syscall.SIGSTOP)
		time.Sleep(3 * time.Second) // the fault itself lasts 3 s
		p.proc.signal(syscall.SIGCONT)
		waitFor(t, 10*time.Second, "the resumed pod answers", func() bool { return s.do(0, "GET", "/sessions/"+dests[0]+"/keys/k", "").servedBy == p.id })
		close(stop)
		l.wg.Wait()
		unmoved(t, dests, p.id)
	})
	t.Run("answering 500", func(t *testing.T) {
		p := s.pods["pod-2"]
		dests := bind("erring", p.id, 4)
		for range 50 {
			for _, d := range dests {
				if a := s.do(0, "GET", "/sessions/"+d+"/keys/k?status=500", ""); a.status != 500 || a.servedBy != p.id {
					t.Fatalf("%s: %d from %q", d, a.status, a.servedBy)
				}
			}
		}
		unmoved(t, dests, p.id)
	})
	t.Run("forged reports", func(t *testing.T) {
		p := s.pods["pod-3"]
		dests := bind("forged", p.id, 4)
		host, port, _ := net.SplitHostPort(p.addr)
		pn, _ := strconv.Atoi(port)
		entry := &accesslogdatav3.HTTPAccessLogEntry{CommonProperties: &accesslogdatav3.AccessLogCommon{
			ResponseFlags: &accesslogdatav3.ResponseFlags{UpstreamConnectionFailure: true},
			UpstreamRemoteAddress: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(pn)},
			}}},
		}}
		batch := make([]*accesslogdatav3.HTTPAccessLogEntry, 1000)
		for i := range batch {
			batch[i] = entry
		}
		for _, c := range s.coords {
			cc, err := grpc.NewClient(c.grpc, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			st, err := accesslogv3.NewAccessLogServiceClient(cc).StreamAccessLogs(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			for range 10 { // 10 000 reports
				if err := st.Send(&accesslogv3.StreamAccessLogsMessage{LogEntries: &accesslogv3.StreamAccessLogsMessage_HttpLogs{
					HttpLogs: &accesslogv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: batch},
				}}); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := st.CloseAndRecv(); err != nil && err != io.EOF {
				t.Fatal(err)
			}
			cc.Close()
			waitFor(t, 5*time.Second, "the reports read", func() bool { return s.metric(c, "coord_extproc_failure_reports_total") >= 10_000 })
			probes := s.metric(c, "coord_extproc_failure_probes_total")
			t.Logf("replica %s: 10 000 forged reports cost %v probes", c.grpc, probes)
			if probes > 100 {
				t.Errorf("%v probes for one live address", probes)
			}
		}
		for _, d := range dests {
			if a := s.do(0, "GET", "/sessions/"+d+"/keys/k", ""); a.servedBy != p.id {
				t.Errorf("%s served by %q after the forged reports", d, a.servedBy)
			}
		}
		unmoved(t, dests, p.id)
	})
}

// A killed pod restarted on the same address (same id: a Go Member) is
// live again as soon as it listens and registers: new sessions are
// claimed by it again.
func TestRestartedPodRoutedAgain(t *testing.T) {
	s := newStack(t, stackOptions{podTTL: longTTL, heartbeat: 10 * time.Second})
	p := s.pods["pod-1"]
	valkeytest.Do(t, s.raw, "SADD", "coordinator:destination:gone", p.id)
	p.proc.kill()
	waitFor(t, 5*time.Second, "pod-1 marked down", func() bool {
		s.do(0, "GET", "/sessions/gone/keys/k", "")
		n, _ := s.raw.Do(context.Background(), s.raw.B().Exists().Key("coordinator:down:"+p.id).Build()).AsInt64()
		return n == 1
	})
	for i := range 6 {
		if a := s.do(0, "PUT", fmt.Sprintf("/sessions/while-down-%d/keys/k", i), "v"); a.servedBy == p.id || a.servedBy == "" {
			t.Fatalf("claim while pod-1 is down: %d from %q", a.status, a.servedBy)
		}
	}
	restarted := time.Now()
	s.startPodAt(p.id, p.addr, stackOptions{podTTL: longTTL, heartbeat: 10 * time.Second})
	i := 0
	waitFor(t, 5*time.Second, "the restarted pod claims new sessions", func() bool {
		i++
		return s.do(0, "PUT", fmt.Sprintf("/sessions/after-%d/keys/k", i), "v").servedBy == p.id
	})
	t.Logf("restarted pod claimed a session %s after it was started", time.Since(restarted).Round(time.Millisecond))
}

// metric reads one unlabelled series from a replica's /metrics.
func (s *stack) metric(c *coord, name string) float64 {
	s.t.Helper()
	resp, err := s.client.Get("http://" + c.metrics + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			n, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return n
		}
	}
	return -1
}
