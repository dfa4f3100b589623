package registry

import "errors"

// Outcomes callers branch on. Check them with errors.Is.
var (
	// ErrInvalidID: the id cannot be used in a key (400).
	ErrInvalidID = errors.New("invalid id")
	// ErrNotFound: the destination has no binding, or only dead members and
	// orphan reassignment is off (404).
	ErrNotFound = errors.New("destination not found")
	// ErrNoCapacity: no live, routable member could be picked (503).
	ErrNoCapacity = errors.New("no live member available")
	// ErrRegistryUnavailable: Valkey failed or timed out and no last known
	// good answer younger than StaleMax exists (503).
	ErrRegistryUnavailable = errors.New("registry unavailable")
	// ErrRecovering: the registry was recently emptied (restart, flush,
	// fail-over) and pods may still be re-asserting their bindings, so no
	// destination is claimed or reassigned yet (503, retry shortly).
	ErrRecovering = errors.New("registry recovering: waiting for pods to re-assert bindings")
	// ErrTooManyMembers: the destination's set is larger than
	// Options.MaxSetMembers; it is not read (503, retry later).
	ErrTooManyMembers = errors.New("destination has too many members")
	// ErrTooManyRegistered: P:members holds more ids than
	// Options.MaxMembers; it is not read (503) and ids without a record are
	// pruned in the background (prune.go).
	ErrTooManyRegistered = errors.New("members set has too many ids")
	// ErrClaimLimited: claims on miss are over this replica's rate limit
	// (Options.ClaimRate); nothing was written (503, retry shortly).
	ErrClaimLimited = errors.New("claims over this replica's rate limit")
	// ErrConflict: a create's new destination is already bound to another
	// member; nothing was written (409).
	ErrConflict = errors.New("destination already bound to another member")
	// ErrLockNotFound: no such lock record (404).
	ErrLockNotFound = errors.New("lock not found")
	// ErrLockOwnerGone: the lock's pod is no longer live; the pinned
	// resource is lost (410).
	ErrLockOwnerGone = errors.New("lock owner is gone")
	// ErrReservedField: lock metadata tried to set podId or destinationId.
	ErrReservedField = errors.New("reserved lock field")
	// ErrMalformedRecord: a registry key holds the wrong type of value
	// (someone wrote it by hand); not transient, not "not found".
	ErrMalformedRecord = errors.New("malformed registry record")
	// ErrSentinelAddress: the Valkey URL names a Sentinel without a master
	// set, so the client would talk to the Sentinel as if it held data.
	ErrSentinelAddress = errors.New("the Valkey URL points at a Sentinel but has no ?master_set=NAME")
	// ErrBadAddress: a member address that cannot be turned into IP:port.
	ErrBadAddress = errors.New("unroutable member address")
)

// Result names a resolution outcome; the values are the metric labels and
// log values of SPEC §7.
type Result string

// Results of a successful resolution.
const (
	ResultHit              Result = "hit"
	ResultClaimed          Result = "claimed"
	ResultOrphanReassigned Result = "orphan_reassigned"
	ResultStale            Result = "stale"
	ResultLockHit          Result = "lock_hit"
)
