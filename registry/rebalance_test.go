package registry

import (
	"context"
	"fmt"
	"testing"
)

func dests(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%02d", prefix, i)
	}
	return out
}

// One round moves from the heaviest to the lightest, at most MaxShare of
// the movable destinations, never from or to Node pods or draining
// members, and stops once the spread is within the threshold.
func TestPlanMoves(t *testing.T) {
	tests := []struct {
		name      string
		hs        []Holding
		opt       PlanOptions
		wantMoves int
		wantAfter map[string]float64
		skipped   int
	}{
		{
			name: "scale out 2 to 4, whole rebalance",
			hs: []Holding{{ID: "a", Dests: dests("a", 20), Handoff: true}, {ID: "b", Dests: dests("b", 20), Handoff: true},
				{ID: "c", Handoff: true}, {ID: "d", Handoff: true}},
			opt:       PlanOptions{Threshold: 1, MaxShare: 1},
			wantMoves: 20,
			wantAfter: map[string]float64{"a": 10, "b": 10, "c": 10, "d": 10},
		},
		{
			name: "a limited share per round",
			hs: []Holding{{ID: "a", Dests: dests("a", 20), Handoff: true}, {ID: "b", Dests: dests("b", 20), Handoff: true},
				{ID: "c", Handoff: true}, {ID: "d", Handoff: true}},
			opt:       PlanOptions{Threshold: 1, MaxShare: 0.1},
			wantMoves: 4,
		},
		{
			name:      "within the threshold: nothing",
			hs:        []Holding{{ID: "a", Dests: dests("a", 6), Handoff: true}, {ID: "b", Dests: dests("b", 4), Handoff: true}},
			opt:       PlanOptions{Threshold: 2, MaxShare: 1},
			wantMoves: 0,
		},
		{
			name:      "odd total: balanced to within one",
			hs:        []Holding{{ID: "a", Dests: dests("a", 7), Handoff: true}, {ID: "b", Handoff: true}},
			opt:       PlanOptions{Threshold: 0, MaxShare: 1},
			wantMoves: 3,
			wantAfter: map[string]float64{"a": 4, "b": 3},
		},
		{
			name: "Node pods and draining members are left alone",
			hs: []Holding{{ID: "node", Dests: dests("n", 30)}, {ID: "leaving", Dests: dests("l", 10), Handoff: true, Draining: true},
				{ID: "a", Dests: dests("a", 4), Handoff: true}, {ID: "b", Handoff: true}},
			opt:       PlanOptions{Threshold: 1, MaxShare: 1},
			wantMoves: 2,
			wantAfter: map[string]float64{"a": 2, "b": 2},
			skipped:   2,
		},
		{
			name:      "by load",
			hs:        []Holding{{ID: "a", Load: 90, Dests: dests("a", 3), Handoff: true}, {ID: "b", Load: 0, Dests: dests("b", 3), Handoff: true}},
			opt:       PlanOptions{ByLoad: true, Threshold: 10, MaxShare: 1},
			wantMoves: 1,
			wantAfter: map[string]float64{"a": 60, "b": 30},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := PlanMoves(tt.hs, tt.opt)
			if len(p.Moves) != tt.wantMoves {
				t.Fatalf("%d moves %v, want %d", len(p.Moves), p.Moves, tt.wantMoves)
			}
			for id, w := range tt.wantAfter {
				if p.After[id] != w {
					t.Errorf("after: %v, want %s=%v", p.After, id, w)
				}
			}
			if len(p.Skipped) != tt.skipped {
				t.Errorf("skipped %v", p.Skipped)
			}
			for _, m := range p.Moves {
				if m.From == "node" || m.From == "leaving" || m.To == "node" || m.To == "leaving" {
					t.Errorf("move %+v involves a member that cannot take part", m)
				}
			}
		})
	}
}

// Holdings reads every live member (a Node pod without the handoff field
// included, marked as unable) and the destinations each holds alone,
// scanning every master on Cluster; shared and dead-owned sets are not
// anybody's to move.
func TestHoldingsOnEveryDeployment(t *testing.T) {
	for _, mode := range []string{"standalone", "cluster"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			d := startDeployment(t, mode)
			c := d.client(t)
			r := d.registry(t, func(o *Options) { o.Timeout = patientTimeout })
			ctx := context.Background()
			gm := newMember(t, c, "go-pod", 7500, func(o *MemberOptions) {
				o.Handoff = func(context.Context, string, PeerLoad) error { return nil }
			})
			if err := gm.Register(ctx, 0); err != nil {
				t.Fatal(err)
			}
			nodeMember(t, c, "coordinator", "node-pod", 7501, 3)
			for i := range 30 { // spread over every slot range
				do(t, c, "SADD", fmt.Sprintf("coordinator:destination:g%d", i), "go-pod")
				do(t, c, "SADD", fmt.Sprintf("coordinator:destination:n%d", i), "node-pod")
			}
			do(t, c, "SADD", "coordinator:destination:shared", "go-pod", "node-pod")
			do(t, c, "SADD", "coordinator:destination:dead", "gone")
			hs, err := r.Holdings(ctx)
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]Holding{}
			for _, h := range hs {
				got[h.ID] = h
			}
			if g, n := got["go-pod"], got["node-pod"]; len(g.Dests) != 30 || !g.Handoff || len(n.Dests) != 30 || n.Handoff || n.Load != 3 || len(hs) != 2 {
				t.Fatalf("holdings %+v", hs)
			}
		})
	}
}
