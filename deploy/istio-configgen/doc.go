// Package istioconfiggen applies deploy/istio/envoyfilter.yaml with
// Istio's own config generator (pilot's networking/core), in its own
// module: the dependency is large and slow to build (make test-istio).
package istioconfiggen
