package strategy

import (
	"errors"
	"fmt"
	"sync"
	"testing"
)

func cands(loads ...int64) []Candidate {
	c := make([]Candidate, len(loads))
	for i, l := range loads {
		c[i] = Candidate{ID: fmt.Sprintf("m%d", i), Address: fmt.Sprintf("127.0.0.1:%d", 9000+i), Load: l}
	}
	return c
}

func TestNew(t *testing.T) {
	for _, name := range Names() {
		t.Run(name, func(t *testing.T) {
			s, err := New(name)
			if err != nil || s == nil {
				t.Fatalf("New(%q) = %v, %v", name, s, err)
			}
			if _, ok := s.Pick("d", nil); ok {
				t.Fatal("empty candidate list must give no pick")
			}
			got, ok := s.Pick("d", cands(3))
			if !ok || got.ID != "m0" {
				t.Fatalf("single candidate: got %v %v", got, ok)
			}
		})
	}
	if _, err := New("fastest"); !errors.Is(err, ErrUnknown) {
		t.Fatalf("unknown name: err = %v, want ErrUnknown", err)
	}
}

func TestRoundRobinPerDestination(t *testing.T) {
	rr := NewRoundRobin(0)
	c := cands(0, 0, 0)
	counts := map[string]int{}
	for i := 0; i < 9; i++ {
		a, _ := rr.Pick("a", c)
		counts[a.ID]++
		// Traffic to another destination must not disturb a's rotation.
		rr.Pick("b", c)
	}
	for _, x := range c {
		if counts[x.ID] != 3 {
			t.Fatalf("destination a: counts %v, want 3 each", counts)
		}
	}
}

// New destinations start where the previous one started plus one, so
// that claims spread over every pod.
func TestRoundRobinSpreadsNewDestinations(t *testing.T) {
	rr := NewRoundRobin(0)
	c := cands(0, 0, 0)
	seen := map[string]int{}
	for i := 0; i < 6; i++ {
		got, _ := rr.Pick(fmt.Sprintf("new-%d", i), c)
		seen[got.ID]++
	}
	if len(seen) != 3 || seen["m0"] != 2 || seen["m1"] != 2 || seen["m2"] != 2 {
		t.Fatalf("first picks of 6 new destinations: %v, want 2 on each pod", seen)
	}
}

func TestRoundRobinCursorLimit(t *testing.T) {
	rr := NewRoundRobin(1).(*roundRobin)
	c := cands(0, 0)
	for i := 0; i < 1000; i++ {
		rr.Pick(fmt.Sprint(i), c)
	}
	total := 0
	for i := range rr.shards {
		total += len(rr.shards[i].cursors)
	}
	if total > rrShards {
		t.Fatalf("kept %d cursors, limit is %d", total, rrShards)
	}
}

func TestLeastLoaded(t *testing.T) {
	tests := []struct {
		name  string
		loads []int64
		want  map[string]bool
	}{
		{"lowest wins", []int64{5, 1, 9}, map[string]bool{"m1": true}},
		{"negative load", []int64{0, -2, 3}, map[string]bool{"m1": true}},
		{"ties rotate", []int64{2, 7, 2, 2}, map[string]bool{"m0": true, "m2": true, "m3": true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := NewLeastLoaded()
			seen := map[string]bool{}
			for i := 0; i < 12; i++ {
				got, ok := s.Pick("d", cands(tt.loads...))
				if !ok || !tt.want[got.ID] {
					t.Fatalf("picked %v, want one of %v", got.ID, tt.want)
				}
				seen[got.ID] = true
			}
			if len(seen) != len(tt.want) {
				t.Fatalf("picked %v over 12 calls, want all of %v", seen, tt.want)
			}
		})
	}
}

func TestRandomUsesInjectedSource(t *testing.T) {
	s := NewRandom(func(n int) int { return n - 1 })
	got, _ := s.Pick("d", cands(0, 0, 0))
	if got.ID != "m2" {
		t.Fatalf("got %s, want m2", got.ID)
	}
}

func TestCustomSeesDestination(t *testing.T) {
	// A "dedicated tenants" policy: tenant vip only goes to m2.
	s := Func(func(dest string, c []Candidate) (Candidate, bool) {
		for _, x := range c {
			if dest == "vip" && x.ID == "m2" {
				return x, true
			}
		}
		if dest == "vip" || len(c) == 0 {
			return Candidate{}, false
		}
		return c[0], true
	})
	if got, ok := s.Pick("vip", cands(0, 0, 0)); !ok || got.ID != "m2" {
		t.Fatalf("vip: %v %v", got, ok)
	}
	if _, ok := s.Pick("vip", cands(0, 0)); ok {
		t.Fatal("vip without m2 must give no pick")
	}
}

func TestConcurrentPicks(t *testing.T) {
	for _, name := range Names() {
		s, _ := New(name)
		var wg sync.WaitGroup
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 500; i++ {
					if _, ok := s.Pick(fmt.Sprint(i%17), cands(1, 2, 3)); !ok {
						t.Errorf("%s: no pick", name)
						return
					}
				}
			}()
		}
		wg.Wait()
	}
}
