// Package deploy holds the Kubernetes, Envoy Gateway and Istio manifests
// and checks them strictly against those projects' own Go API types and
// against coord-extproc's defaults. It is its own Go module, so the
// product's module never depends on Kubernetes, Envoy Gateway or Istio.
package deploy
