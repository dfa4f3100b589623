package registry

import (
	"context"
	"maps"
	"slices"
	"time"

	"github.com/valkey-io/valkey-go"
)

// Node members after a wipe (SPEC §3).
//
// Invariant: a member is restored only on evidence that it is alive, and
// only from what this replica knew of it before the wipe. A Node Member's
// heartbeat (HSET load, EXPIRE) re-creates its record with load alone and
// never re-adds it to P:members, so after a wipe it is alive but
// unroutable forever. That load-only record is the evidence: for a member
// this replica held, it re-asserts the bindings it had cached for it (each
// destination set is joined only if it is empty or holds nothing but
// members of the set as cached: never a second owner), then writes the
// cached address into the record (only if it still has none) and re-adds
// the member to P:members. Bindings first, address last: like a Go
// Member's own recovery, the member is never seen live without its
// bindings. No heartbeat, no record, nothing restored.

// restoreBindingScript (KEYS[1] = P:destination:<id>; ARGV = the member,
// then the set's members as cached) adds the member if the set is empty or
// holds only cached members. Returns 1 if it added it.
var restoreBindingScript = valkey.NewLuaScript(`
local allowed = {}
for i = 2, #ARGV do
  allowed[ARGV[i]] = true
end
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if not allowed[m] then
    return 0
  end
end
return redis.call('SADD', KEYS[1], ARGV[1])
`)

// restoreAddressScript (KEYS[1] = P:member:<id>; ARGV[1] = address) writes
// the address into a record that exists without one; the record keeps the
// TTL the pod's heartbeat gave it. Returns 1 if it wrote.
var restoreAddressScript = valkey.NewLuaScript(`
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'address') == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'address', ARGV[1])
return 1
`)

// restoreInterval is how often held members are looked at while some are
// restorable, besides the wake-up their record's invalidation gives.
const restoreInterval = 250 * time.Millisecond

// onMemberWrite runs in valkey-go's reader for every member record
// invalidation: it dates the write for the member's TTL (ttl.go), and a
// restorable member's heartbeat wakes the restorer.
func (h *recovery) onMemberWrite(id string) {
	h.r.ttls.wrote(id, time.Now())
	if h.nRestorable.Load() == 0 {
		return
	}
	h.mu.Lock()
	_, ok := h.restorable[id]
	h.mu.Unlock()
	if ok {
		select {
		case h.restoreKick <- struct{}{}:
		default:
		}
	}
}

func (h *recovery) restoreLoop() {
	defer h.wg.Done()
	t := time.NewTicker(restoreInterval)
	defer t.Stop()
	for {
		select {
		case <-h.quit:
			return
		case <-h.restoreKick:
		case <-t.C:
		}
		if h.nRestorable.Load() > 0 {
			h.restore()
		}
	}
}

// restore looks at every restorable member's record and restores those a
// heartbeat re-created without an address.
func (h *recovery) restore() {
	r := h.r
	h.mu.Lock()
	cands := maps.Clone(h.restorable)
	h.mu.Unlock()
	st := h.state.Load()
	ids := slices.Sorted(maps.Keys(cands))
	ctx, cancel := context.WithTimeout(context.Background(), 4*r.opt.Timeout+time.Second)
	defer cancel()
	cmds := make([]valkey.Completed, len(ids))
	for i, id := range ids {
		cmds[i] = readMember(r.client.B(), r.keys.member(id))
	}
	res := r.client.DoMulti(ctx, cmds...)
	for i, id := range ids {
		fields, err := recordFields(res[i])
		if err = r.valkeyErr(err); err != nil {
			continue // try again next round
		}
		switch {
		case fields["address"] != "": // back by itself, or restored by another replica
			h.forget(id)
		case len(fields) > 0: // a heartbeat without address: alive, and unroutable
			if err := h.restoreMember(ctx, cands[id]); err != nil {
				r.log.Warn("could not restore a member after a registry wipe; retrying", "member", clip(id), "err", err)
				continue
			}
			h.forget(id)
		case st != nil && !h.stillHeld(st, id):
			h.forget(id) // its hold ended without a heartbeat: dead
		}
	}
}

func (h *recovery) stillHeld(st *holdState, id string) bool {
	dl, ok := st.held[id]
	return ok && dl > time.Now().UnixMilli()+h.offsetMs.Load()
}

func (h *recovery) forget(id string) {
	h.mu.Lock()
	delete(h.restorable, id)
	h.nRestorable.Store(int64(len(h.restorable)))
	h.mu.Unlock()
}

// restoreMember re-asserts k's cached bindings, then its address and its
// place in P:members (one key per command, so valid on Cluster).
func (h *recovery) restoreMember(ctx context.Context, k knownMember) error {
	r := h.r
	if len(k.dests) > 0 {
		execs := make([]valkey.LuaExec, 0, len(k.dests))
		for _, b := range k.dests {
			execs = append(execs, valkey.LuaExec{Keys: []string{r.keys.dest(b.dest)}, Args: append([]string{k.id}, b.ids...)})
		}
		for _, res := range restoreBindingScript.ExecMulti(ctx, r.client, execs...) {
			if err := r.valkeyErr(res.Error()); err != nil {
				return err
			}
		}
	}
	wrote, err := restoreAddressScript.Exec(ctx, r.client, []string{r.keys.member(k.id)}, []string{k.raw}).AsInt64()
	if err = r.valkeyErr(err); err != nil {
		return err
	}
	if err := r.valkeyErr(r.client.Do(ctx, r.client.B().Sadd().Key(r.keys.members()).Member(k.id).Build()).Error()); err != nil {
		return err
	}
	if wrote == 1 {
		r.log.Info("member restored after a registry wipe: its heartbeat re-created its record without an address (a Node pod)",
			"member", clip(k.id), "address", clip(k.raw), "bindings", len(k.dests))
	}
	return nil
}
