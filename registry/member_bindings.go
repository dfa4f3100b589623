package registry

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/valkey-io/valkey-go"
)

// AddToDestination binds this member to destID and remembers it for
// recovery.
func (m *Member) AddToDestination(ctx context.Context, destID string) error {
	if err := ValidateID(destID); err != nil {
		return err
	}
	m.mu.Lock()
	m.dests[destID] = struct{}{}
	m.mu.Unlock()
	if err := m.do(ctx, m.opt.Client.B().Sadd().Key(m.keys.dest(destID)).Member(m.opt.ID).Build()); err != nil {
		return fmt.Errorf("registry: %s: add to destination %q: %w", m.opt.ID, destID, err)
	}
	return nil
}

// Claim binds this member to a new destination only if nobody else holds
// it (ErrConflict otherwise, nothing written), and remembers it for
// recovery: how a pod binds what it creates, so that a client naming
// another pod's destination cannot split it (SPEC §5.3). AddToDestination
// stays the unconditional join, for fan-out.
func (m *Member) Claim(ctx context.Context, destID string) error {
	if err := ValidateID(destID); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, m.opt.Timeout)
	defer cancel()
	n, err := bindScript.Exec(ctx, m.opt.Client, []string{m.keys.dest(destID)}, []string{m.opt.ID}).AsInt64()
	if err != nil {
		return fmt.Errorf("registry: %s: claim %q: %w", m.opt.ID, destID, err)
	}
	if n == 0 {
		return fmt.Errorf("registry: %s: claim %q: %w", m.opt.ID, destID, ErrConflict)
	}
	m.mu.Lock()
	m.dests[destID] = struct{}{}
	m.mu.Unlock()
	return nil
}

// RemoveFromDestination unbinds this member from destID.
func (m *Member) RemoveFromDestination(ctx context.Context, destID string) error {
	if err := ValidateID(destID); err != nil {
		return err
	}
	m.mu.Lock()
	delete(m.dests, destID)
	m.mu.Unlock()
	if err := m.do(ctx, m.opt.Client.B().Srem().Key(m.keys.dest(destID)).Member(m.opt.ID).Build()); err != nil {
		return fmt.Errorf("registry: %s: remove from destination %q: %w", m.opt.ID, destID, err)
	}
	return nil
}

// Destinations returns the destinations this member has bound, sorted.
func (m *Member) Destinations() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]string, 0, len(m.dests))
	for d := range m.dests {
		out = append(out, d)
	}
	slices.Sort(out)
	return out
}

// RegisterLock publishes a lock record routing lockID to this member. The
// record replaces any previous one of the same id. metadata may not name
// podId or destinationId (ErrReservedField). A positive lease makes the
// record expire unless RefreshLock extends it.
func (m *Member) RegisterLock(ctx context.Context, lockID, destID string, metadata map[string]string, lease time.Duration) error {
	if err := ValidateID(lockID); err != nil {
		return err
	}
	if err := ValidateID(destID); err != nil {
		return err
	}
	fields := make([]string, 0, 2*len(metadata)+4)
	for _, k := range slices.Sorted(maps.Keys(metadata)) {
		if k == lockFieldPod || k == lockFieldDest {
			return fmt.Errorf("registry: lock %q: %w %q", lockID, ErrReservedField, k)
		}
		fields = append(fields, k, metadata[k])
	}
	fields = append(fields, lockFieldPod, m.opt.ID, lockFieldDest, destID)

	b := m.opt.Client.B()
	key := m.keys.lock(lockID)
	hset := b.Hset().Key(key).FieldValue()
	for i := 0; i < len(fields); i += 2 {
		hset = hset.FieldValue(fields[i], fields[i+1])
	}
	cmds := []valkey.Completed{b.Multi().Build(), b.Del().Key(key).Build(), hset.Build()}
	if lease > 0 {
		cmds = append(cmds, b.Pexpire().Key(key).Milliseconds(lease.Milliseconds()).Build())
	}
	cmds = append(cmds, b.Exec().Build())
	if err := m.do(ctx, cmds...); err != nil {
		return fmt.Errorf("registry: register lock %q: %w", lockID, err)
	}
	m.mu.Lock()
	m.locks[lockID] = heldLock{fields: fields, lease: lease, deadline: m.opt.Now().Add(lease)}
	m.mu.Unlock()
	return nil
}

