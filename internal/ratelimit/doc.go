// Package ratelimit is a token bucket for background and abuse limits
// (probes, claims): cheap, safe for concurrent use, with an injected clock.
package ratelimit
