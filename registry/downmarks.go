package registry

import (
	"context"
	"fmt"
	"time"

	"github.com/valkey-io/valkey-go"
)

// Down marks (SPEC §8.1).
//
// Invariant: a member is treated as not live on a mark only while the
// mark names the address its record still holds. The registry reads marks
// and never decides on its own that an address failed: MarkDown is called
// by the failure detector (package detector) after its own connect to the
// address failed. A mark is P:down:<memberId> = the record's address
// field, expiring no later than the record did when it was written, so it
// never outlives the member it condemns. A record whose address changed,
// a Go Member that registered again (Register deletes the mark) and a
// cleared mark (a later connect succeeded) make the member live again.
// Node pods and Node coordinators never read the key.

// markOf reads a down mark reply: "" when there is none.
func (r *Registry) markOf(res valkey.ValkeyResult) (string, error) {
	mark, err := res.ToString()
	if valkey.IsValkeyNil(err) {
		return "", nil
	}
	if err = r.valkeyErr(err); err != nil {
		return "", err
	}
	return mark, nil
}

// isDown reports whether a mark condemns a record's address.
func isDown(raw, mark string) bool { return mark != "" && mark == raw }

// Suspect is a member whose routable address failed a connect somewhere.
type Suspect struct {
	ID   string
	Addr string // IP:port, as Envoy connects to it
	Raw  string // the record's address field, which a mark names
}

// MembersAt returns the live members whose routable address is addr
// (IP:port), from the cached members set: a failure report for an address
// no member has concerns nobody.
func (r *Registry) MembersAt(ctx context.Context, addr string) ([]Suspect, error) {
	now := r.opt.Now()
	e, old, err := r.allSet(ctx, now)
	if err != nil {
		if old == nil {
			return nil, err
		}
		e = old
	}
	ms, err := r.cachedMembers(ctx, e.set.ids, now)
	if err != nil {
		return nil, err
	}
	var out []Suspect
	for _, m := range ms {
		if m.live && m.addr == addr {
			out = append(out, Suspect{ID: m.id, Addr: addr, Raw: m.raw})
		}
	}
	return out, nil
}

// MarkDown writes a down mark for s, read back from the member's record
// first: nothing is marked (false) if the record is gone or its address no
// longer resolves to s.Addr. The mark expires with the record's TTL.
func (r *Registry) MarkDown(ctx context.Context, s Suspect) (bool, error) {
	if err := ValidateID(s.ID); err != nil {
		return false, err
	}
	ctx, cancel := r.callCtx(ctx)
	defer cancel()
	key := r.keys.member(s.ID)
	res := r.client.DoMulti(ctx, r.client.B().Hget().Key(key).Field("address").Build(), r.client.B().Pttl().Key(key).Build())
	raw, err := res[0].ToString()
	if valkey.IsValkeyNil(err) || (err == nil && raw == "") {
		return false, nil
	}
	if err = r.valkeyErr(err); err != nil {
		return false, err
	}
	pttl, err := res[1].AsInt64()
	if err = r.valkeyErr(err); err != nil {
		return false, err
	}
	switch {
	case pttl == -2:
		return false, nil // expired between the two reads
	case pttl < 0:
		pttl = r.opt.HoldMax.Milliseconds() // a record without TTL (written by hand)
	}
	if addr, err := r.addrs.resolve(raw); err != nil || addr != s.Addr {
		return false, nil // moved, or unroutable anyway
	}
	err = r.client.Do(ctx, r.client.B().Set().Key(r.keys.down(s.ID)).Value(raw).Px(time.Duration(pttl)*time.Millisecond).Build()).Error()
	if err = r.valkeyErr(err); err != nil {
		return false, fmt.Errorf("mark %s down: %w", s.ID, err)
	}
	return true, nil
}

// clearMarkScript deletes a down mark only if it still names ARGV[1], so
// a clear never removes a newer mark for another address.
var clearMarkScript = valkey.NewLuaScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`)

// ClearDown removes s's mark if it still names s.Raw; it reports whether
// one was removed.
func (r *Registry) ClearDown(ctx context.Context, s Suspect) (bool, error) {
	if err := ValidateID(s.ID); err != nil {
		return false, err
	}
	ctx, cancel := r.callCtx(ctx)
	defer cancel()
	n, err := clearMarkScript.Exec(ctx, r.client, []string{r.keys.down(s.ID)}, []string{s.Raw}).AsInt64()
	if err = r.valkeyErr(err); err != nil {
		return false, err
	}
	return n == 1, nil
}

// Marked lists the members this replica has seen marked down (from its
// member cache), so the detector can probe them again.
func (r *Registry) Marked() []Suspect {
	var out []Suspect
	for _, id := range r.members.Keys() {
		if e, ok := r.members.Peek(id); ok && e.down && e.addr != "" {
			out = append(out, Suspect{ID: e.id, Addr: e.addr, Raw: e.raw})
		}
	}
	return out
}
