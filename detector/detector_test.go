package detector

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/coord-extproc/coord-extproc/registry"
)

// fakeRegistry stands for the registry's side of the contract: members at
// addresses, and the marks written and cleared.
type fakeRegistry struct {
	mu      sync.Mutex
	members map[string][]registry.Suspect // by address
	marked  map[string]registry.Suspect   // by member id
	cleared []string
}

func newFake() *fakeRegistry {
	return &fakeRegistry{members: map[string][]registry.Suspect{}, marked: map[string]registry.Suspect{}}
}

func (f *fakeRegistry) add(id, addr string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.members[addr] = append(f.members[addr], registry.Suspect{ID: id, Addr: addr, Raw: "http://" + addr})
}

func (f *fakeRegistry) MembersAt(_ context.Context, addr string) ([]registry.Suspect, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []registry.Suspect
	for _, s := range f.members[addr] {
		if _, down := f.marked[s.ID]; !down {
			out = append(out, s)
		}
	}
	return out, nil
}

func (f *fakeRegistry) MarkDown(_ context.Context, s registry.Suspect) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.marked[s.ID] = s
	return true, nil
}

func (f *fakeRegistry) ClearDown(_ context.Context, s registry.Suspect) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.marked[s.ID]; !ok {
		return false, nil
	}
	delete(f.marked, s.ID)
	f.cleared = append(f.cleared, s.ID)
	return true, nil
}

func (f *fakeRegistry) Marked() []registry.Suspect {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []registry.Suspect
	for _, s := range f.marked {
		out = append(out, s)
	}
	return out
}

func (f *fakeRegistry) isMarked(id string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, ok := f.marked[id]
	return ok
}

// listening returns an address whose kernel accepts connections although
// nothing ever calls Accept: a stopped (SIGSTOP) process looks like this.
func listening(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l.Addr().String()
}

