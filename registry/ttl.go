package registry

import (
	"context"
	"math/rand/v2"
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
	// ttlRereads: known TTLs read again per pass, so the largest of a few
	// reads (between heartbeats a read sees less than the full TTL) wins.
	ttlRereads = 50
)

func (t *memberTTLs) get(id string) time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.m[id]
}

// observe reads the PTTL of the ids whose TTL is not known yet (a bounded
// batch per pass) and of a few known ones again, keeping the largest read
// rounded up to a whole second: pods set whole seconds, and a read lands
// between two heartbeats.
func (t *memberTTLs) observe(ctx context.Context, r *Registry, ids []string) {
	t.mu.Lock()
	if t.m == nil || len(t.m) >= maxTTLs {
		t.m = map[string]time.Duration{}
	}
	var unknown, again []string
	for _, id := range ids {
		_, ok := t.m[id]
		switch {
		case !ok && len(unknown) < ttlReadsPerPass:
			unknown = append(unknown, id)
		case ok && len(again) < ttlRereads && rand.IntN(len(ids)) < 2*ttlRereads:
			again = append(again, id)
		}
	}
	unknown = append(unknown, again...)
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
		if ms, err := res[i].AsInt64(); err == nil && ms > 0 {
			t.m[id] = max(t.m[id], time.Duration((ms+999)/1000)*time.Second)
		}
	}
}
