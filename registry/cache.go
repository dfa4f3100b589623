package registry

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valkey-io/valkey-go"

	"github.com/coord-extproc/coord-extproc/strategy"
)

// freshness is what every cached record carries: when it was read, in
// which flush generation, and whether an invalidation has hit it since.
// An entry that is not fresh is kept as the last known good answer.
type freshness struct {
	fetched  int64 // monotonic nanoseconds since the registry started (Registry.mono)
	flushGen uint64
	invalid  atomic.Bool
	slot     uint16 // its key's Cluster slot and the lane that held it (shards.go)
	lane     int32
}

// mono turns a time into monotonic nanoseconds since New; int64 instead of
// time.Time keeps every cached entry 16 bytes smaller.
func (r *Registry) mono(now time.Time) int64 { return int64(now.Sub(r.base)) }

// age is how long ago an entry was last known current: its read, or a
// later tracking probe of its own lane that proved no invalidation for it
// was pending (see probe.go and shards.go).
func (r *Registry) age(f *freshness, now time.Time) time.Duration {
	return time.Duration(r.mono(now) - max(f.fetched, r.shards.confirmedFor(f.slot, f.lane)))
}

func (r *Registry) fresh(f *freshness, now time.Time) bool {
	return !f.invalid.Load() && f.flushGen == r.flushGen.Load() && r.shards.current(f) && r.age(f, now) < r.opt.CacheTTL
}

// stamp records when and where (flush generation, slot, lane) the entry
// for key was read.
func (r *Registry) stamp(f *freshness, now time.Time, flushGen uint64, key string) {
	f.fetched, f.flushGen = r.mono(now), flushGen
	f.slot, f.lane = r.shards.place(key)
}

// setEntry is a cached destination set (or the members set). Entries with
// the same members share one idset, and with it one view, so a million
// destinations on a handful of pods cost little more than their keys.
type setEntry struct {
	freshness
	cleaning atomic.Bool // a clean-up of its dead ids is queued
	set      *idset
}

// idset is an interned, sorted member id list and its current view.
type idset struct {
	ids  []string // sorted, so round-robin order is stable across reloads
	view atomic.Pointer[setView]
}

// setView is a set's members split by state, built from member records.
// A write to one of them reaches it as refresh.go states: a load moves in
// place, any other change rebuilds it (memberGen).
type setView struct {
	memberGen  uint64
	shardGen   uint64 // shards.gen when built: a slot move rebuilds it
	fetched    int64  // when the oldest record in it was read (mono)
	lanes      uint64 // the lanes its records were read from
	noLane     bool   // a record came from a slot no known master held
	live       []strategy.Candidate
	takers     []strategy.Candidate // live and not draining: may take new destinations
	dead       []string
	unroutable []string
	// The entries it was built from: all of them, and live's and takers'
	// in order (their loads move in place, see withLoads).
	members, liveM, takerM []*memberEntry
}

func (r *Registry) usable(v *setView, gen uint64, now time.Time, x exactness) bool {
	return v != nil && v.memberGen == gen && v.shardGen == r.shards.gen.Load() && r.viewAge(v, now) < r.opt.CacheTTL &&
		r.refresh.allCurrent(v.members, r.mono(now), x)
}

// withLoads returns v with its candidates' current loads, for a strategy
// that reads them; the copy replaces v in is, so loads that did not move
// since cost nothing but a comparison.
func (r *Registry) withLoads(is *idset, v *setView) *setView {
	if !r.loadAware || (!loadsMoved(v.live, v.liveM) && !loadsMoved(v.takers, v.takerM)) {
		return v
	}
	nv := *v
	nv.live, nv.takers = currentLoads(v.live, v.liveM), currentLoads(v.takers, v.takerM)
	if is != nil {
		is.view.CompareAndSwap(v, &nv)
	}
	return &nv
}

func loadsMoved(cs []strategy.Candidate, ms []*memberEntry) bool {
	for i := range cs {
		if cs[i].Load != ms[i].load.Load() {
			return true
		}
	}
	return false
}

func currentLoads(cs []strategy.Candidate, ms []*memberEntry) []strategy.Candidate {
	out := slices.Clone(cs)
	for i := range out {
		out[i].Load = ms[i].load.Load()
	}
	return out
}

// viewAge is how long ago every record of v was last known current: no
// later than its oldest read or its least recently confirmed lane.
func (r *Registry) viewAge(v *setView, now time.Time) time.Duration {
	conf := r.shards.oldest(v.lanes)
	if v.noLane {
		conf = math.MinInt64
	}
	return time.Duration(r.mono(now) - max(v.fetched, conf))
}

