package envoy

import (
	"bytes"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// originalDstFilterState is the filter state an ORIGINAL_DST cluster
// reads before anything else (original_dst_cluster.cc,
// OriginalDstCluster::LoadBalancer::chooseHost: filter state, then
// metadata, then the header, then the connection's restored local
// address).
const originalDstFilterState = "envoy.network.transport_socket.original_dst_address"

// checkOriginalDstFallbacks refuses the sources chooseHost would take
// besides coord-extproc's metadata: a filter that sets the filter state
// above (it wins over the metadata), and a listener that restores the
// original destination (use_original_dst, the original_dst listener
// filter), which a request without metadata — a pass rule, an answer
// that never came under failure mode open — would then follow to wherever
// the client connected.
func checkOriginalDstFallbacks(b *bootstrapv3.Bootstrap, fail func(string, ...any)) {
	for _, l := range b.GetStaticResources().GetListeners() {
		if l.GetUseOriginalDst().GetValue() {
			fail("listener %s: use_original_dst restores the client's destination, which the ORIGINAL_DST cluster uses when coord-extproc's metadata is absent", l.GetName())
		}
		for _, lf := range l.GetListenerFilters() {
			if lf.GetName() == "envoy.filters.listener.original_dst" || lf.GetTypedConfig().GetTypeUrl() == "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst" {
				fail("listener %s: the original_dst listener filter restores the client's destination, which the ORIGINAL_DST cluster uses when coord-extproc's metadata is absent", l.GetName())
			}
		}
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				var hcm hcmv3.HttpConnectionManager
				if f.GetTypedConfig().UnmarshalTo(&hcm) != nil {
					if setsOriginalDst(f.GetTypedConfig()) {
						fail("listener %s: network filter %s sets %s, which the ORIGINAL_DST cluster prefers to coord-extproc's metadata", l.GetName(), f.GetName(), originalDstFilterState)
					}
					continue
				}
				for _, hf := range hcm.GetHttpFilters() {
					if setsOriginalDst(hf.GetTypedConfig()) {
						fail("listener %s: http filter %s sets %s, which the ORIGINAL_DST cluster prefers to coord-extproc's metadata", l.GetName(), hf.GetName(), originalDstFilterState)
					}
				}
			}
		}
	}
}

// setsOriginalDst: the filter's config names the filter state key (a
// string field serializes verbatim), whatever the filter type.
func setsOriginalDst(a *anypb.Any) bool {
	return a != nil && bytes.Contains(a.GetValue(), []byte(originalDstFilterState))
}
