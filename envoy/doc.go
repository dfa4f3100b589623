// Package envoy holds the ready-to-run Envoy bootstraps for coord-extproc
// and loads them into Envoy's own v3 protos (go-control-plane), with every
// typed_config resolved and Envoy's validation rules applied.
package envoy