type memberEntry struct {
	freshness
	// mark is the read of the member's down mark (downmarks.go), a key of
	// its own with its own slot and lane.
	mark   freshness
	host   string // its hostname, when the address is not an IP literal
	dnsGen uint64 // the resolver's generation its address was taken at
	id     string
	live   bool // the record has a non-empty address and no down mark for it
	down   bool // the record has an address, but a down mark names it
	// draining: the member is leaving (SPEC §8.2): it keeps what it holds
	// and takes nothing new.
	draining bool
	addr     string // IP:port; empty when unroutable (kept when down, for re-probes)
	raw      string // the record's address field as the pod wrote it
	markVal  string // the down mark as read ("" when none)
	memberState
}

// newMemberEntry returns an entry no request has used yet.
func newMemberEntry(id string) *memberEntry {
	e := &memberEntry{id: id}
	e.usedAt.Store(neverUsed)
	return e
}

func (m *memberEntry) candidate() strategy.Candidate {
	return strategy.Candidate{ID: m.id, Address: m.addr, Load: m.load.Load()}
}

// shared interns id lists by content.
type shared struct {
	mu   sync.Mutex
	sets map[string]*idset
}

const maxShared = 100_000

func (s *shared) intern(ids []string) *idset {
	key := strings.Join(ids, "\x00")
	s.mu.Lock()
	defer s.mu.Unlock()
	if got, ok := s.sets[key]; ok {
		return got
	}
	if len(s.sets) >= maxShared {
		clear(s.sets) // entries keep their idsets; only sharing restarts
	}
	is := &idset{ids: ids}
	s.sets[key] = is
	return is
}

// fetchMembers reads P:members, bounded by MaxMembers (an id costs a
// record read in every view of all members), and stores it with store;
// broadcast tracking invalidates it like any key under the prefix.
func (r *Registry) fetchMembers(ctx context.Context, now time.Time, store func(*setEntry)) (*setEntry, error) {
	seq, gen := r.inv.ticket(), r.flushGen.Load()
	ids, err := r.readMemberIDs(ctx)
	if err != nil {
		return nil, err
	}
	return r.storeSet(r.keys.members(), ids, seq, gen, now, store), nil
}

// readMemberIDs reads P:members straight from Valkey, refusing one over
// MaxMembers and asking the pruner to remove the ids without a record.
func (r *Registry) readMemberIDs(ctx context.Context) ([]string, error) {
	ids, over, err := r.readBounded(ctx, r.keys.members(), r.opt.MaxMembers)
	if over > 0 {
		r.prune.kick()
		return nil, fmt.Errorf("%w: %d ids, at most %d are read", ErrTooManyRegistered, over, r.opt.MaxMembers)
	}
	return ids, err
}

// fetchDest reads a destination set, bounded by MaxSetMembers; broadcast
// tracking invalidates it like any key under the prefix, however read.
func (r *Registry) fetchDest(ctx context.Context, destID string, now time.Time) (*setEntry, error) {
	seq, gen := r.inv.ticket(), r.flushGen.Load()
	ids, err := r.readDest(ctx, destID)
	if err != nil {
		return nil, err
	}
	return r.storeSet(r.keys.dest(destID), ids, seq, gen, now, func(e *setEntry) { r.storeDest(destID, e) }), nil
}

// readDest reads a destination set straight from Valkey, refusing (and
// queueing for shrinking) one over MaxSetMembers.
func (r *Registry) readDest(ctx context.Context, destID string) ([]string, error) {
	ids, over, err := r.readBounded(ctx, r.keys.dest(destID), r.opt.MaxSetMembers)
	if over > 0 {
		r.cleanup.shrink(destID)
		return nil, fmt.Errorf("%w: %q has %d, at most %d are read", ErrTooManyMembers, destID, over, r.opt.MaxSetMembers)
	}
	return ids, err
}

// readBounded reads the set at key, sorted, unless it holds more than
// limit ids: then only its size comes back (over), so an oversized set
// costs one small reply instead of megabytes.
func (r *Registry) readBounded(ctx context.Context, key string, limit int) (ids []string, over int64, err error) {
	ctx, cancel := r.callCtx(ctx)
	defer cancel()
	res := boundedSetScript.Exec(ctx, r.client, []string{key}, []string{strconv.Itoa(limit)})
	if n, err := res.AsInt64(); err == nil {
		return nil, n, nil
	}
	ids, err = res.AsStrSlice()
	if err = r.valkeyErr(err); err != nil {
		return nil, 0, err
	}
	slices.Sort(ids)
	return ids, 0, nil
}

