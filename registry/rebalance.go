package registry

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"slices"

	"github.com/valkey-io/valkey-go"
)

// Rebalancing (SPEC §8.2): move destinations from the most to the least
// loaded members, a limited share per round (as Akka's least-shard
// allocation does), by asking the owners to hand them off. Only members
// that can hand off (Go Members with a hook: the handoff field) take part;
// Node pods and draining members are left alone. Only destinations with a
// single owner move: a fan-out set is shared on purpose.

// Holding is one member and the destinations it alone holds.
type Holding struct {
	ID      string
	Load    int64
	Dests   []string
	Handoff bool // it hands off on request
	// Draining members neither give (they are leaving anyway) nor take.
	Draining bool
}

// PlanOptions shape a round.
type PlanOptions struct {
	// ByLoad weighs members by their load figure instead of by how many
	// destinations they hold (each move then counts as the average load
	// of one of the source's destinations).
	ByLoad bool
	// Threshold: members differing by no more than this are balanced.
	Threshold float64
	// MaxShare bounds the moves of a round to this share of all movable
	// destinations (at least one move).
	MaxShare float64
}

// Move is one planned handoff.
type Move struct{ Dest, From, To string }

// Plan is a round of moves and the spread before and after it.
type Plan struct {
	Moves         []Move
	Before, After map[string]float64
	// Skipped are members left out: they cannot hand off (Node pods), or
	// are draining.
	Skipped []string
}

// PlanMoves plans one round over hs; it does not touch Valkey.
func PlanMoves(hs []Holding, opt PlanOptions) Plan {
	p := Plan{Before: map[string]float64{}, After: map[string]float64{}}
	type side struct {
		id    string
		w     float64 // weight: destinations or load
		per   float64 // weight of one of its destinations
		dests []string
	}
	var sides []*side
	movable := 0
	for _, h := range hs {
		if !h.Handoff || h.Draining {
			p.Skipped = append(p.Skipped, h.ID)
			continue
		}
		s := &side{id: h.ID, w: float64(len(h.Dests)), per: 1, dests: slices.Clone(h.Dests)}
		if opt.ByLoad {
			s.w = float64(max(h.Load, 0))
			if len(h.Dests) > 0 {
				s.per = s.w / float64(len(h.Dests))
			}
		}
		slices.Sort(s.dests)
		movable += len(h.Dests)
		sides = append(sides, s)
		p.Before[h.ID] = s.w
	}
	limit := max(1, int(math.Floor(opt.MaxShare*float64(movable))))
	for len(p.Moves) < limit && len(sides) > 1 {
		slices.SortFunc(sides, func(a, b *side) int { return cmp.Or(cmp.Compare(a.w, b.w), cmp.Compare(a.id, b.id)) })
		lo, hi := sides[0], sides[len(sides)-1]
		// Move while the gap exceeds the threshold and a move narrows it
		// (a move shifts one destination's weight: the gap by twice it).
		if gap := hi.w - lo.w; gap <= opt.Threshold || gap <= hi.per || len(hi.dests) == 0 {
			break
		}
		d := hi.dests[len(hi.dests)-1]
		hi.dests = hi.dests[:len(hi.dests)-1]
		hi.w -= hi.per
		lo.w += hi.per
		lo.dests = append(lo.dests, d)
		p.Moves = append(p.Moves, Move{Dest: d, From: hi.id, To: lo.id})
	}
	for _, s := range sides {
		p.After[s.id] = s.w
	}
	slices.Sort(p.Skipped)
	return p
}

// Holdings reads every live member and the destinations it alone holds
// (a SCAN of the destination sets, on every master on Cluster).
func (r *Registry) Holdings(ctx context.Context) ([]Holding, error) {
	ids, err := r.readMemberIDs(ctx)
	if err != nil {
		return nil, err
	}
	byID := map[string]*Holding{}
	var out []*Holding
	for _, batch := range chunks(ids, 500) {
		cmds := make([]valkey.Completed, 0, 2*len(batch))
		for _, id := range batch {
			cmds = append(cmds, readMember(r.client.B(), r.keys.member(id)), r.client.B().Get().Key(r.keys.down(id)).Build())
		}
		res := r.client.DoMulti(ctx, cmds...)
		for i, id := range batch {
			f, err := recordFields(res[2*i])
			if err = r.valkeyErr(err); err != nil {
				return nil, err
			}
			mark, err := r.markOf(res[2*i+1])
			if err != nil {
				return nil, err
			}
			m := r.memberFromFields(id, f, mark)
			if !m.live {
				continue
			}
			h := &Holding{ID: id, Load: m.load.Load(), Handoff: f[handoffField] != "", Draining: m.draining}
			byID[id] = h
			out = append(out, h)
		}
	}
	keys, err := r.scan(ctx, r.keys.destPrefix+"*")
	if err != nil {
		return nil, err
	}
	for _, batch := range chunks(keys, 500) {
		cmds := make([]valkey.Completed, len(batch))
		for i, k := range batch {
			cmds[i] = r.client.B().Smembers().Key(k).Build()
		}
		for i, res := range r.client.DoMulti(ctx, cmds...) {
			set, err := res.AsStrSlice()
			if err = r.valkeyErr(err); err != nil {
				continue // not a set (written by hand): not ours to move
			}
			if len(set) == 1 && byID[set[0]] != nil {
				byID[set[0]].Dests = append(byID[set[0]].Dests, batch[i][len(r.keys.destPrefix):])
			}
		}
	}
	hs := make([]Holding, len(out))
	for i, h := range out {
		hs[i] = *h
	}
	return hs, nil
}

// scan lists the keys matching pattern on every master.
func (r *Registry) scan(ctx context.Context, pattern string) ([]string, error) {
	seen := map[string]bool{}
	var out []string
	for _, c := range r.client.Nodes() {
		var cursor uint64
		for {
			e, err := c.Do(ctx, c.B().Scan().Cursor(cursor).Match(pattern).Count(1000).Build()).AsScanEntry()
			if err = r.valkeyErr(err); err != nil {
				return nil, err
			}
			for _, k := range e.Elements {
				if !seen[k] {
					seen[k] = true
					out = append(out, k)
				}
			}
			if cursor = e.Cursor; cursor == 0 {
				break
			}
		}
	}
	slices.Sort(out)
	return out, nil
}

// RequestHandoffs queues each move with its owner (P:handoff:<from>),
// which carries it out through its own handoff.
func (r *Registry) RequestHandoffs(ctx context.Context, moves []Move) error {
	cmds := make([]valkey.Completed, 0, len(moves))
	for _, m := range moves {
		b, err := json.Marshal(handoffRequest{Dest: m.Dest, To: m.To})
		if err != nil {
			return err
		}
		cmds = append(cmds, r.client.B().Rpush().Key(r.keys.handoffQueue(m.From)).Element(string(b)).Build())
	}
	for i, res := range r.client.DoMulti(ctx, cmds...) {
		if err := r.valkeyErr(res.Error()); err != nil {
			return fmt.Errorf("queue %s for %s: %w", moves[i].Dest, moves[i].From, err)
		}
	}
	return nil
}

func chunks(s []string, n int) [][]string {
	var out [][]string
	for len(s) > 0 {
		k := min(n, len(s))
		out = append(out, s[:k])
		s = s[k:]
	}
	return out
}
