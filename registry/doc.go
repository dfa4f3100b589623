// Package registry is the Valkey registry shared by pods and coordinators,
// in the key layout of @platformatic/coordinator. Member is the pod side
// (register, heartbeat, bindings, locks); Registry is the coordinator side
// (resolution with tracking-invalidated caches, atomic claims, stale answers).
package registry
