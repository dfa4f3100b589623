// Package strategy chooses one pod among a destination's live candidates,
// once per request. Built-in strategies are round-robin (a cursor per
// destination), least-loaded (ties rotated) and random; custom ones
// implement Strategy and see the destination id.
package strategy
