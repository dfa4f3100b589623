package registry

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valkey-io/valkey-go"
)

// The recovery hold (SPEC §3).
//
// Invariant: no destination or lock of a held member is decided against
// while it is held. "Decided against" is every negative answer: 404 for a
// destination or lock, 410 for a lock owner, a claim, an orphan
// reassignment, a delete of a dead binding. While any member is held those
// answer ErrRecovering (503, retry) instead; anything present and live
// still routes. Outside a hold nothing waits.
//
// A hold starts only on an observed wipe: this replica saw a FLUSHALL or
// lost its connections (valkey-go reports both as a nil invalidation), or
// the recovery key changed, and then found the epoch in P:recovery missing
// or different from the one it last saw. A replica meeting a registry for
// the first time (fresh, or written only by Node pods) has seen no wipe and
// holds nothing: it just writes the epoch.
//
// The held members are those this replica knew live just before the wipe
// (its caches survive a flush; see snapshot). They are written into the
// one hash P:recovery as field held:<id> = deadline (server ms), so every
// replica, including one started during the hold, reads the same hold
// through its tracked cache, and a replica that knew other members adds
// them. A member is released as soon as its record is live again: the Go
// Member re-asserts its bindings and locks before it re-creates its record,
// so a live record means its bindings are back. A member that does not
// return is released at its deadline, HoldMax after the wipe (the longest
// member TTL: a member silent that long is dead anyway).
//
// Ordering: every negative path checks the hold after its authoritative
// read (settle), and claims also before writing. A FLUSHALL's invalidation
// reaches a connection before any reply that follows it there, and a
// restart closes the connections (nil invalidation) before the new server
// can answer, so a read that saw the wiped state always finds the replica
// unverified and verifies first.
type recovery struct {
	r   *Registry
	key string

	verifying chan struct{} // holds one token while a verify runs
	mu        sync.Mutex
	epoch     string                 // last epoch seen; "" before first contact
	pending   map[string]knownMember // members live before an unverified event
	// restorable are held members this replica can bring back on evidence
	// (restore.go); guarded by mu.
	restorable  map[string]knownMember
	nRestorable atomic.Int64 // len(restorable), read without mu
	restoreKick chan struct{}

	seq       atomic.Uint64 // moves on every flush/reconnect/recovery-key event
	verified  atomic.Uint64 // the seq the epoch was last verified at
	state     atomic.Pointer[holdState]
	releasing atomic.Bool
	offsetMs  atomic.Int64 // server clock minus local clock, ms
	kick      chan struct{}
	quit      chan struct{}
	wg        sync.WaitGroup
}

// holdState is the parsed P:recovery hash.
type holdState struct {
	epoch string
	held  map[string]int64 // member id -> deadline, server ms
}

const (
	heldField       = "held:"
	maxVerifyRounds = 8
)

func newRecovery(r *Registry) *recovery {
	return &recovery{r: r, key: r.keys.recovery(), pending: map[string]knownMember{}, restorable: map[string]knownMember{}, verifying: make(chan struct{}, 1),
		kick: make(chan struct{}, 1), restoreKick: make(chan struct{}, 1), quit: make(chan struct{})}
}

func (h *recovery) start() {
	h.seq.Store(1) // unverified until the first observation
	h.wg.Add(2)
	go h.run()
	go h.restoreLoop()
	h.wake()
}

func (h *recovery) stop() {
	close(h.quit)
	h.wg.Wait()
}

func (h *recovery) wake() {
	select {
	case h.kick <- struct{}{}:
	default:
	}
}

// onFlush runs in valkey-go's reader when everything cached is void (a
// FLUSHALL/FLUSHDB or a lost connection), and when P:recovery itself was
// written or deleted (its epoch may have vanished or changed). It remembers
// who was live before anything is re-read, and asks for a verification.
func (h *recovery) onFlush() {
	live := h.r.snapshotLive()
	h.r.log.Debug("recovery event", "live", len(live))
	h.mu.Lock()
	for _, k := range live {
		mergeKnown(h.pending, k)
	}
	h.mu.Unlock()
	h.state.Store(nil)
	h.seq.Add(1)
	h.wake()
}

