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
	// written is when a member's record was last written (its invalidation
	// arrived), while its TTL is unknown: a PTTL read some time after a
	// heartbeat is short by that time (one heartbeat at most), which once
	// ended a hold a second early. The PTTL plus the time since the write
	// is the TTL the heartbeat set.
	written map[string]time.Time
}

// wrote notes a write of id's record, until its TTL is known.
func (t *memberTTLs) wrote(id string, at time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, known := t.m[id]; known {
		return
	}
	if t.written == nil || len(t.written) >= maxTTLs {
		t.written = map[string]time.Time{}
	}
	t.written[id] = at
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
// known yet (a bounded batch per pass), adds the time since the record's
// last write, and rounds to a whole second (pods set whole seconds). Known
// TTLs are not read again: nothing in steady state costs a command.
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
	sent := time.Now()
	res := r.client.DoMulti(ctx, cmds...)
	t.mu.Lock()
	defer t.mu.Unlock()
	for i, id := range unknown {
		ms, err := res[i].AsInt64()
		switch {
		case err != nil: // read again next pass
		case ms > 0:
			ttl := time.Duration(ms) * time.Millisecond
			if w, ok := t.written[id]; ok && sent.After(w) && sent.Sub(w) < ttl+time.Second {
				ttl = (ttl + sent.Sub(w)).Round(time.Second) // the TTL the write set
			} else {
				ttl = time.Duration((ms+999)/1000) * time.Second // no write seen: at least this
			}
			delete(t.written, id)
			t.m[id] = ttl
		default: // no TTL (-1) or gone (-2): known as unknown (HoldMax), not read again
			delete(t.written, id)
			t.m[id] = 0
		}
	}
}
