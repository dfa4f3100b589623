package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// dataLoad reads every destination's key in a loop through gateway 0 and
// counts what would hurt a user: an answer from no pod, or data that is
// not what was written.
type dataLoad struct {
	mu               sync.Mutex
	total, noPod     int
	lost             map[string]int // destination -> reads without its value
	servedBy         map[string]map[string]int
	firstLostExample string
	wg               sync.WaitGroup
}

// moreReads waits until every destination was read about twice more:
// traffic on the new owners, counted, not a fixed time.
func (l *dataLoad) moreReads(t *testing.T, dests int) {
	t.Helper()
	l.mu.Lock()
	want := l.total + 2*dests
	l.mu.Unlock()
	waitFor(t, 10*time.Second, "more reads", func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.total >= want
	})
}

func (s *stack) startDataLoad(dests []string, stop <-chan struct{}) *dataLoad {
	l := &dataLoad{lost: map[string]int{}, servedBy: map[string]map[string]int{}}
	for _, d := range dests {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			for {
				a := s.do(0, "GET", "/sessions/"+d+"/keys/k", "")
				l.mu.Lock()
				l.total++
				switch {
				case a.servedBy == "":
					l.noPod++
					if l.firstLostExample == "" {
						l.firstLostExample = fmt.Sprintf("%s: %d %s %v", d, a.status, a.raw, a.err)
					}
				case a.status != 200 || a.str("value") != "v-"+d:
					l.lost[d]++
					if l.firstLostExample == "" {
						l.firstLostExample = fmt.Sprintf("%s: %d from %s: %s", d, a.status, a.servedBy, a.raw)
					}
				}
				if l.servedBy[d] == nil {
					l.servedBy[d] = map[string]int{}
				}
				l.servedBy[d][a.servedBy]++
				l.mu.Unlock()
				select {
				case <-stop:
					return
				case <-time.After(50 * time.Millisecond):
				}
			}
		}()
	}
	return l
}

// writeSessions claims n sessions and writes k=v-<id> into each.
func (s *stack) writeSessions(t *testing.T, prefix string, n int) []string {
	t.Helper()
	var dests []string
	for i := range n {
		d := fmt.Sprintf("%s%d", prefix, i)
		if a := s.do(0, "PUT", "/sessions/"+d+"/keys/k", "v-"+d); a.status != 200 {
			t.Fatalf("write %s: %d %s", d, a.status, a.raw)
		}
		dests = append(dests, d)
	}
	return dests
}

var handedOffLine = regexp.MustCompile(`destination handed off.*took=([0-9.]+[µm]?s)`)

// handoffTimes reads the handoff durations a pod logged.
func handoffTimes(t *testing.T, p *pod) []time.Duration {
	b, err := os.ReadFile(p.proc.log)
	if err != nil {
		t.Fatal(err)
	}
	var out []time.Duration
	for _, m := range handedOffLine.FindAllStringSubmatch(string(b), -1) {
		if d, err := time.ParseDuration(m[1]); err == nil {
			out = append(out, d)
		}
	}
	return out
}

// SPEC §8.2: a rolling restart of every pod under load (each in turn: a
// new pod with a new id starts, the old one gets SIGTERM, drains and hands
// its tenants off) loses nothing: no answer from no pod, every key written
// before is read back throughout, every destination served.
func TestRollingRestartLosesNothing(t *testing.T) {
	s := newStack(t, stackOptions{podTTL: longTTL, heartbeat: 10 * time.Second})
	dests := s.writeSessions(t, "roll", 24)
	stop := make(chan struct{})
	l := s.startDataLoad(dests, stop)
	var times []time.Duration
	for i, old := range []string{"pod-1", "pod-2", "pod-3"} {
		s.startPod(fmt.Sprintf("pod-%d-v2", i+1), stackOptions{podTTL: longTTL, heartbeat: 10 * time.Second})
		p := s.pods[old]
		p.proc.signal(syscall.SIGTERM)
		p.proc.exited(t, 20*time.Second)
		times = append(times, handoffTimes(t, p)...)
		delete(s.pods, old)
	}
	l.moreReads(t, len(dests))
	close(stop)
	l.wg.Wait()
	for _, d := range dests {
		owners := s.smembers("coordinator:destination:" + d)
		if len(owners) != 1 || !slices.Contains([]string{"pod-1-v2", "pod-2-v2", "pod-3-v2"}, owners[0]) {
			t.Errorf("%s ends bound to %v, want one new pod", d, owners)
		}
	}
	if l.noPod > 0 || len(l.lost) > 0 {
		t.Fatalf("%d of %d reads from no pod, lost data on %d destinations %v; first: %s", l.noPod, l.total, len(l.lost), l.lost, l.firstLostExample)
	}
	if len(times) < len(dests) {
		t.Fatalf("%d handoffs logged for %d destinations", len(times), len(dests))
	}
	slices.Sort(times)
	t.Logf("rolling restart: %d reads, %d from no pod, %d destinations lost data; %d handoffs, p50 %s, max %s",
		l.total, l.noPod, len(l.lost), len(times), times[len(times)/2], times[len(times)-1])
}

