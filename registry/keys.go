package registry

import "fmt"

// DefaultPrefix is the key prefix of @platformatic/coordinator.
const DefaultPrefix = "coordinator"

// MaxIDLen bounds ids used in keys. Route tables usually restrict ids much
// further; this is the registry's own guard so no caller can build an
// unbounded or binary key.
const MaxIDLen = 256

// keys builds the registry's key names for one prefix. The prefixes are
// computed once: every invalidation Valkey pushes is matched against them.
type keys struct {
	prefix, membersKey, recoveryKey, memberPrefix, destPrefix, lockPrefix, probePrefix, downPrefix string
}

func newKeys(prefix string) keys {
	return keys{
		prefix:       prefix,
		membersKey:   prefix + ":members",
		recoveryKey:  prefix + ":recovery",
		memberPrefix: prefix + ":member:",
		destPrefix:   prefix + ":destination:",
		lockPrefix:   prefix + ":lock:",
		probePrefix:  prefix + ":probe:",
		downPrefix:   prefix + ":down:",
	}
}

// broadcast is the CLIENT TRACKING options of the main client: every key
// it caches, by prefix, but member records (tracked apart, see New).
func (k keys) broadcast() []string {
	out := []string{"BCAST"}
	for _, p := range []string{k.membersKey, k.recoveryKey, k.destPrefix, k.lockPrefix, k.probePrefix, k.downPrefix} {
		out = append(out, "PREFIX", p)
	}
	return out
}

func (k keys) members() string         { return k.membersKey }
func (k keys) member(id string) string { return k.memberPrefix + id }
func (k keys) dest(id string) string   { return k.destPrefix + id }
func (k keys) lock(id string) string   { return k.lockPrefix + id }
func (k keys) recovery() string        { return k.recoveryKey }
func (k keys) down(id string) string   { return k.downPrefix + id }

// claims indexes the destinations claimed on miss, by claim time (reclaim.go).
func (k keys) claims() string { return k.prefix + ":claims" }

// handoffQueue is a member's queue of handoff requests (rebalance).
func (k keys) handoffQueue(id string) string { return k.prefix + ":handoff:" + id }

// ValidateID reports whether id may be used in a key: 1 to MaxIDLen bytes of
// visible ASCII (no spaces, control bytes or non-ASCII). It allocates
// nothing on success and is meant to run before any Valkey access.
func ValidateID(id string) error {
	if len(id) == 0 {
		return fmt.Errorf("%w: empty", ErrInvalidID)
	}
	if id == "." || id == ".." {
		return fmt.Errorf("%w: %q is a path step, not a name", ErrInvalidID, id)
	}
	if len(id) > MaxIDLen {
		return fmt.Errorf("%w: %d bytes, at most %d", ErrInvalidID, len(id), MaxIDLen)
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c <= ' ' || c >= 0x7f {
			return fmt.Errorf("%w: byte 0x%02x at offset %d", ErrInvalidID, c, i)
		}
	}
	return nil
}