// readAt is when the server produced res: now for a reply that came over
// the wire; for one valkey-go served from its client-side cache, when
// valkey-go read it (its remaining cache TTL tells how long ago, at worst
// earlier). Stamping a cached copy with now would let it outlive CacheTTL,
// or its shard (a hung master answers nothing, but its copies do).
func (r *Registry) readAt(res valkey.ValkeyResult, now time.Time) time.Time {
	if !res.IsCacheHit() {
		return now
	}
	left := time.Duration(res.CachePTTL()) * time.Millisecond
	if left < 0 {
		return now.Add(-r.opt.CacheTTL)
	}
	return now.Add(-(r.opt.CacheTTL - min(left, r.opt.CacheTTL)))
}

// storeSet caches ids read from key after ticket seq. The check follows
// the store: an invalidation of key that raced with the read leaves the
// entry marked for re-validation instead of trusted for a whole TTL.
func (r *Registry) storeSet(key string, ids []string, seq, gen uint64, now time.Time, store func(*setEntry)) *setEntry {
	slices.Sort(ids)
	e := &setEntry{set: r.shared.intern(ids)}
	r.stamp(&e.freshness, now, gen, key)
	store(e)
	if r.inv.raced(key, seq) {
		e.invalid.Store(true)
	}
	return e
}

// destSet returns the destination's set entry, fresh, and the stale one it
// replaces (nil if none) for use when Valkey fails.
func (r *Registry) destSet(ctx context.Context, destID string, now time.Time) (cur, old *setEntry, err error) {
	old, ok := r.sets.Get(destID)
	if ok && r.fresh(&old.freshness, now) {
		return old, nil, nil
	}
	if n, ok := r.negative.Get(destID); ok && r.fresh(&n.freshness, now) {
		return n, nil, nil
	}
	cur, err = r.fetchDest(ctx, destID, now)
	return cur, old, err
}

func (r *Registry) allSet(ctx context.Context, now time.Time) (cur, old *setEntry, err error) {
	old = r.all.Load()
	if old != nil && r.fresh(&old.freshness, now) {
		return old, nil, nil
	}
	cur, err = r.fetchMembers(ctx, now, r.all.Store)
	return cur, old, err
}

// memberEntries returns the records of ids, reading the ones not cached
// in a single pipelined call.
func (r *Registry) memberEntries(ctx context.Context, ids []string, now time.Time, x exactness) ([]*memberEntry, error) {
	out := make([]*memberEntry, len(ids))
	var missing []int
	for i, id := range ids {
		if e, ok := r.members.Get(id); ok && r.memberFresh(e, now, x) {
			out[i] = e
			continue
		}
		missing = append(missing, i)
	}
	if len(missing) == 0 {
		return out, nil
	}
	seq, gen := r.inv.ticket(), r.flushGen.Load()
	// Each member is two tracked reads: its record (on the records client,
	// which re-arms its tracking) and its down mark, served by valkey-go's
	// cache when it did not change, so a record's re-read costs one round
	// trip.
	recs := make(valkey.Commands, 0, len(missing))
	marks := make([]valkey.CacheableTTL, 0, len(missing))
	for _, i := range missing {
		recs = append(recs, readMember(r.records.B(), r.keys.member(ids[i])))
		marks = append(marks, valkey.CT(r.client.B().Get().Key(r.keys.down(ids[i])).Cache().ToStaticTTL(), r.opt.CacheTTL))
	}
	vctx, cancel := r.callCtx(ctx)
	var recRes []valkey.ValkeyResult
	read := make(chan struct{})
	go func() { // at once with the marks: a cold read costs one round trip, not two
		defer close(read)
		recRes = r.records.DoMulti(vctx, recs...)
	}()
	markResults := r.client.DoMultiCache(vctx, marks...)
	<-read
	cancel()
	for j, i := range missing {
		rec, markRes := recRes[j], markResults[j]
		fields, err := recordFields(rec)
		err = r.valkeyErr(err)
		if err != nil && !errors.Is(err, ErrMalformedRecord) {
			return nil, err
		}
		mark, merr := r.markOf(markRes)
		if merr != nil {
			return nil, merr
		}
		var e *memberEntry
		if err != nil {
			// Not a hash: keep the member out of routing but never call
			// it dead, so nothing is reassigned or removed because of it.
			r.logBadAddress(ids[i], "<malformed record>", err)
			e = newMemberEntry(ids[i])
			e.live = true
		} else {
			r.addrs.awaitFirst(ctx, fields["address"]) // a hostname's first answer, inside the budget
			e = r.memberFromFields(ids[i], fields, mark)
		}
		e.markVal = mark
		r.stamp(&e.freshness, r.readAt(rec, now), gen, r.keys.member(ids[i]))
		r.stamp(&e.mark, r.readAt(markRes, now), gen, r.keys.down(ids[i]))
		r.putMember(ids[i], e)
		out[i] = e
	}
	for _, i := range missing {
		if r.inv.raced(r.keys.member(ids[i]), seq) {
			out[i].invalid.Store(true)
		}
		if r.inv.raced(r.keys.down(ids[i]), seq) {
			out[i].mark.invalid.Store(true)
		}
	}
	return out, nil
}