// run verifies in the background after every event, retrying while Valkey
// is away, so the hold is written (for other replicas) without waiting for
// a request to need it.
func (h *recovery) run() {
	defer h.wg.Done()
	const minRetry, maxRetry = 20 * time.Millisecond, 200 * time.Millisecond
	backoff := minRetry
	for {
		// Verified: sleep until an event. Not yet: retry with back-off.
		var retry <-chan time.Time
		if !h.isVerified() {
			retry = time.After(backoff)
		}
		select {
		case <-h.quit:
			return
		case <-h.kick:
		case <-retry:
		}
		if h.isVerified() {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), h.r.opt.Timeout)
		err := h.verify(ctx)
		cancel()
		if err == nil {
			backoff = minRetry
		} else {
			backoff = min(2*backoff, maxRetry)
		}
	}
}

func (h *recovery) isVerified() bool { return h.verified.Load() == h.seq.Load() }

// verify runs observeScript: it creates the epoch if missing, says whether
// this replica has thereby observed a wipe, adds the pending members to the
// hold if so, and returns the hold.
func (h *recovery) verify(ctx context.Context) error {
	// One script at a time, however many requests wait; a wait is bounded
	// like a Valkey call, since the holder may be stuck in one.
	select {
	case h.verifying <- struct{}{}:
	default:
		wait, cancel := h.r.callCtx(ctx)
		defer cancel()
		select {
		case h.verifying <- struct{}{}:
		case <-wait.Done():
			return fmt.Errorf("%w: waiting for the registry epoch check: %w", ErrRegistryUnavailable, wait.Err())
		}
	}
	defer func() { <-h.verifying }()
	seq := h.seq.Load()
	if h.verified.Load() == seq {
		return nil
	}
	h.mu.Lock()
	last := h.epoch
	known := maps.Clone(h.pending)
	h.mu.Unlock()
	ids := slices.Sorted(maps.Keys(known))

	token := make([]byte, 6)
	_, _ = rand.Read(token)
	args := []string{last, strconv.FormatInt(h.r.opt.HoldMax.Milliseconds(), 10), hex.EncodeToString(token)}
	for _, id := range ids {
		// Each member is held for its own record TTL as last observed
		// (unknown: HoldMax); HoldMax caps it.
		args = append(args, id, strconv.FormatInt(known[id].ttl.Milliseconds(), 10))
	}
	ctx, cancel := h.r.callCtx(ctx)
	defer cancel()
	sent := time.Now()
	reply, err := observeScript.Exec(ctx, h.r.client, []string{h.key}, args).ToArray()
	if err = h.r.valkeyErr(err); err != nil {
		return err
	}
	if len(reply) < 3 {
		return fmt.Errorf("%w: recovery script returned %d values", ErrRegistryUnavailable, len(reply))
	}
	epoch, _ := reply[0].ToString()
	serverNow, _ := reply[1].AsInt64()
	wiped, _ := reply[2].AsInt64()
	st := &holdState{epoch: epoch, held: map[string]int64{}}
	for i := 3; i+1 < len(reply); i += 2 {
		id, _ := reply[i].ToString()
		dl, _ := reply[i+1].AsInt64()
		st.held[id] = dl
	}
	h.offsetMs.Store(serverNow - (sent.UnixMilli()+time.Now().UnixMilli())/2)
	h.r.log.Debug("recovery verify", "seq", seq, "now_seq", h.seq.Load(), "last", last, "pending", ids, "epoch", epoch, "wiped", wiped, "held", st.held)
	if wiped == 1 {
		h.r.log.Warn("registry wipe observed: holding negative answers until members re-register",
			"old_epoch", last, "epoch", epoch, "held", len(st.held), "hold_max", h.r.opt.HoldMax)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.seq.Load() != seq {
		// An event came after this verify read its inputs: the members
		// it holds may be incomplete. Keep the old epoch so the next
		// verify still sees the change and adds the rest.
		return nil
	}
	h.epoch = epoch
	if wiped == 1 {
		for id, k := range known {
			if _, held := st.held[id]; held && k.raw != "" {
				mergeKnown(h.restorable, k)
			}
		}
		h.nRestorable.Store(int64(len(h.restorable)))
	}
	clear(h.pending)
	h.state.Store(st)
	h.verified.Store(seq)
	return nil
}

// hold returns ErrRecovering while any member is held, nil when none is,
// and a registry error when it cannot tell. It costs no round trip while
// nothing changed: the state and the held members' records are cached.
func (h *recovery) hold(ctx context.Context) error {
	// A verify whose inputs an event overtook does not count (see verify);
	// events come in short bursts (one per connection), so a few rounds do.
	for i := 0; !h.isVerified(); i++ {
		if i == maxVerifyRounds {
			return fmt.Errorf("%w: registry changing under verification", ErrRecovering)
		}
		if err := h.verify(ctx); err != nil {
			return err
		}
	}
	st := h.state.Load()
	if st == nil {
		var err error
		if st, err = h.read(ctx); err != nil {
			return err
		}
	}
	if len(st.held) == 0 {
		return nil
	}
	now := time.Now().UnixMilli() + h.offsetMs.Load()
	var ids []string
	for id, dl := range st.held {
		if dl > now {
			ids = append(ids, id)
		}
	}
	h.r.stats.HeldMembers.Store(int64(len(ids)))
	if len(ids) == 0 {
		return nil
	}
	slices.Sort(ids)
	ms, err := h.r.memberEntries(ctx, ids, h.r.opt.Now(), exact)
	if err != nil {
		return err
	}
	var waiting []string
	for _, m := range ms {
		if !m.live {
			waiting = append(waiting, m.id)
		}
	}
	if len(waiting) == 0 {
		// The cache says all are back. A release is final, so it is
		// confirmed against Valkey itself: a cached record may predate
		// the wipe on a connection whose loss is not reported yet.
		dead, _, err := h.r.confirmDead(ctx, ids)
		if err != nil {
			return err
		}
		if waiting = dead; len(waiting) == 0 {
			h.release(st, ids)
			return nil
		}
	}
	return fmt.Errorf("%w: %d member(s) not back yet (%s)", ErrRecovering, len(waiting), strings.Join(waiting[:min(len(waiting), 5)], ", "))
}

// release drops members confirmed live from this replica's view of the
// hold at once, and from P:recovery in the background so other replicas
// and operators see it shrink.
func (h *recovery) release(st *holdState, ids []string) {
	next := &holdState{epoch: st.epoch, held: maps.Clone(st.held)}
	for _, id := range ids {
		delete(next.held, id)
	}
	if !h.state.CompareAndSwap(st, next) {
		return
	}
	h.r.stats.HeldMembers.Add(-int64(len(ids)))
	if !h.releasing.CompareAndSwap(false, true) {
		return
	}
	h.r.log.Info("members back after a registry wipe: released from the recovery hold", "members", ids, "still_held", len(next.held))
	fields := make([]string, len(ids))
	for i, id := range ids {
		fields[i] = heldField + id
	}
	go func() {
		defer h.releasing.Store(false)
		ctx, cancel := context.WithTimeout(context.Background(), h.r.opt.Timeout)
		defer cancel()
		c := h.r.client
		if err := h.r.valkeyErr(c.Do(ctx, c.B().Hdel().Key(h.key).Field(fields...).Build()).Error()); err != nil {
			h.r.log.Debug("could not remove released members from the recovery key", "err", err)
		}
	}()
}

// read loads P:recovery through the tracked cache.
func (h *recovery) read(ctx context.Context) (*holdState, error) {
	seq := h.seq.Load()
	ctx, cancel := h.r.callCtx(ctx)
	defer cancel()
	c := h.r.client
	fields, err := c.DoCache(ctx, c.B().Hgetall().Key(h.key).Cache().ToStaticTTL(), h.r.opt.CacheTTL).AsStrMap()
	if err = h.r.valkeyErr(err); err != nil {
		return nil, err
	}
	st := &holdState{epoch: fields["epoch"], held: map[string]int64{}}
	// Clamped as observeScript clamps: a hand-written deadline far ahead
	// holds no longer than this replica could have written.
	limit := time.Now().UnixMilli() + h.offsetMs.Load() + h.r.opt.HoldMax.Milliseconds()
	for f, v := range fields {
		if id, ok := strings.CutPrefix(f, heldField); ok {
			dl, _ := strconv.ParseInt(v, 10, 64)
			st.held[id] = min(dl, limit)
		}
	}
	if h.seq.Load() == seq {
		h.state.Store(st)
	}
	return st, nil
}

// guard is the hold check around one negative decision. A negative answer
// stands only if no member was held both before its authoritative read
// (else the read may predate a member's re-assertion that the later check
// counts as its release) and after it (else a wipe may have happened while
// it ran).
type guard struct {
	h      *recovery
	seq    uint64
	before error
}

func (h *recovery) begin(ctx context.Context) guard {
	return guard{h: h, seq: h.seq.Load(), before: h.hold(ctx)}
}

// settle reports whether the negative answer may stand.
func (g guard) settle(ctx context.Context) error {
	if g.before != nil {
		return g.before
	}
	return g.h.hold(ctx)
}

// changed reports whether a flush, reconnection or hold change happened
// since begin: a claim written meanwhile may have landed in a wiped
// registry.
func (g guard) changed() bool { return g.h.seq.Load() != g.seq }

// knownMember is what this replica knew of a live member just before a
// wipe: enough to hold it for its own TTL and, on evidence, to restore it
// (restore.go).
type knownMember struct {
	id    string
	raw   string        // its address field
	ttl   time.Duration // its record TTL as observed, 0 unknown
	dests []binding     // destinations cached with it in their set
}

// binding is a destination and its set as cached (shared, read-only).
type binding struct {
	dest string
	ids  []string
}

// mergeKnown adds k to m without losing what m knew: events come in
// bursts, and a snapshot taken after requests re-read the wiped sets knows
// less than the one taken before.
func mergeKnown(m map[string]knownMember, k knownMember) {
	old, ok := m[k.id]
	if !ok {
		m[k.id] = k
		return
	}
	if old.raw == "" {
		old.raw = k.raw
	}
	old.ttl = max(old.ttl, k.ttl)
	for _, b := range k.dests {
		if len(old.dests) < maxSnapshotDests && !slices.ContainsFunc(old.dests, func(o binding) bool { return o.dest == b.dest }) {
			old.dests = append(old.dests, b)
		}
	}
	m[k.id] = old
}

// maxSnapshotDests bounds the bindings remembered per member.
const maxSnapshotDests = 10000

// snapshotLive lists the members this replica last knew live, from the
// derived caches (which a flush does not empty): every member's record it
// read and the members set's view, each with the destinations cached with
// it.
func (r *Registry) snapshotLive() []knownMember {
	seen := map[string]*knownMember{}
	for _, id := range r.members.Keys() {
		if e, ok := r.members.Peek(id); ok && e.live {
			seen[id] = &knownMember{id: id, raw: e.raw, ttl: r.ttls.get(id)}
		}
	}
	if e := r.all.Load(); e != nil {
		if v := e.set.view.Load(); v != nil {
			for _, c := range v.live {
				if seen[c.ID] == nil {
					seen[c.ID] = &knownMember{id: c.ID, ttl: r.ttls.get(c.ID)}
				}
			}
			for _, id := range v.unroutable {
				if seen[id] == nil {
					seen[id] = &knownMember{id: id}
				}
			}
		}
	}
	for _, dest := range r.sets.Keys() {
		if e, ok := r.sets.Peek(dest); ok {
			for _, id := range e.set.ids {
				if k := seen[id]; k != nil && len(k.dests) < maxSnapshotDests {
					k.dests = append(k.dests, binding{dest: dest, ids: e.set.ids})
				}
			}
		}
	}
	out := make([]knownMember, 0, len(seen))
	for _, k := range seen {
		out = append(out, *k)
	}
	return out
}

// refreshMembers keeps the members set and every member's record cached,
// so that the snapshot taken at a wipe lists every member that was live,
// not only those this replica happened to route to. It reads only records
// not cached at all: a heartbeat's write does not make a member less
// known (refresh.go), so a thousand heartbeating pods cost it nothing.
func (r *Registry) refreshMembers() {
	ctx, cancel := context.WithTimeout(context.Background(), 4*r.opt.Timeout)
	defer cancel()
	now := r.opt.Now()
	if e, _, err := r.allSet(ctx, now); err == nil {
		if ms, err := r.cachedMembers(ctx, e.set.ids, now); err == nil {
			var draining int64
			for _, m := range ms {
				if m.live && m.addr != "" && m.draining {
					draining++
				}
			}
			r.stats.DrainingMembers.Store(draining)
		}
		r.ttls.observe(ctx, r, e.set.ids)
	}
}

// undoClaim removes a claim that may have landed in a wiped registry, so
// the owner's re-assertion is not joined by a second member.
func (r *Registry) undoClaim(ctx context.Context, destID, memberID string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.opt.Timeout)
	defer cancel()
	if err := r.valkeyErr(r.client.Do(ctx, r.client.B().Srem().Key(r.keys.dest(destID)).Member(memberID).Build()).Error()); err != nil {
		r.log.Warn("could not undo a claim made during a registry wipe", "destination", destID, "member", memberID, "err", err)
	}
	r.forgetDest(destID)
}

