package main

import (
	"net/netip"

	"google.golang.org/protobuf/types/known/structpb"
)

// pickHost mirrors OriginalDstCluster::LoadBalancer::chooseHost
// (source/extensions/clusters/original_dst/original_dst_cluster.cc):
// metadata first (metadataOverrideHost: metadata_key's namespace, then its
// path through nested structs, a string or the first of a list), then —
// only with use_http_header — the request header (requestOverrideHost,
// first value only: "an implicitly untrusted header"), each parsed as an
// IP:port literal (parseInternetAddressAndPortNoThrow), the port replaced
// by upstream_port_override when set. No usable value: no host, and the
// router answers 503 "no healthy upstream".
func (pc *podCluster) pickHost(h headerMap, metadata map[string]*structpb.Struct) (netip.AddrPort, bool) {
	if pc.metadataNS != "" {
		if s, ok := metadataString(metadata[pc.metadataNS], pc.metadataPath); ok {
			if ap, err := netip.ParseAddrPort(s); err == nil && ap.Addr().Zone() == "" {
				return pc.override(ap), true
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
	return pc.override(ap), true
}

func (pc *podCluster) override(ap netip.AddrPort) netip.AddrPort {
	if pc.portOverride != 0 {
		return netip.AddrPortFrom(ap.Addr(), uint16(pc.portOverride))
	}
	return ap
}

// metadataString walks path through nested structs (Config::Metadata::
// metadataValue) to a string, or the first string of a list.
func metadataString(s *structpb.Struct, path []string) (string, bool) {
	if s == nil || len(path) == 0 {
		return "", false
	}
	v := s.GetFields()[path[0]]
	for _, k := range path[1:] {
		v = v.GetStructValue().GetFields()[k]
	}
	if lv := v.GetListValue(); lv != nil && len(lv.GetValues()) > 0 {
		v = lv.GetValues()[0]
	}
	str, ok := v.GetKind().(*structpb.Value_StringValue)
	if !ok {
		return "", false
	}
	return str.StringValue, true
}
