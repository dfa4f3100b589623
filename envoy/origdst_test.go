package envoy

import (
	"os"
	"strings"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	sfsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/set_filter_state/v3"
	sfshttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/set_filter_state/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// Issue #25 finding 6: the ORIGINAL_DST cluster's other sources
// (chooseHost: filter state first, the restored local address last) are
// refused in every shipped bootstrap.
func TestOriginalDstFallbacksRefused(t *testing.T) {
	for _, file := range []string{"envoy.yaml", "envoy-ext-authz.yaml", "envoy-compose.yaml"} {
		orig, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for name, to := range map[string]string{
			"use_original_dst":    "    use_original_dst: true\n    filter_chains:",
			"original_dst filter": "    listener_filters:\n    - name: envoy.filters.listener.original_dst\n      typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst }\n    filter_chains:",
		} {
			t.Run(file+"/"+name, func(t *testing.T) {
				broken := strings.Replace(string(orig), "    filter_chains:", to, 1)
				if broken == string(orig) {
					t.Fatal("no filter_chains to edit")
				}
				b, err := Parse([]byte(broken))
				if err != nil {
					t.Fatalf("the broken copy must still parse: %v", err)
				}
				if err := CheckWiring(b, Defaults()); err == nil || !strings.Contains(err.Error(), "restores the client's destination") {
					t.Fatalf("err = %v", err)
				}
			})
		}
	}
	// A filter setting the filter state the cluster prefers to the metadata.
	b, err := Load("envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	sfs, err := anypb.New(&sfshttpv3.Config{OnRequestHeaders: []*sfsv3.FilterStateValue{{
		Key: &sfsv3.FilterStateValue_ObjectKey{ObjectKey: originalDstFilterState}, Value: &sfsv3.FilterStateValue_FormatString{},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	f := b.GetStaticResources().GetListeners()[0].GetFilterChains()[0].GetFilters()[0]
	var hcm hcmv3.HttpConnectionManager
	if err := f.GetTypedConfig().UnmarshalTo(&hcm); err != nil {
		t.Fatal(err)
	}
	hcm.HttpFilters = append([]*hcmv3.HttpFilter{{Name: "set-dst", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: sfs}}}, hcm.HttpFilters...)
	a, err := anypb.New(&hcm)
	if err != nil {
		t.Fatal(err)
	}
	f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: a}
	var errs []string
	checkOriginalDstFallbacks(b, func(format string, args ...any) { errs = append(errs, format) })
	if len(errs) != 1 || !strings.Contains(errs[0], "prefers to coord-extproc's metadata") {
		t.Fatalf("set_filter_state of %s: %v", originalDstFilterState, errs)
	}
}
