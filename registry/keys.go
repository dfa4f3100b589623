package registry

import "fmt"

// DefaultPrefix is the key prefix of @platformatic/coordinator.
const DefaultPrefix = "coordinator"

// MaxIDLen bounds ids used in keys. Route tables usually restrict ids much
// further; this is the registry's own guard so no caller can build an
// unbounded or binary key.
const MaxIDLen = 256

// keys builds the registry's key names for one prefix.
type keys struct {
	prefix string
}

func (k keys) members() string         { return k.prefix + ":members" }
func (k keys) member(id string) string { return k.prefix + ":member:" + id }
func (k keys) dest(id string) string   { return k.prefix + ":destination:" + id }
func (k keys) lock(id string) string   { return k.prefix + ":lock:" + id }
func (k keys) epoch() string           { return k.prefix + ":registry-epoch" }
func (k keys) memberPrefix() string    { return k.prefix + ":member:" }
func (k keys) destPrefix() string      { return k.prefix + ":destination:" }
func (k keys) lockPrefix() string      { return k.prefix + ":lock:" }
func (k keys) probePrefix() string     { return k.prefix + ":probe:" }

// ValidateID reports whether id may be used in a key: 1 to MaxIDLen bytes of
// visible ASCII (no spaces, control bytes or non-ASCII). It allocates
// nothing on success and is meant to run before any Valkey access.
func ValidateID(id string) error {
	if len(id) == 0 {
		return fmt.Errorf("%w: empty", ErrInvalidID)
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
