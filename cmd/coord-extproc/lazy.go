package main

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/coord-extproc/coord-extproc/registry"
	"github.com/coord-extproc/coord-extproc/strategy"
)

// lazyRegistry lets the gRPC server answer before Valkey is reachable:
// until the registry is connected every decision is "Registry unavailable"
// (503), and health says NOT_SERVING.
type lazyRegistry struct {
	reg atomic.Pointer[registry.Registry]
}

var errNotConnected = fmt.Errorf("%w: not connected to valkey yet", registry.ErrRegistryUnavailable)

func (l *lazyRegistry) get() (*registry.Registry, error) {
	if r := l.reg.Load(); r != nil {
		return r, nil
	}
	return nil, errNotConnected
}

func (l *lazyRegistry) Route(ctx context.Context, destID string, opt registry.RouteOptions) (registry.Decision, error) {
	r, err := l.get()
	if err != nil {
		return registry.Decision{}, err
	}
	return r.Route(ctx, destID, opt)
}

func (l *lazyRegistry) RouteLock(ctx context.Context, lockID string) (registry.Decision, error) {
	r, err := l.get()
	if err != nil {
		return registry.Decision{}, err
	}
	return r.RouteLock(ctx, lockID)
}

func (l *lazyRegistry) PickMember(ctx context.Context, key string) (strategy.Candidate, error) {
	r, err := l.get()
	if err != nil {
		return strategy.Candidate{}, err
	}
	return r.PickMember(ctx, key)
}

func (l *lazyRegistry) Bind(ctx context.Context, destID, memberID string) error {
	r, err := l.get()
	if err != nil {
		return err
	}
	return r.Bind(ctx, destID, memberID)
}

func (l *lazyRegistry) Lookup(ctx context.Context, destID string) (registry.Binding, error) {
	r, err := l.get()
	if err != nil {
		return registry.Binding{}, err
	}
	return r.Lookup(ctx, destID)
}

func (l *lazyRegistry) DeleteDestination(ctx context.Context, destID string) error {
	r, err := l.get()
	if err != nil {
		return err
	}
	return r.DeleteDestination(ctx, destID)
}

func (l *lazyRegistry) MembersAt(ctx context.Context, addr string) ([]registry.Suspect, error) {
	r, err := l.get()
	if err != nil {
		return nil, err
	}
	return r.MembersAt(ctx, addr)
}

func (l *lazyRegistry) MarkDown(ctx context.Context, s registry.Suspect) (bool, error) {
	r, err := l.get()
	if err != nil {
		return false, err
	}
	return r.MarkDown(ctx, s)
}

func (l *lazyRegistry) ClearDown(ctx context.Context, s registry.Suspect) (bool, error) {
	r, err := l.get()
	if err != nil {
		return false, err
	}
	return r.ClearDown(ctx, s)
}

func (l *lazyRegistry) Marked() []registry.Suspect {
	if r := l.reg.Load(); r != nil {
		return r.Marked()
	}
	return nil
}