// HoldStatus describes the current recovery hold, for operators and tests.
type HoldStatus struct {
	Epoch string
	// Held maps each held member to when it stops being held.
	Held map[string]time.Time
}

// RecoveryHold reads the hold straight from Valkey.
func (r *Registry) RecoveryHold(ctx context.Context) (HoldStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, r.opt.Timeout)
	defer cancel()
	fields, err := r.client.Do(ctx, r.client.B().Hgetall().Key(r.keys.recovery()).Build()).AsStrMap()
	if err = r.valkeyErr(err); err != nil {
		return HoldStatus{}, err
	}
	hs := HoldStatus{Epoch: fields["epoch"], Held: map[string]time.Time{}}
	for f, v := range fields {
		if id, ok := strings.CutPrefix(f, heldField); ok {
			ms, _ := strconv.ParseInt(v, 10, 64)
			hs.Held[id] = time.UnixMilli(ms)
		}
	}
	return hs, nil
}

// observeScript (KEYS[1] = P:recovery; ARGV = last epoch seen or "",
// hold max ms, a random token, then pairs of a member id live before the
// event and its record TTL in ms, 0 unknown). A missing epoch is created
// as "<server ms>-<token>". A wipe is observed when this replica had seen
// an epoch and finds it missing or different; the replica's members are
// then held until the wipe's time + their TTL, capped by hold max (never
// shortened). An epoch time in the future counts as now, and no deadline
// is reported past now + hold max (SPEC §4: what is read back from Valkey
// about the hold is clamped to what a replica could have written). Expired
// held fields are pruned. Returns
// {epoch, server ms, wiped 0/1, id, deadline, id, deadline, ...}.
var observeScript = valkey.NewLuaScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local holdMax = tonumber(ARGV[2])
local cur = redis.call('HGET', KEYS[1], 'epoch')
local since = now
if not cur then
  cur = now .. '-' .. ARGV[3]
  redis.call('HSET', KEYS[1], 'epoch', cur)
elseif cur ~= ARGV[1] then
  since = tonumber(string.match(cur, '^%d+')) or now
end
if since > now then
  since = now -- an epoch from the future (written by hand) is a wipe now, no earlier or later
end
local wiped = 0
if ARGV[1] ~= '' and cur ~= ARGV[1] and now - since < holdMax then
  wiped = 1
  for i = 4, #ARGV - 1, 2 do
    local ttl = tonumber(ARGV[i + 1]) or 0
    if ttl <= 0 or ttl > holdMax then
      ttl = holdMax
    end
    local dl = since + ttl
    local f = 'held:' .. ARGV[i]
    local old = tonumber(redis.call('HGET', KEYS[1], f) or '0') or 0
    if dl > old then
      redis.call('HSET', KEYS[1], f, dl)
    end
  end
end
local out = {cur, now, wiped}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local f, v = all[i], all[i + 1]
  if string.sub(f, 1, 5) == 'held:' then
    local dl = tonumber(v) or 0
    if dl <= now then
      redis.call('HDEL', KEYS[1], f)
    else
      -- never longer than this replica could have written
      table.insert(out, string.sub(f, 6))
      table.insert(out, math.min(dl, now + holdMax))
    end
  end
end
return out
`)
