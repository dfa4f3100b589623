package registry

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valkey-io/valkey-go"
)

// Planned moves (SPEC §8.2).
//
// Invariant: a destination changes owner only after its state reached the
// new owner, in one atomic single-key step, and only from the one owner
// that holds it. The hook (HandoffFunc) carries the state first; then
// switchScript replaces this member by the target in the destination's
// set if the set is still exactly {this member}. A failed hook, a target
// gone, Valkey failing, or another handoff or writer having changed the
// set meanwhile all leave the destination where it was (or where the other
// writer put it): never with nobody, never with two owners. Until the
// switch, requests keep reaching this member, which still serves them;
// those that reach it after the switch (sent just before it) are the
// application's to finish: the demo pod holds a destination's requests
// during its hook and forwards them to the new owner once it has switched.

// Record fields of the Go Member beyond the Node layout: Node pods and
// Node coordinators ignore them.
const (
	drainingField = "draining" // the member is leaving: nothing new for it
	handoffField  = "handoff"  // the member hands off on request (rebalance)
)

// HandoffFunc moves destID's state from this pod to the peer to: the old
// pod dehydrates, the new one rehydrates (an HTTP call to to.Address, a
// Valkey hash, a bucket: the application's choice). It returns only once
// the new owner holds the state; an error leaves the destination here.
type HandoffFunc func(ctx context.Context, destID string, to PeerLoad) error

// Errors of a handoff that callers branch on.
var (
	// ErrHandoffLost: the destination's set changed meanwhile (another
	// handoff, a coordinator); nothing was switched.
	ErrHandoffLost = errors.New("handoff lost: the destination changed meanwhile")
	// ErrNoHandoff: the member was built without a HandoffFunc.
	ErrNoHandoff = errors.New("no handoff hook configured")
)

// switchScript (KEYS[1] = P:destination:<id>; ARGV = this member, target)
// replaces this member by the target if it is the set's only member, and
// removes it alone if others serve the destination too (a fan-out: they
// hold it already). Returns 1 switched, 2 left a fan-out, 0 changed.
var switchScript = valkey.NewLuaScript(`
local m = redis.call('SMEMBERS', KEYS[1])
if #m == 1 and m[1] == ARGV[1] then
  redis.call('SREM', KEYS[1], ARGV[1])
  redis.call('SADD', KEYS[1], ARGV[2])
  return 1
end
if #m > 1 and redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then
  redis.call('SREM', KEYS[1], ARGV[1])
  return 2
end
return 0
`)

// HandoffStats count this member's handoffs.
type HandoffStats struct {
	Started, Done, Failed atomic.Uint64
	// Nanos is the total duration of the successful ones.
	Nanos atomic.Int64
}

// Drain declares that this member is leaving: coordinators stop picking it
// for claims, fan-out and reassignments; what it holds keeps routing to it.
func (m *Member) Drain(ctx context.Context) error {
	m.draining.Store(true)
	key := m.keys.member(m.opt.ID)
	// Only into an existing record: a drain never creates one without TTL.
	err := m.do(ctx, m.opt.Client.B().Eval().Script(`if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], ARGV[1], '1') end return 1`).
		Numkeys(1).Key(key).Arg(drainingField).Build())
	if err != nil {
		return fmt.Errorf("registry: drain %s: %w", m.opt.ID, err)
	}
	return nil
}

// Track remembers destID as held without writing anything: the receiving
// side of a handoff, whose binding the old owner switches.
func (m *Member) Track(destID string) error {
	if err := ValidateID(destID); err != nil {
		return err
	}
	m.mu.Lock()
	m.dests[destID] = struct{}{}
	m.mu.Unlock()
	return nil
}

// HandoffStats returns the member's handoff counters.
func (m *Member) HandoffStats() *HandoffStats { return &m.handoffs }

