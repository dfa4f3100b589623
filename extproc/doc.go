// Package extproc is coord-extproc's face to Envoy: an ext_proc server and
// an ext_authz server that match each request against the route table,
// resolve it in the registry and answer with the owning pod's IP:port (or
// an immediate JSON error), plus the Prometheus metrics they record.
package extproc
