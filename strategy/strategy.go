package strategy

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
)

// Candidate is a live pod that may serve a destination.
type Candidate struct {
	// ID is the member id as registered in Valkey.
	ID string
	// Address is the routable "IP:port" (IPv6 in brackets).
	Address string
	// Load is the pod's self-reported load figure; lower is less busy.
	Load int64
}

// Strategy picks one candidate for a request to destID. Implementations must
// be safe for concurrent use, must not retain or modify candidates, and
// report false only for an empty list.
type Strategy interface {
	Pick(destID string, candidates []Candidate) (Candidate, bool)
}

// Func adapts a function to Strategy, for custom strategies.
type Func func(destID string, candidates []Candidate) (Candidate, bool)

// Pick calls f.
func (f Func) Pick(destID string, candidates []Candidate) (Candidate, bool) {
	return f(destID, candidates)
}

// Names of the built-in strategies.
const (
	RoundRobin  = "round-robin"
	LeastLoaded = "least-loaded"
	Random      = "random"
)

// ErrUnknown is returned by New for a name that is not a built-in strategy.
var ErrUnknown = errors.New("unknown strategy")

// Names lists the built-in strategy names, sorted.
func Names() []string {
	n := []string{RoundRobin, LeastLoaded, Random}
	sort.Strings(n)
	return n
}

// New returns the built-in strategy with the given name. An unknown name is
// an error, never a silent fallback: it is a configuration mistake.
func New(name string) (Strategy, error) {
	switch name {
	case RoundRobin:
		return NewRoundRobin(0), nil
	case LeastLoaded:
		return NewLeastLoaded(), nil
	case Random:
		return NewRandom(rand.IntN), nil
	}
	return nil, fmt.Errorf("%w %q (known: %s)", ErrUnknown, name, strings.Join(Names(), ", "))
}

// LoadBlind is implemented by strategies that never read Candidate.Load,
// so callers need not keep loads current for them.
type LoadBlind interface {
	IgnoresLoad()
}

// UsesLoad reports whether s may read Candidate.Load: true unless s is
// LoadBlind (round-robin and random are; a custom strategy is assumed to
// read loads unless it says otherwise).
func UsesLoad(s Strategy) bool {
	_, blind := s.(LoadBlind)
	return !blind
}