// Handoff moves destID to a live, non-draining peer (toID if it is one,
// else the least loaded) through the HandoffFunc, then switches the owner.
func (m *Member) Handoff(ctx context.Context, destID, toID string) (PeerLoad, error) {
	peers, err := m.takers(ctx)
	if err != nil {
		return PeerLoad{}, err
	}
	to, ok := PeerLoad{}, false
	if i := slices.IndexFunc(peers, func(p PeerLoad) bool { return p.ID == toID }); i >= 0 {
		to, ok = peers[i], true
	} else if len(peers) > 0 {
		to, ok = slices.MinFunc(peers, byLoad), true
	}
	if !ok {
		return PeerLoad{}, fmt.Errorf("registry: handoff %q: %w: no live, non-draining peer", destID, ErrNoCapacity)
	}
	return to, m.handoffTo(ctx, destID, to)
}

// takers lists the peers that may take destinations: live, not marked
// down, not draining, not this member.
func (m *Member) takers(ctx context.Context) ([]PeerLoad, error) {
	peers, err := m.ListPeerLoad(ctx)
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(peers, func(p PeerLoad) bool { return p.ID == m.opt.ID || p.Draining }), nil
}

func (m *Member) handoffTo(ctx context.Context, destID string, to PeerLoad) error {
	if err := ValidateID(destID); err != nil {
		return err
	}
	if m.opt.Handoff == nil {
		return fmt.Errorf("registry: handoff %q: %w", destID, ErrNoHandoff)
	}
	m.handoffs.Started.Add(1)
	start := time.Now()
	fail := func(err error) error {
		m.handoffs.Failed.Add(1)
		m.opt.Logger.Warn("handoff failed; the destination stays here", "member", m.opt.ID, "destination", destID, "to", to.ID, "err", err)
		m.told(destID, to, err)
		return err
	}
	c := m.opt.Client
	rctx, cancel := context.WithTimeout(ctx, m.opt.Timeout)
	held, err := c.Do(rctx, c.B().Smembers().Key(m.keys.dest(destID)).Build()).AsStrSlice()
	cancel()
	if err != nil {
		return fail(fmt.Errorf("registry: handoff %q: %w", destID, err))
	}
	if !slices.Contains(held, m.opt.ID) {
		m.forgetDest(destID)
		return fail(fmt.Errorf("registry: handoff %q: %w: %s does not hold it", destID, ErrHandoffLost, m.opt.ID))
	}
	if len(held) == 1 { // the only owner carries the state over first
		hctx, cancel := context.WithTimeout(ctx, m.opt.HandoffTimeout)
		err := m.opt.Handoff(hctx, destID, to)
		cancel()
		if err != nil {
			return fail(fmt.Errorf("registry: handoff %q to %s: %w", destID, to.ID, err))
		}
		// The target may have died while it took the state: never switch
		// to a member that is not live.
		if live, err := m.peerLive(ctx, to.ID); err != nil || !live {
			return fail(fmt.Errorf("registry: handoff %q: target %s is not live after the hook (%v)", destID, to.ID, err))
		}
	}
	sctx, cancel := context.WithTimeout(ctx, m.opt.Timeout)
	n, err := switchScript.Exec(sctx, c, []string{m.keys.dest(destID)}, []string{m.opt.ID, to.ID}).AsInt64()
	cancel()
	switch {
	case err != nil:
		return fail(fmt.Errorf("registry: handoff %q: switch: %w", destID, err))
	case n == 0:
		return fail(fmt.Errorf("registry: handoff %q: %w", destID, ErrHandoffLost))
	}
	m.forgetDest(destID)
	took := time.Since(start)
	m.handoffs.Done.Add(1)
	m.handoffs.Nanos.Add(int64(took))
	m.opt.Logger.Info("destination handed off", "member", m.opt.ID, "destination", destID, "to", to.ID, "fanout", n == 2, "took", took)
	if n == 2 {
		to = PeerLoad{} // others already served it; nobody took anything over
	}
	m.told(destID, to, nil)
	return nil
}

func (m *Member) told(destID string, to PeerLoad, err error) {
	if m.opt.OnHandoff != nil {
		m.opt.OnHandoff(destID, to, err)
	}
}

