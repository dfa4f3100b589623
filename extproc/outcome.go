package extproc

import (
	"context"
	"errors"
	"net/http"

	"github.com/coord-extproc/coord-extproc/registry"
	"github.com/coord-extproc/coord-extproc/route"
	"github.com/coord-extproc/coord-extproc/strategy"
)

// Registry is what the servers need from the registry.
type Registry interface {
	Route(ctx context.Context, destID string, opt registry.RouteOptions) (registry.Decision, error)
	RouteLock(ctx context.Context, lockID string) (registry.Decision, error)
	PickMember(ctx context.Context, key string) (strategy.Candidate, error)
	Bind(ctx context.Context, destID, memberID string) error
	Lookup(ctx context.Context, destID string) (registry.Binding, error)
	DeleteDestination(ctx context.Context, destID string) error
}

// Result names of SPEC §7; they are metric labels and log values.
const (
	ResultHit                 = "hit"
	ResultClaimed             = "claimed"
	ResultOrphanReassigned    = "orphan_reassigned"
	ResultNotFound            = "not_found"
	ResultUnavailable         = "unavailable"
	ResultInvalid             = "invalid"
	ResultStale               = "stale"
	ResultRegistryError       = "registry_error"
	ResultLockHit             = "lock_hit"
	ResultLockNotFound        = "lock_not_found"
	ResultLockGone            = "lock_gone"
	ResultSpawned             = "spawned"
	ResultUpstreamError       = "upstream_error"
	ResultDeregistered        = "deregistered"
	ResultDeregisteredDeadPod = "deregistered_dead_pod"
	ResultPass                = "pass"
)

// actionNone labels requests that matched no rule.
const actionNone = "none"

// outcome is the answer to a request's headers: route to member, pass,
// or reply at once with status and message.
type outcome struct {
	rule    *route.Rule
	action  string
	id      string
	result  string
	member  strategy.Candidate
	routed  bool
	status  int    // immediate response status when not routed and not pass
	message string // error text for the JSON body
	retry   bool   // add Retry-After
}

func (o *outcome) immediate() bool { return o.status != 0 }

// decide matches the request and resolves it. It never returns an error:
// every failure becomes an immediate response with a status.
func decide(ctx context.Context, tbl *route.Table, reg Registry, method, path string, header func(string) string) outcome {
	m, err := tbl.Match(method, path, header)
	switch {
	case errors.Is(err, route.ErrNoRoute):
		return outcome{action: actionNone, result: ResultNotFound, status: http.StatusNotFound, message: "No route"}
	case errors.Is(err, route.ErrInvalidPath):
		return outcome{action: actionNone, result: ResultInvalid, status: http.StatusBadRequest, message: "Invalid path"}
	case errors.Is(err, route.ErrInvalidID):
		return outcome{rule: m.Rule, action: string(m.Rule.Action), result: ResultInvalid, status: http.StatusBadRequest, message: "Invalid id"}
	}
	o := outcome{rule: m.Rule, action: string(m.Rule.Action), id: m.ID}
	switch m.Rule.Action {
	case route.ActionPass:
		o.result = ResultPass
	case route.ActionRoute:
		d, err := reg.Route(ctx, m.ID, registry.RouteOptions{ClaimOnMiss: m.Rule.ClaimOnMiss, ReassignOrphans: m.Rule.ReassignOrphans})
		o.setDecision(d, err)
	case route.ActionRouteLock:
		d, err := reg.RouteLock(ctx, m.ID)
		o.setDecision(d, err)
	case route.ActionCreate:
		c, err := reg.PickMember(ctx, m.Rule.Name)
		o.setDecision(registry.Decision{Member: c, Result: registry.ResultHit}, err)
	case route.ActionDelete:
		o.decideDelete(ctx, reg)
	}
	return o
}

func (o *outcome) setDecision(d registry.Decision, err error) {
	if err != nil {
		o.setError(err)
		return
	}
	o.routed, o.member, o.result = true, d.Member, string(d.Result)
}

// decideDelete routes a delete to a live member; a binding whose members
// are all dead is removed here and answered without contacting any pod.
func (o *outcome) decideDelete(ctx context.Context, reg Registry) {
	d, err := reg.Route(ctx, o.id, registry.RouteOptions{})
	if !errors.Is(err, registry.ErrNotFound) {
		o.setDecision(d, err)
		return
	}
	b, err := reg.Lookup(ctx, o.id)
	if err != nil {
		o.setError(err)
		return
	}
	if len(b.Live) > 0 { // it came back between the two reads
		o.routed, o.member, o.result = true, b.Live[0], ResultHit
		return
	}
	if o.rule.KeepDeadBindings { // no pod can approve the delete: refuse it
		o.setError(registry.ErrNotFound)
		return
	}
	if err := reg.DeleteDestination(ctx, o.id); err != nil {
		o.setError(err)
		return
	}
	o.result, o.status = ResultDeregisteredDeadPod, o.rule.ExpectedStatus
}

// setError maps registry errors to statuses (SPEC §5.1).
func (o *outcome) setError(err error) {
	switch {
	case errors.Is(err, registry.ErrInvalidID):
		o.result, o.status, o.message = ResultInvalid, http.StatusBadRequest, "Invalid id"
	case errors.Is(err, registry.ErrNotFound):
		o.result, o.status, o.message = ResultNotFound, http.StatusNotFound, "Destination not found"
	case errors.Is(err, registry.ErrLockNotFound):
		o.result, o.status, o.message = ResultLockNotFound, http.StatusNotFound, "Lock not found"
	case errors.Is(err, registry.ErrLockOwnerGone):
		o.result, o.status, o.message = ResultLockGone, http.StatusGone, "Lock owner is gone"
	case errors.Is(err, registry.ErrNoCapacity):
		o.result, o.status, o.message, o.retry = ResultUnavailable, http.StatusServiceUnavailable, "No capacity", true
	case errors.Is(err, registry.ErrTooManyMembers):
		o.result, o.status, o.message, o.retry = ResultUnavailable, http.StatusServiceUnavailable, "Destination has too many members", true
	case errors.Is(err, registry.ErrTooManyRegistered):
		o.result, o.status, o.message, o.retry = ResultUnavailable, http.StatusServiceUnavailable, "Too many members registered", true
	case errors.Is(err, registry.ErrClaimLimited):
		o.result, o.status, o.message, o.retry = ResultUnavailable, http.StatusServiceUnavailable, "Claim rate exceeded", true
	case errors.Is(err, registry.ErrRecovering):
		o.result, o.status, o.message, o.retry = ResultUnavailable, http.StatusServiceUnavailable, "Registry recovering", true
	default: // ErrRegistryUnavailable, ErrMalformedRecord, context errors
		o.result, o.status, o.message, o.retry = ResultRegistryError, http.StatusServiceUnavailable, "Registry unavailable", true
	}
}
