package registry

import (
	"context"
	"errors"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/valkey-io/valkey-go"
)

// Member records change every heartbeat (load and TTL), and a change of
// load alone matters to nothing but a load-aware strategy. So a write to a
// record does not rebuild destination views. The invariant:
//
// A view routes with a member's record as last read for at most the
// registry's grace (2 × Timeout) after Valkey announced a write to that
// record, and only a record that routed (live, with an address). Within
// it, the record is read again off the request path (the refresher,
// batched); past it, a request that needs the record reads it itself, as
// on a miss. Claims, reassignments, the recovery hold and operators'
// listings read a written record first (exact). What the re-read finds
// decides who is told:
//   - only `load` changed: the entry is updated in place; no view is
//     rebuilt, and a load-aware strategy sees the new figure on its next
//     request (withLoads);
//   - anything else routing reads changed (address, its resolution,
//     liveness, draining, a record gone or malformed): a new entry
//     replaces the old one and memberGen moves, so every view is rebuilt.
//
// Down marks (keys of their own), DNS answers and flushes move memberGen
// at once, as before. An entry that leaves the member cache (evicted or
// replaced) is retired (invalid): invalidations no longer reach it, so
// every view still holding it is rebuilt on its next use.
//
// Reads are spent only on records in use: a write to a record no request
// used for hotFor marks its entry dirty and nothing more; its next user
// reads it. Valkey tells of a record's writes only while it was read since
// the last one told (default-mode tracking, see New), so an idle replica
// hears once of each pod and then nothing, however often it heartbeats.
type refresher struct {
	r       *Registry
	grace   int64 // nanoseconds
	mu      sync.Mutex
	pending []*memberEntry
	kick    chan struct{}
	quit    chan struct{}
	wg      sync.WaitGroup
}

const (
	// maxRefreshBatch bounds the records read in one pipelined call.
	maxRefreshBatch = 512
	// usedResolution: how often a request re-marks an entry in use; a
	// store per request would make every request write shared memory.
	usedResolution = int64(100 * time.Millisecond)
	// neverUsed is usedAt of an entry no request has used.
	neverUsed = math.MinInt64 / 2
	// hotFor: a record is re-read in the background only if a request
	// used it this recently, i.e. one is likely before its next write; a
	// read nobody needs is a command and four wake-ups wasted. Others are
	// read by their next user.
	hotFor = int64(time.Second)
	// refreshGather is how long the refresher waits after a first write
	// for others to read with it: at a thousand heartbeats a second, one
	// call for some 25 records instead of one each (a quarter of the
	// default grace).
	refreshGather = 25 * time.Millisecond
)

func newRefresher(r *Registry) *refresher {
	return &refresher{r: r, grace: int64(2 * r.opt.Timeout), kick: make(chan struct{}, 1), quit: make(chan struct{})}
}

func (f *refresher) start() {
	f.wg.Add(1)
	go f.run()
}

func (f *refresher) stop() {
	close(f.quit)
	f.wg.Wait()
}

// written records a write to e's record, announced at t (mono).
func (f *refresher) written(e *memberEntry, t int64) {
	e.writes.Add(1)
	e.dirtySince.CompareAndSwap(0, max(t, 1))
	if t-e.usedAt.Load() < hotFor {
		f.want(e)
	}
}

// exactness says whether a read may use a written record within the grace:
// routing a binding may; what writes or decides from liveness (claims,
// reassignments, the recovery hold, operators) reads every written record
// first. A record that did not route (dead, unroutable) is always read
// first: a write to it is most likely its return.
type exactness bool

const (
	withinGrace exactness = false
	exact       exactness = true
)

// current reports whether e may still be used at t (mono), marks e in
// use, and asks for a re-read of a written e.
func (f *refresher) current(e *memberEntry, t int64, x exactness) bool {
	if e.invalid.Load() {
		return false
	}
	if t-e.usedAt.Load() >= usedResolution {
		e.usedAt.Store(t)
	}
	d := e.dirtySince.Load()
	if d == 0 {
		return true
	}
	if x == exact || !e.live || e.addr == "" || t-d >= f.grace {
		return false
	}
	f.want(e)
	return true
}

// allCurrent is current for every entry of a view.
func (f *refresher) allCurrent(ms []*memberEntry, t int64, x exactness) bool {
	for _, m := range ms {
		if !f.current(m, t, x) {
			return false
		}
	}
	return true
}

