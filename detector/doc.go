// Package detector turns Envoy's reports of failed upstream connections
// into shared down marks (SPEC §8.1), after confirming each one with a
// connect of its own. It also serves Envoy's gRPC access-log service.
package detector
