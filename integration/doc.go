// Package integration holds the end-to-end suite: real valkey-server,
// coord-extproc, demo pods (demopod/) and a gateway — the Envoy stand-in
// (gateway/), or a real Envoy when ENVOY_BIN points at one — exchanging
// real HTTP.
package integration
