package registry

import (
	"context"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/valkey-io/valkey-go"
)

// reclaimer deletes destinations claimed on miss that nobody used: bound
// only to members that are all dead, and untouched in Valkey for
// ReclaimAfter. claim_on_miss gives every client a key per id it names
// (issue #24 finding 3), and a claim bound to a pod that died would stay
// forever.
//
// Only claims are reclaimed, never bindings pods created: claims are
// indexed in P:claims (a sorted set by claim time, written in batches off
// the request path), and the reclaimer walks it oldest first, a bounded
// batch per pass. A destination with a live member, or touched recently,
// goes to the back of the index (checked again ReclaimAfter later); one
// whose set is gone leaves it. The deletion itself is one single-key
// script that re-checks, atomically, that the set holds only the dead ids
// and that no command touched it for ReclaimAfter (OBJECT IDLETIME: a
// request that missed every replica's cache read it). A deleted claim
// answers as an unknown id: claimed afresh by the same rule. Nothing is
// deleted during a recovery hold.
type reclaimer struct {
	r       *Registry
	after   time.Duration
	mu      sync.Mutex
	claimed []string // claims not yet written to P:claims
	quit    chan struct{}
	wg      sync.WaitGroup
}

const (
	reclaimBatch      = 200
	claimIndexFlush   = 250 * time.Millisecond
	maxPendingClaims  = 10_000
	reclaimPassBudget = 5 * time.Second
)

// idleSetScript (KEYS[1] = P:destination:<id>; ARGV[1] = idle seconds,
// ARGV[2] = most members) returns {0} if a command touched the set less
// than that long ago, else {1, members...}, or {2} for a set over the
// bound. OBJECT IDLETIME comes first: reading the set touches it. Without
// an idle time (an LFU eviction policy) the index's age stands alone.
var idleSetScript = valkey.NewLuaScript(`
local ok, idle = pcall(redis.call, 'OBJECT', 'IDLETIME', KEYS[1])
if ok and idle < tonumber(ARGV[1]) then
  return {0}
end
if redis.call('SCARD', KEYS[1]) > tonumber(ARGV[2]) then
  return {2}
end
local m = redis.call('SMEMBERS', KEYS[1])
table.insert(m, 1, 1)
return m
`)

// reclaimScript (KEYS[1] = P:destination:<id>; ARGV = dead member ids)
// deletes the set if it holds nothing but those ids. Returns 1 if it did.
var reclaimScript = valkey.NewLuaScript(`
local dead = {}
for i = 1, #ARGV do
  dead[ARGV[i]] = true
end
local m = redis.call('SMEMBERS', KEYS[1])
if #m == 0 then
  return 0
end
for _, id in ipairs(m) do
  if not dead[id] then
    return 0
  end
end
redis.call('DEL', KEYS[1])
return 1
`)

func newReclaimer(r *Registry) *reclaimer {
	rc := &reclaimer{r: r, after: r.opt.ReclaimAfter, quit: make(chan struct{})}
	if rc.after > 0 {
		rc.wg.Add(1)
		go rc.run()
	}
	return rc
}

// claimedOne notes a claim for the index; a burst beyond maxPendingClaims
// is not indexed (those claims are never reclaimed), never blocks.
func (rc *reclaimer) claimedOne(destID string) {
	if rc.after <= 0 {
		return
	}
	rc.mu.Lock()
	if len(rc.claimed) < maxPendingClaims {
		rc.claimed = append(rc.claimed, destID)
	}
	rc.mu.Unlock()
}

func (rc *reclaimer) stop() {
	close(rc.quit)
	rc.wg.Wait()
}

func (rc *reclaimer) run() {
	defer rc.wg.Done()
	flush := time.NewTicker(claimIndexFlush)
	defer flush.Stop()
	// Every replica walks the index; passes are jittered and idempotent.
	every := min(rc.after, time.Minute)
	next := time.Now().Add(every/2 + rand.N(every))
	for {
		select {
		case <-rc.quit:
			rc.index()
			return
		case <-flush.C:
			rc.index()
			if time.Now().After(next) {
				rc.pass()
				next = time.Now().Add(every/2 + rand.N(every))
			}
		}
	}
}