// refusing returns an address nobody listens on any more.
func refusing(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

type countingDial struct {
	n    atomic.Int64
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
}

func (c *countingDial) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c.n.Add(1)
	if c.dial != nil {
		return c.dial(ctx, network, addr)
	}
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

func newDetector(t *testing.T, reg Registry, mod func(*Options)) (*Detector, *countingDial) {
	t.Helper()
	cd := &countingDial{}
	opt := Options{Registry: reg, Dial: cd.Dial, Recheck: 50 * time.Millisecond}
	if mod != nil {
		mod(&opt)
	}
	d := New(opt)
	t.Cleanup(d.Close)
	return d, cd
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", within, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// idle waits until every report has been worked through.
func idle(t *testing.T, d *Detector) {
	t.Helper()
	waitFor(t, 5*time.Second, "the detector's queue drained", func() bool {
		d.mu.Lock()
		defer d.mu.Unlock()
		return len(d.pending) == 0
	})
}

func TestReportVerdicts(t *testing.T) {
	tests := []struct {
		name       string
		addr       func(t *testing.T) string
		member     bool
		dialErr    error // instead of a real connect
		wantMarked bool
		wantProbes int64
	}{
		{name: "refused: confirmed", addr: refusing, member: true, wantMarked: true, wantProbes: 1},
		{name: "accepting but never serving (stopped process): not down", addr: listening, member: true, wantProbes: 1},
		{name: "no member at the address: ignored, no probe", addr: refusing, wantProbes: 0},
		{name: "out of file descriptors here: inconclusive", addr: refusing, member: true, dialErr: syscall.EMFILE, wantProbes: 1},
		{name: "not an IP:port: ignored", addr: func(*testing.T) string { return "pod-1.local:80" }, member: true, wantProbes: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake()
			addr := tt.addr(t)
			if tt.member {
				f.add("m", addr)
			}
			d, cd := newDetector(t, f, nil)
			if tt.dialErr != nil {
				cd.dial = func(context.Context, string, string) (net.Conn, error) {
					return nil, &net.OpError{Op: "dial", Err: tt.dialErr}
				}
			}
			d.Report(addr)
			idle(t, d)
			if got := f.isMarked("m"); got != tt.wantMarked {
				t.Errorf("marked = %v, want %v", got, tt.wantMarked)
			}
			if got := cd.n.Load(); got != tt.wantProbes {
				t.Errorf("probes = %d, want %d", got, tt.wantProbes)
			}
		})
	}
}

// A connect that times out (a host gone from the network drops SYNs)
// confirms like a refusal.
func TestProbeTimeoutConfirms(t *testing.T) {
	f := newFake()
	f.add("m", "127.0.0.1:9")
	d, cd := newDetector(t, f, func(o *Options) { o.ProbeTimeout = 50 * time.Millisecond })
	cd.dial = func(ctx context.Context, _, _ string) (net.Conn, error) {
		<-ctx.Done() // the SYN is never answered
		return nil, &net.OpError{Op: "dial", Err: ctx.Err()}
	}
	d.Report("127.0.0.1:9")
	idle(t, d)
	if !f.isMarked("m") {
		t.Fatal("a timed-out connect did not confirm")
	}
}

// A flood of reports (forged, or one failure logged by many requests) for
// a live pod costs one probe per cooldown, never a mark; a flood of
// distinct non-member addresses costs no probe and bounded memory.
func TestReportFloods(t *testing.T) {
	t.Run("one live address", func(t *testing.T) {
		f := newFake()
		addr := listening(t)
		f.add("m", addr)
		now := time.Unix(1000, 0) // the clock stands still: one cooldown lasts the whole test
		d, cd := newDetector(t, f, func(o *Options) { o.Now = func() time.Time { return now } })
		for range 10_000 {
			d.Report(addr)
		}
		idle(t, d)
		for range 10_000 {
			d.Report(addr)
		}
		idle(t, d)
		if f.isMarked("m") {
			t.Fatal("a flood marked a live pod down")
		}
		if n := cd.n.Load(); n != 1 {
			t.Errorf("%d probes for 20 000 reports of one live address, want 1", n)
		}
		if got := d.Stats().Reports.Load(); got != 20_000 {
			t.Errorf("reports counted %d", got)
		}
	})
	t.Run("distinct addresses nobody has", func(t *testing.T) {
		f := newFake()
		d, cd := newDetector(t, f, nil)
		for i := range 20_000 {
			d.Report(fmt.Sprintf("127.%d.%d.%d:80", i>>16&255, i>>8&255, i&255))
			d.mu.Lock()
			n := len(d.pending)
			d.mu.Unlock()
			if n > maxPending {
				t.Fatalf("%d addresses pending, bound %d", n, maxPending)
			}
		}
		idle(t, d)
		if n := cd.n.Load(); n != 0 {
			t.Errorf("%d probes for addresses no member has", n)
		}
		st := d.Stats()
		if st.Ignored.Load()+st.Dropped.Load() != 20_000 {
			t.Errorf("ignored %d + dropped %d, want 20 000", st.Ignored.Load(), st.Dropped.Load())
		}
	})
	t.Run("probes are rate-limited across addresses", func(t *testing.T) {
		f := newFake()
		var addrs []string
		for i := range 200 {
			a := fmt.Sprintf("127.0.%d.%d:80", i/250, 1+i%250)
			f.add(fmt.Sprintf("m%d", i), a)
			addrs = append(addrs, a)
		}
		now := time.Unix(1000, 0)
		d, cd := newDetector(t, f, func(o *Options) {
			o.Now = func() time.Time { return now }
			o.ProbeRate = 20
		})
		cd.dial = func(context.Context, string, string) (net.Conn, error) { return nil, syscall.ECONNREFUSED }
		for _, a := range addrs {
			d.Report(a)
		}
		idle(t, d)
		if n := cd.n.Load(); n != 20 {
			t.Errorf("%d probes with a stopped clock and a rate of 20/s, want 20", n)
		}
	})
}

// Marked addresses are probed again; one that answers has its mark cleared
// (a pod back on its address), one that still refuses keeps it.
func TestRecheckClearsMarks(t *testing.T) {
	f := newFake()
	back, still := listening(t), refusing(t)
	f.add("back", back)
	f.add("still", still)
	_, _ = f.MarkDown(context.Background(), registry.Suspect{ID: "back", Addr: back})
	_, _ = f.MarkDown(context.Background(), registry.Suspect{ID: "still", Addr: still})
	d, cd := newDetector(t, f, nil)
	waitFor(t, 5*time.Second, "the answering address's mark cleared", func() bool { return !f.isMarked("back") })
	waitFor(t, 5*time.Second, "the refusing address probed again", func() bool { return cd.n.Load() >= 3 })
	if !f.isMarked("still") {
		t.Error("a mark was cleared for an address that still refuses")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !slices.Equal(f.cleared, []string{"back"}) {
		t.Errorf("cleared %v", f.cleared)
	}
	if d.Stats().Cleared.Load() != 1 {
		t.Errorf("cleared counter %d", d.Stats().Cleared.Load())
	}
}
