package registry

import (
	"context"
	"sync"
	"time"

	"github.com/valkey-io/valkey-go"
)

// memberTTLs remembers each member's record TTL as observed: how long a
// silent member stays held after a wipe (recovery.go). It is read in the
// background (refreshMembers), never on the request path: a cold read of a
// thousand members must not carry a thousand more commands.
type memberTTLs struct {
	mu sync.Mutex
	m  map[string]time.Duration
}

const (
	maxTTLs         = 100_000
	ttlReadsPerPass = 1000
)

func (t *memberTTLs) get(id string) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.m[id]
}

// observe reads, once per member, the PTTL of the ids whose TTL is not
// known yet (a bounded batch per pass), rounded up to a whole second: pods
// set whole seconds, and a read lands at most one heartbeat interval short
// of the TTL — a member silent that long after a wipe has missed its own
// re-registration. Known TTLs are not read again: nothing in steady state
// costs a command.
func (t *memberTTLs) observe(ctx context.Context, r *Registry, ids []string) {
	t.mu.Lock()
	if t.m == nil || len(t.m) >= maxTTLs {
		t.m = map[string]time.Duration{}
	}
	var unknown []string
	for _, id := range ids {
		if _, ok := t.m[id]; !ok && len(unknown) < ttlReadsPerPass {
			unknown = append(unknown, id)
		}
	}
	t.mu.Unlock()
	if len(unknown) == 0 {
		return
	}
	cmds := make([]valkey.Completed, len(unknown))
	for i, id := range unknown {
		cmds[i] = r.client.B().Pttl().Key(r.keys.member(id)).Build()
	}
	res := r.client.DoMulti(ctx, cmds...)
	t.mu.Lock()
	defer t.mu.Unlock()
	for i, id := range unknown {
		ms, err := res[i].AsInt64()
		switch {
		case err != nil: // read again next pass
		case ms > 0:
			t.m[id] = time.Duration((ms+999)/1000) * time.Second
		default: // no TTL (-1) or gone (-2): known as unknown (HoldMax), not read again
			t.m[id] = 0
		}
	}
}