var (
	noMoves     = regexp.MustCompile(`(?m)^0 move\(s\)`)
	plannedMove = regexp.MustCompile(`(?m)^  (\S+): (\S+) -> (\S+)$`)
)

// rebalance runs `coord-extproc rebalance` against the stack's Valkey.
func (s *stack) rebalance(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(bins.coord, append([]string{"rebalance", "--valkey", s.url}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("rebalance %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// owners counts the destinations each pod alone holds.
func (s *stack) owners(t *testing.T, dests []string) map[string]int {
	t.Helper()
	n := map[string]int{}
	for _, d := range dests {
		if got := s.smembers("coordinator:destination:" + d); len(got) == 1 {
			n[got[0]]++
		} else {
			t.Fatalf("%s is bound to %v", d, got)
		}
	}
	return n
}

// SPEC §8.2: scale out from 2 to 4 pods under load, then rebalance: the
// dry run changes nothing; applied rounds spread the destinations within
// the threshold, with no error and no lost data.
func TestRebalanceAfterScaleOut(t *testing.T) {
	s := newStack(t, stackOptions{pods: 2, podTTL: longTTL, heartbeat: 10 * time.Second})
	dests := s.writeSessions(t, "bal", 40)
	stop := make(chan struct{})
	l := s.startDataLoad(dests, stop)
	s.startPod("pod-3", stackOptions{podTTL: longTTL, heartbeat: 10 * time.Second})
	s.startPod("pod-4", stackOptions{podTTL: longTTL, heartbeat: 10 * time.Second})
	before := s.owners(t, dests)

	dry := s.rebalance(t)
	if !strings.Contains(dry, "dry run: nothing changed") || noMoves.MatchString(dry) {
		t.Fatalf("dry run:\n%s", dry)
	}
	queued, _ := s.raw.Do(context.Background(), s.raw.B().Keys().Pattern("coordinator:handoff:*").Build()).AsStrSlice()
	if after := s.owners(t, dests); fmt.Sprint(after) != fmt.Sprint(before) || len(queued) > 0 {
		t.Fatalf("the dry run changed something: %v -> %v, queues %v", before, after, queued)
	}
	rounds := 0
	for ; rounds < 10; rounds++ {
		out := s.rebalance(t, "--apply", "--max-share", "0.25")
		if noMoves.MatchString(out) {
			break
		}
		// Done when every planned move is done: an empty queue alone is
		// not (the last request is popped before its handoff runs).
		planned := plannedMove.FindAllStringSubmatch(out, -1)
		waitFor(t, 10*time.Second, "the owners carried out the round", func() bool {
			for _, m := range planned {
				if got := s.smembers("coordinator:destination:" + m[1]); len(got) != 1 || got[0] != m[3] {
					return false
				}
			}
			for _, d := range dests { // and none other is mid-switch
				if len(s.smembers("coordinator:destination:"+d)) != 1 {
					return false
				}
			}
			return true
		})
	}
	l.moreReads(t, len(dests))
	close(stop)
	l.wg.Wait()
	after := s.owners(t, dests)
	lo, hi := 40, 0
	for _, p := range []string{"pod-1", "pod-2", "pod-3", "pod-4"} {
		lo, hi = min(lo, after[p]), max(hi, after[p])
	}
	t.Logf("rebalance: %v before, %v after %d rounds; %d reads, %d from no pod, %d destinations lost data", before, after, rounds, l.total, l.noPod, len(l.lost))
	if l.noPod > 0 || len(l.lost) > 0 {
		t.Fatalf("%d reads from no pod, lost data on %v; first: %s", l.noPod, l.lost, l.firstLostExample)
	}
	if hi-lo > 1 {
		t.Fatalf("spread %v after rebalancing, want within 1", after)
	}
}