func (f *refresher) want(e *memberEntry) {
	if !e.queued.CompareAndSwap(false, true) {
		return
	}
	f.mu.Lock()
	f.pending = append(f.pending, e)
	f.mu.Unlock()
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

func (f *refresher) run() {
	defer f.wg.Done()
	gather := time.NewTimer(refreshGather)
	defer gather.Stop()
	for {
		select {
		case <-f.quit:
			return
		case <-f.kick:
		}
		gather.Reset(refreshGather)
		select {
		case <-f.quit:
			return
		case <-gather.C:
		}
		for {
			f.mu.Lock()
			n := min(len(f.pending), maxRefreshBatch)
			batch := f.pending[:n:n]
			f.pending = f.pending[n:]
			if len(f.pending) == 0 {
				f.pending = nil
			}
			f.mu.Unlock()
			if n == 0 {
				break
			}
			f.refresh(batch)
		}
	}
}

// refresh reads the records of batch in one pipelined call (no client-side
// cache: the entries are the cache) and applies what changed.
func (f *refresher) refresh(batch []*memberEntry) {
	r := f.r
	seq, gen := r.inv.ticket(), r.flushGen.Load()
	writes := make([]uint64, len(batch))
	cmds := make(valkey.Commands, len(batch))
	for i, e := range batch {
		writes[i] = e.writes.Load()
		cmds[i] = readMember(r.records.B(), r.keys.member(e.id))
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.opt.Timeout)
	res := r.records.DoMulti(ctx, cmds...)
	cancel()
	r.stats.MemberRefreshes.Add(uint64(len(batch)))
	now := r.opt.Now()
	changed := false
	for i, e := range batch {
		// Until here a write only counted (queued): whether it was read
		// is for writes[i] to tell.
		e.queued.Store(false)
		fields, err := recordFields(res[i])
		if err = r.valkeyErr(err); err != nil && !errors.Is(err, ErrMalformedRecord) {
			continue // stays dirty: past the grace its users read it themselves
		}
		var ne *memberEntry
		if err == nil {
			ne = r.memberFromFields(e.id, fields, e.markVal)
		} else {
			ne = newMemberEntry(e.id)
			ne.live = true // malformed: out of routing, never dead
		}
		if sameRoute(e, ne) {
			e.load.Store(ne.load.Load())
			e.dirtySince.Store(0)
			if e.writes.Load() != writes[i] { // written while read
				f.written(e, r.mono(now))
			}
			continue
		}
		r.stamp(&ne.freshness, now, gen, r.keys.member(e.id))
		ne.mark.fetched, ne.mark.flushGen, ne.mark.slot, ne.mark.lane = e.mark.fetched, e.mark.flushGen, e.mark.slot, e.mark.lane
		ne.mark.invalid.Store(e.mark.invalid.Load())
		ne.markVal = e.markVal
		ne.usedAt.Store(e.usedAt.Load())
		if !r.replaceMember(e.id, e, ne) {
			continue // replaced meanwhile by a read of its own
		}
		if r.inv.raced(r.keys.member(e.id), seq) {
			ne.invalid.Store(true)
		}
		r.stats.MemberChanges.Add(1)
		changed = true
	}
	if changed {
		r.memberGen.Add(1)
	}
}

// sameRoute reports whether two reads of a record route alike: they may
// differ only in load.
func sameRoute(a, b *memberEntry) bool {
	return a.raw == b.raw && a.addr == b.addr && a.host == b.host && a.live == b.live && a.down == b.down && a.draining == b.draining
}

// cachedMembers returns the entries of ids as cached, written to or not,
// reading only those not cached (or retired): for background users (the
// members snapshot, failure reports) that need to know who exists and
// where, not to route. It marks nothing in use.
func (r *Registry) cachedMembers(ctx context.Context, ids []string, now time.Time) ([]*memberEntry, error) {
	out := make([]*memberEntry, 0, len(ids))
	var missing []string
	for _, id := range ids {
		if e, ok := r.members.Peek(id); ok && !e.invalid.Load() && r.fresh(&e.mark, now) {
			out = append(out, e)
		} else {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		ms, err := r.memberEntries(ctx, missing, now, withinGrace)
		if err != nil {
			return nil, err
		}
		out = append(out, ms...)
	}
	return out, nil
}

// putMember caches e as id's entry, retiring the one it replaces.
func (r *Registry) putMember(id string, e *memberEntry) {
	r.membersMu.Lock()
	defer r.membersMu.Unlock()
	if old, ok := r.members.Peek(id); ok && old != e {
		old.invalid.Store(true)
	}
	r.members.Add(id, e)
}

// replaceMember caches e for id only if old is still the cached entry.
func (r *Registry) replaceMember(id string, old, e *memberEntry) bool {
	r.membersMu.Lock()
	defer r.membersMu.Unlock()
	if cur, ok := r.members.Peek(id); !ok || cur != old {
		return false
	}
	old.invalid.Store(true)
	r.members.Add(id, e)
	return true
}

// memberState is what a member entry carries besides its read: its load
// (moved in place by load-only writes) and the write bookkeeping above.
type memberState struct {
	load       atomic.Int64
	dirtySince atomic.Int64  // mono ns of the oldest write not read back; 0: none
	writes     atomic.Uint64 // writes announced, so a re-read knows it raced one
	usedAt     atomic.Int64  // mono ns a request last used it (usedResolution)
	queued     atomic.Bool   // waiting for the refresher
}