// peerLive reads a peer's record and down mark.
func (m *Member) peerLive(ctx context.Context, id string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, m.opt.Timeout)
	defer cancel()
	c := m.opt.Client
	res := c.DoMulti(ctx, c.B().Hget().Key(m.keys.member(id)).Field("address").Build(), c.B().Get().Key(m.keys.down(id)).Build())
	addr, err := res[0].ToString()
	if valkey.IsValkeyNil(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	mark, err := res[1].ToString()
	if err != nil && !valkey.IsValkeyNil(err) {
		return false, err
	}
	return addr != "" && !isDown(addr, mark), nil
}

// byLoad orders peers by load (compared, not subtracted: int of an int64
// difference can wrap).
func byLoad(a, b PeerLoad) int { return cmp.Compare(a.Load, b.Load) }

func (m *Member) forgetDest(destID string) {
	m.mu.Lock()
	delete(m.dests, destID)
	m.mu.Unlock()
}

// HandoffAll moves every destination this member holds to the takers,
// spread over them in turn (least loaded first), at most
// HandoffParallel at once. It returns how many moved and the first error.
func (m *Member) HandoffAll(ctx context.Context) (int, error) {
	peers, err := m.takers(ctx)
	if err != nil {
		return 0, err
	}
	dests := m.Destinations()
	if len(dests) == 0 {
		return 0, nil
	}
	if len(peers) == 0 {
		return 0, fmt.Errorf("registry: %s: hand off %d destinations: %w: no live, non-draining peer", m.opt.ID, len(dests), ErrNoCapacity)
	}
	slices.SortFunc(peers, byLoad)
	var (
		moved    atomic.Int64
		firstErr error
		mu       sync.Mutex
		wg       sync.WaitGroup
		sem      = make(chan struct{}, m.opt.HandoffParallel)
	)
	for i, d := range dests {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := m.handoffTo(ctx, d, peers[i%len(peers)]); err != nil {
				mu.Lock()
				firstErr = cmp.Or(firstErr, err)
				mu.Unlock()
				return
			}
			moved.Add(1)
		}()
	}
	wg.Wait()
	return int(moved.Load()), firstErr
}

// Leave drains, hands off everything within DrainTimeout, then
// deregisters: a planned departure that loses nothing the hook carries.
func (m *Member) Leave(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, m.opt.DrainTimeout)
	defer cancel()
	if err := m.Drain(ctx); err != nil {
		m.opt.Logger.Warn("drain failed; handing off anyway", "member", m.opt.ID, "err", err)
	}
	n, err := m.HandoffAll(ctx)
	left := len(m.Destinations())
	m.opt.Logger.Info("handoffs done before leaving", "member", m.opt.ID, "moved", n, "left_behind", left, "err", err)
	dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), m.opt.Timeout)
	defer dcancel()
	if derr := m.Deregister(dctx); derr != nil {
		return derr
	}
	return err
}

// handoffRequest is one entry of P:handoff:<memberId>, written by
// `coord-extproc rebalance --apply`.
type handoffRequest struct {
	Dest string `json:"dest"`
	To   string `json:"to"`
}

// maxRequestsPerPoll bounds the requests taken from the queue at once.
const maxRequestsPerPoll = 16

// serveRequests takes handoff requests from this member's queue and
// carries them out; bad entries are dropped with a log line.
func (m *Member) serveRequests(ctx context.Context) {
	c := m.opt.Client
	qctx, cancel := context.WithTimeout(ctx, m.opt.Timeout)
	items, err := c.Do(qctx, c.B().Lpop().Key(m.keys.handoffQueue(m.opt.ID)).Count(maxRequestsPerPoll).Build()).AsStrSlice()
	cancel()
	if err != nil {
		if !valkey.IsValkeyNil(err) {
			m.opt.Logger.Warn("reading handoff requests failed", "member", m.opt.ID, "err", err)
		}
		return
	}
	for _, it := range items {
		var req handoffRequest
		if err := json.Unmarshal([]byte(it), &req); err != nil || ValidateID(req.Dest) != nil {
			m.opt.Logger.Warn("bad handoff request dropped", "member", m.opt.ID, "request", clip(it))
			continue
		}
		if _, err := m.Handoff(ctx, req.Dest, req.To); err != nil {
			m.opt.Logger.Warn("requested handoff not done", "member", m.opt.ID, "destination", req.Dest, "to", clip(req.To), "err", err)
		}
	}
}
