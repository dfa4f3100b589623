package main

import (
	"net/netip"

	"google.golang.org/protobuf/types/known/structpb"
)

// pickHost mirrors OriginalDstCluster::LoadBalancer::chooseHost
// (source/extensions/clusters/original_dst/original_dst_cluster.cc):
// metadata override first (metadataOverrideHost), then the request header
// (requestOverrideHost, first value only: "an implicitly untrusted
// header"), each parsed as an IP:port literal
// (parseInternetAddressAndPortNoThrow). No usable value: no host, and the
// router answers 503 "no healthy upstream".
func (pc *podCluster) pickHost(h headerMap, metadata map[string]*structpb.Struct) (netip.AddrPort, bool) {
	if pc.metadataNS != "" {
		if v := metadata[pc.metadataNS].GetFields()[pc.metadataKey]; v != nil {
			if lv := v.GetListValue(); lv != nil && len(lv.GetValues()) > 0 {
				v = lv.GetValues()[0]
			}
			if s, ok := v.GetKind().(*structpb.Value_StringValue); ok {
				if ap, err := netip.ParseAddrPort(s.StringValue); err == nil {
					return ap, true
				}
			}
		}
	}
	if pc.headerName == "" {
		return netip.AddrPort{}, false
	}
	v, ok := h.get(pc.headerName)
	if !ok {
		return netip.AddrPort{}, false
	}
	ap, err := netip.ParseAddrPort(v)
	if err != nil || ap.Addr().Zone() != "" {
		return netip.AddrPort{}, false
	}
	return ap, true
}
