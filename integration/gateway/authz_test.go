package main

import (
	"strings"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Issue #25 finding 5: ext_authz request headers honour only the append
// flag; append_action (ADD_IF_ABSENT, OVERWRITE_IF_EXISTS) is not read.
func TestAuthzHeadersReadAppendOnly(t *testing.T) {
	for _, tc := range []struct {
		name string
		opt  *corev3.HeaderValueOption
		want string
	}{
		{"ADD_IF_ABSENT overwrites", &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: "x-a", Value: "new"}, AppendAction: corev3.HeaderValueOption_ADD_IF_ABSENT}, "new"},
		{"OVERWRITE_IF_EXISTS adds when absent too", &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: "x-b", Value: "new"}, AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS}, "new"},
		{"append true appends", &corev3.HeaderValueOption{Header: &corev3.HeaderValue{Key: "x-a", Value: "new"}, Append: wrapperspb.Bool(true)}, "client,new"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := headerMap{{"x-a", "client"}}
			applyAuthzHeader(&h, tc.opt)
			var got []string
			for _, hd := range h {
				if hd.key == tc.opt.GetHeader().GetKey() {
					got = append(got, hd.value)
				}
			}
			if strings.Join(got, ",") != tc.want {
				t.Fatalf("%s = %v, want %s", tc.opt.GetHeader().GetKey(), got, tc.want)
			}
		})
	}
}