// memberFromFields builds a member from its record's fields and the
// address its down mark names ("" when unmarked).
func (r *Registry) memberFromFields(id string, fields map[string]string, mark string) *memberEntry {
	e := newMemberEntry(id)
	raw := fields["address"]
	if raw == "" {
		return e // gone, or a record without an address: not live
	}
	e.raw = raw
	e.down = isDown(raw, mark)
	e.live = !e.down
	e.draining = fields[drainingField] != ""
	load, _ := strconv.ParseInt(fields["load"], 10, 64) // missing or junk load is 0
	e.load.Store(max(load, 0))                          // a negative load would win every least-loaded pick
	if host, _, err := splitAddress(raw); err == nil {
		if _, perr := netip.ParseAddr(host); perr != nil {
			e.host = host // rebuilt when its DNS answer appears or changes (onResolved)
		}
	}
	e.dnsGen = r.addrs.gen.Load() // before resolving: a change racing with it makes e stale
	addr, err := r.addrs.resolve(raw)
	if err != nil {
		// Live but unroutable; a hostname still resolving is no error
		// worth a log.
		if !errors.Is(err, ErrResolving) {
			r.logBadAddress(id, raw, err)
		}
		return e
	}
	e.addr = addr
	return e
}

// memberFresh is fresh for member records: a record whose address is a
// hostname is also rebuilt when any DNS answer changed since it was built,
// and a written record is used only as refresh.go allows.
func (r *Registry) memberFresh(e *memberEntry, now time.Time, x exactness) bool {
	return r.fresh(&e.freshness, now) && r.fresh(&e.mark, now) && (e.host == "" || e.dnsGen == r.addrs.gen.Load()) &&
		r.refresh.current(e, r.mono(now), x)
}

// onResolved runs when a hostname's DNS answer appears or changes: every
// cached member using it is rebuilt by the next request, from memory.
func (r *Registry) onResolved(host string) {
	for _, id := range r.members.Keys() {
		if e, ok := r.members.Peek(id); ok && e.host == host {
			e.invalid.Store(true)
		}
	}
	r.memberGen.Add(1)
}

// viewOf returns the set's members split into live candidates, dead and
// unroutable ids, shared with every set of the same members.
func (r *Registry) viewOf(ctx context.Context, e *setEntry, now time.Time, x exactness) (*setView, error) {
	gen := r.memberGen.Load()
	if v := e.set.view.Load(); r.usable(v, gen, now, x) {
		return r.withLoads(e.set, v), nil
	}
	ms, err := r.memberEntries(ctx, e.set.ids, now, x)
	if err != nil {
		return nil, err
	}
	v := r.buildView(ms, gen, &e.freshness)
	e.set.view.Store(v)
	return v, nil
}

// buildView splits ms by state; set is the set entry they came from (nil
// for an explicit list), whose read counts towards the view's age.
func (r *Registry) buildView(ms []*memberEntry, gen uint64, set *freshness) *setView {
	v := &setView{memberGen: gen, shardGen: r.shards.gen.Load(), fetched: math.MaxInt64}
	add := func(f *freshness) {
		v.fetched = min(v.fetched, f.fetched)
		if f.lane < 0 || f.lane >= maxLanes {
			v.noLane = true
		} else {
			v.lanes |= 1 << f.lane
		}
	}
	if set != nil {
		add(set)
	}
	v.members = ms
	for _, m := range ms {
		add(&m.freshness)
		add(&m.mark)
		switch {
		case !m.live:
			v.dead = append(v.dead, m.id)
		case m.addr == "":
			v.unroutable = append(v.unroutable, m.id)
		default:
			v.live, v.liveM = append(v.live, m.candidate()), append(v.liveM, m)
			if !m.draining {
				v.takers, v.takerM = append(v.takers, m.candidate()), append(v.takerM, m)
			}
		}
	}
	return v
}