// index writes the pending claims to P:claims, scored by now.
func (rc *reclaimer) index() {
	rc.mu.Lock()
	ids := rc.claimed
	rc.claimed = nil
	rc.mu.Unlock()
	if len(ids) == 0 {
		return
	}
	r := rc.r
	ctx, cancel := context.WithTimeout(context.Background(), 4*r.opt.Timeout)
	defer cancel()
	now := float64(r.opt.Now().UnixMilli())
	z := r.client.B().Zadd().Key(r.keys.claims()).ScoreMember()
	for _, id := range ids {
		z = z.ScoreMember(now, id)
	}
	if err := r.valkeyErr(r.client.Do(ctx, z.Build()).Error()); err != nil {
		r.log.Warn("claims not indexed for reclaiming", "claims", len(ids), "err", err)
	}
}

// pass walks the claims older than ReclaimAfter, a batch at a time.
func (rc *reclaimer) pass() {
	r := rc.r
	ctx, cancel := context.WithTimeout(context.Background(), reclaimPassBudget)
	defer cancel()
	if err := r.recovery.hold(ctx); err != nil {
		return
	}
	cutoff := strconv.FormatInt(r.opt.Now().Add(-rc.after).UnixMilli(), 10)
	for ctx.Err() == nil {
		ids, err := r.client.Do(ctx, r.client.B().Zrange().Key(r.keys.claims()).Min("-inf").Max(cutoff).Byscore().Limit(0, reclaimBatch).Build()).AsStrSlice()
		if err = r.valkeyErr(err); err != nil {
			r.log.Warn("reclaiming unused claims stopped", "err", err)
			return
		}
		if len(ids) == 0 {
			return
		}
		for _, id := range ids {
			if ctx.Err() != nil {
				return
			}
			if err := rc.one(ctx, id); err != nil {
				r.log.Warn("reclaiming unused claims stopped", "destination", clip(id), "err", err)
				return
			}
		}
		if len(ids) < reclaimBatch {
			return
		}
	}
}

// one decides a claim: gone (unindexed), reclaimed (deleted, unindexed)
// or kept (moved to the back of the index).
func (rc *reclaimer) one(ctx context.Context, destID string) error {
	r := rc.r
	unindex := func() error {
		return r.valkeyErr(r.client.Do(ctx, r.client.B().Zrem().Key(r.keys.claims()).Member(destID).Build()).Error())
	}
	if ValidateID(destID) != nil {
		return unindex() // not ours: the index is only written with valid ids
	}
	key := r.keys.dest(destID)
	probe, err := idleSetScript.Exec(ctx, r.client, []string{key},
		[]string{strconv.FormatInt(int64(rc.after/time.Second), 10), strconv.Itoa(r.opt.MaxSetMembers)}).ToArray()
	if err = r.valkeyErr(err); err != nil {
		return err
	}
	var state int64 // an empty reply keeps the claim: every claim leaves the pass's range
	if len(probe) > 0 {
		state, _ = probe[0].AsInt64()
	}
	if state != 1 {
		return rc.keep(ctx, destID) // touched recently, or too large to judge
	}
	ids := make([]string, 0, len(probe)-1)
	for _, m := range probe[1:] {
		if id, err := m.ToString(); err == nil {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		return unindex()
	}
	dead, alive, err := r.confirmDead(ctx, ids)
	if err != nil {
		return err
	}
	if len(alive) > 0 || len(dead) != len(ids) {
		return rc.keep(ctx, destID)
	}
	n, err := reclaimScript.Exec(ctx, r.client, []string{key}, dead).AsInt64()
	if err = r.valkeyErr(err); err != nil {
		return err
	}
	if n == 1 {
		r.stats.ClaimsReclaimed.Add(1)
		r.log.Debug("unused claim reclaimed", "destination", destID, "dead", dead)
		return unindex()
	}
	return rc.keep(ctx, destID)
}

// keep moves a claim to the back of the index: judged again ReclaimAfter
// from now.
func (rc *reclaimer) keep(ctx context.Context, destID string) error {
	r := rc.r
	now := float64(r.opt.Now().UnixMilli())
	return r.valkeyErr(r.client.Do(ctx, r.client.B().Zadd().Key(r.keys.claims()).Xx().ScoreMember().ScoreMember(now, destID).Build()).Error())
}