// RefreshLock extends a leased lock by lease. A lock whose lease ran out
// is ErrLockNotFound and is forgotten; one whose record the registry lost
// while its lease ran is re-asserted.
func (m *Member) RefreshLock(ctx context.Context, lockID string, lease time.Duration) error {
	if err := ValidateID(lockID); err != nil {
		return err
	}
	if lease <= 0 {
		return fmt.Errorf("registry: refresh lock %q: lease must be positive, got %s", lockID, lease)
	}
	ctx, cancel := context.WithTimeout(ctx, m.opt.Timeout)
	defer cancel()
	b, key := m.opt.Client.B(), m.keys.lock(lockID)
	n, err := m.opt.Client.Do(ctx, b.Pexpire().Key(key).Milliseconds(lease.Milliseconds()).Build()).AsInt64()
	if err != nil {
		return fmt.Errorf("registry: refresh lock %q: %w", lockID, err)
	}
	if n == 0 {
		// Gone before its lease ran out by this member's clock: the
		// registry lost it (a wipe, a fail-over to a lagging replica), not
		// the member. Re-assert it as a heartbeat's recovery would;
		// forgetting it here would keep that recovery from bringing it back.
		m.mu.Lock()
		l, held := m.locks[lockID]
		m.mu.Unlock()
		if held && (l.lease == 0 || m.opt.Now().Before(l.deadline)) {
			args := append([]string{strconv.FormatInt(lease.Milliseconds(), 10)}, l.fields...)
			if err := m.do(ctx, b.Eval().Script(restoreLockSrc).Numkeys(1).Key(key).Arg(args...).Build()); err != nil {
				return fmt.Errorf("registry: refresh lock %q: re-assert: %w", lockID, err)
			}
			n = 1
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if n == 0 {
		delete(m.locks, lockID)
		return fmt.Errorf("registry: refresh lock %q: %w", lockID, ErrLockNotFound)
	}
	if l, ok := m.locks[lockID]; ok {
		l.lease, l.deadline = lease, m.opt.Now().Add(lease)
		m.locks[lockID] = l
	}
	return nil
}

// UnregisterLock deletes the lock record and forgets it.
func (m *Member) UnregisterLock(ctx context.Context, lockID string) error {
	if err := ValidateID(lockID); err != nil {
		return err
	}
	m.mu.Lock()
	delete(m.locks, lockID)
	m.mu.Unlock()
	if err := m.do(ctx, m.opt.Client.B().Del().Key(m.keys.lock(lockID)).Build()); err != nil {
		return fmt.Errorf("registry: unregister lock %q: %w", lockID, err)
	}
	return nil
}

// PeerLoad is a live member and its load.
type PeerLoad struct {
	ID, Address string
	Load        int64
	// Draining: leaving, takes nothing new; Handoff: a Go Member that
	// hands off on request (Node pods cannot).
	Draining, Handoff bool
}

// ListPeerLoad returns every live member (this one included) with its
// load, read straight from Valkey, sorted by id.
func (m *Member) ListPeerLoad(ctx context.Context) ([]PeerLoad, error) {
	ctx, cancel := context.WithTimeout(ctx, m.opt.Timeout)
	defer cancel()
	c := m.opt.Client
	ids, err := c.Do(ctx, c.B().Smembers().Key(m.keys.members()).Build()).AsStrSlice()
	if err != nil {
		return nil, fmt.Errorf("registry: list members: %w", err)
	}
	slices.Sort(ids)
	cmds := make([]valkey.Completed, 0, 2*len(ids))
	for _, id := range ids {
		cmds = append(cmds, readMember(c.B(), m.keys.member(id)), c.B().Get().Key(m.keys.down(id)).Build())
	}
	res := c.DoMulti(ctx, cmds...)
	var out []PeerLoad
	for i := range ids {
		f, err := recordFields(res[2*i])
		if err != nil {
			return nil, fmt.Errorf("registry: read member %q: %w", ids[i], err)
		}
		mark, err := res[2*i+1].ToString()
		if err != nil && !valkey.IsValkeyNil(err) {
			return nil, fmt.Errorf("registry: read member %q: %w", ids[i], err)
		}
		if f["address"] == "" || isDown(f["address"], mark) {
			continue // gone, or marked down by a coordinator
		}
		load, _ := strconv.ParseInt(f["load"], 10, 64)
		out = append(out, PeerLoad{ID: ids[i], Address: f["address"], Load: max(load, 0),
			Draining: f[drainingField] != "", Handoff: f[handoffField] != ""})
	}
	return out, nil
}

// FanOut adds the least-loaded other live member that does not already
// serve destID to its set, and returns it. ErrNoCapacity when there is
// none. The added member is not told; it learns of the destination from
// the requests that now reach it.
func (m *Member) FanOut(ctx context.Context, destID string) (PeerLoad, error) {
	if err := ValidateID(destID); err != nil {
		return PeerLoad{}, err
	}
	peers, err := m.ListPeerLoad(ctx)
	if err != nil {
		return PeerLoad{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, m.opt.Timeout)
	defer cancel()
	c := m.opt.Client
	serving, err := c.Do(ctx, c.B().Smembers().Key(m.keys.dest(destID)).Build()).AsStrSlice()
	if err != nil {
		return PeerLoad{}, fmt.Errorf("registry: fan out %q: %w", destID, err)
	}
	best := -1
	for i, p := range peers {
		if p.ID == m.opt.ID || p.Draining || slices.Contains(serving, p.ID) {
			continue
		}
		if best < 0 || p.Load < peers[best].Load {
			best = i
		}
	}
	if best < 0 {
		return PeerLoad{}, fmt.Errorf("registry: fan out %q: %w: no other live member free", destID, ErrNoCapacity)
	}
	if err := c.Do(ctx, c.B().Sadd().Key(m.keys.dest(destID)).Member(peers[best].ID).Build()).Error(); err != nil {
		return PeerLoad{}, fmt.Errorf("registry: fan out %q: %w", destID, err)
	}
	return peers[best], nil
}
