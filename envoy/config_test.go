package envoy

import (
	"os"
	"strings"
	"testing"

	authzv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_authz/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
)

func TestBootstrapsParseAndValidate(t *testing.T) {
	for _, file := range []string{"envoy.yaml", "envoy-ext-authz.yaml", "envoy-compose.yaml"} {
		t.Run(file, func(t *testing.T) {
			b, err := Load(file)
			if err != nil {
				t.Fatal(err)
			}
			// Loopback everywhere, the compose file too: the admin API can
			// change and stop Envoy, and 0.0.0.0 inside a container is
			// reachable from every container of its network.
			wantAdmin := "127.0.0.1"
			if a := b.GetAdmin().GetAddress().GetSocketAddress(); a.GetAddress() != wantAdmin || a.GetPortValue() != 9901 {
				t.Fatalf("admin on %v, want %s:9901", a, wantAdmin)
			}
			l := b.GetStaticResources().GetListeners()
			if len(l) != 1 || l[0].GetAddress().GetSocketAddress().GetPortValue() != 10000 {
				t.Fatalf("listeners %v", l)
			}
			var hcm hcmv3.HttpConnectionManager
			if err := l[0].GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(&hcm); err != nil {
				t.Fatal(err)
			}
			filters := hcm.GetHttpFilters()
			if len(filters) != 2 || filters[1].GetName() != "envoy.filters.http.router" {
				t.Fatalf("http filters %v", filters)
			}
			msg, err := filters[0].GetTypedConfig().UnmarshalNew()
			if err != nil {
				t.Fatal(err)
			}
			switch f := msg.(type) {
			case *extprocv3.ExternalProcessor:
				pm := f.GetProcessingMode()
				if !f.GetAllowModeOverride() || f.GetFailureModeAllow() || f.GetMessageTimeout().AsDuration().Milliseconds() != 200 ||
					pm.GetRequestHeaderMode() != extprocv3.ProcessingMode_SEND || pm.GetResponseHeaderMode() != extprocv3.ProcessingMode_SKIP ||
					pm.GetRequestBodyMode() != extprocv3.ProcessingMode_NONE || pm.GetResponseBodyMode() != extprocv3.ProcessingMode_NONE ||
					f.GetGrpcService().GetEnvoyGrpc().GetClusterName() != "coord_extproc" {
					t.Fatalf("ext_proc config %v", f)
				}
			case *authzv3.ExtAuthz:
				if f.GetFailureModeAllow() || f.GetGrpcService().GetEnvoyGrpc().GetClusterName() != "coord_extproc" || f.GetStatusOnError().GetCode() != 503 {
					t.Fatalf("ext_authz config %v", f)
				}
			default:
				t.Fatalf("first filter is %T", msg)
			}
			if err := CheckWiring(b, Defaults()); err != nil {
				t.Fatal(err)
			}
			pods := b.GetStaticResources().GetClusters()[0]
			if pods.GetName() != "pods" || pods.GetCleanupInterval() == nil || pods.GetCircuitBreakers() == nil || pods.GetLoadAssignment() != nil {
				t.Fatalf("pods cluster %v", pods)
			}
		})
	}
}

// Each wiring check fails on a copy that breaks it: the endpoint header
// or metadata key differs from the server's, metadata_key and
// receiving_namespaces disagree, the route's cluster is not the
// ORIGINAL_DST one, the cluster trusts a header, mutation rules drop the
// header, the gRPC port differs.
func TestWiringChecksFail(t *testing.T) {
	tests := []struct{ file, name, from, to, want string }{
		{"envoy.yaml", "metadata key path", "path: [{ key: x-gateway-destination-endpoint }]", "path: [{ key: x-endpoint }]", "metadata_key"},
		{"envoy.yaml", "metadata namespace", "metadata_key: { key: envoy.lb,", "metadata_key: { key: envoy.lb2,", "metadata_key"},
		{"envoy.yaml", "receiving namespaces", `untyped: ["envoy.lb"]`, `untyped: ["envoy.other"]`, "receiving_namespaces"},
		{"envoy.yaml", "route to the gRPC cluster", "cluster: pods", "cluster: coord_extproc", "not to an ORIGINAL_DST cluster"},
		{"envoy.yaml", "header trusted", "use_http_header: false", "use_http_header: true", "use_http_header"},
		{"envoy.yaml", "mutation rules", "allow_mode_override: true", "allow_mode_override: true\n              mutation_rules: { disallow_expression: { regex: 'x-gateway-.*' } }", "mutation_rules"},
		{"envoy.yaml", "grpc port", "port_value: 9002", "port_value: 9003", "9003"},
		{"envoy.yaml", "stream deadline", "envoy_grpc: { cluster_name: coord_extproc }", "envoy_grpc: { cluster_name: coord_extproc }\n                timeout: 30s", "grpc_service.timeout"},
		{"envoy-ext-authz.yaml", "ext_authz namespace", "metadata_key: { key: envoy.filters.http.ext_authz,", "metadata_key: { key: envoy.lb,", "metadata_key"},
		{"envoy-ext-authz.yaml", "ext_authz header", "path: [{ key: x-gateway-destination-endpoint }]", "path: [{ key: x-destination }]", "metadata_key"},
		{"envoy-compose.yaml", "compose header trusted", "use_http_header: false", "use_http_header: true", "use_http_header"},
		{"envoy.yaml", "no failure reports", "grpc.v3.HttpGrpcAccessLogConfig", "grpc.v3.TcpGrpcAccessLogConfig", "no upstream_log"},
		{"envoy.yaml", "failure reports batched", "buffer_size_bytes: 0", "buffer_size_bytes: 16384", "buffer_size_bytes"},
		{"envoy.yaml", "failure reports without UC", "flags: [UF, UC]", "flags: [UF]", "want exactly"},
		{"envoy.yaml", "failure reports of every 5xx", "flags: [UF, UC]", "flags: [UF, UC, UH]", "want exactly"},
		{"envoy.yaml", "failure reports unfiltered", "response_flag_filter: { flags: [UF, UC] }", "status_code_filter: { comparison: { op: GE, value: { default_value: 500, runtime_key: x } } }", "response_flag_filter"},
		{"envoy-ext-authz.yaml", "failure reports elsewhere", "envoy_grpc: { cluster_name: coord_extproc }\n                    buffer_size_bytes", "envoy_grpc: { cluster_name: pods }\n                    buffer_size_bytes", "want the coord-extproc cluster"},
		{"envoy-ext-authz.yaml", "default circuit breaker", "      - priority: DEFAULT\n        max_requests: 100000\n    load_assignment:\n      cluster_name: coord_extproc", "      - priority: HIGH\n        max_requests: 100000\n    load_assignment:\n      cluster_name: coord_extproc", "max_requests 1024"},
		{"envoy.yaml", "route timeout past the grace", "timeout: 30s", "timeout: 60s", "cut at a connection rotation"},
		{"envoy.yaml", "route without timeout", "timeout: 30s", "timeout: 0s", "cut at a connection rotation"},
		{"envoy-compose.yaml", "compose route timeout", "timeout: 30s", "timeout: 36s", "cut at a connection rotation"},
		{"envoy.yaml", "body sent without waiting", "allow_mode_override: true", "allow_mode_override: true\n              send_body_without_waiting_for_header_response: true", "send_body_without_waiting"},
		{"envoy.yaml", "override not allowed", "allow_mode_override: true", "allow_mode_override: true\n              allowed_override_modes: [{ response_header_mode: SEND, response_body_mode: BUFFERED }]", "allowed_override_modes lacks"},
		{"envoy.yaml", "full duplex without response headers", "request_body_mode: NONE\n                response_body_mode: NONE\n                request_trailer_mode: SKIP", "request_body_mode: FULL_DUPLEX_STREAMED\n                response_body_mode: NONE\n                request_trailer_mode: SEND", "without response_header_mode SEND"},
		{"envoy.yaml", "route-level full duplex without response headers", "                  timeout: 30s\n", "                  timeout: 30s\n                typed_per_filter_config:\n                  envoy.filters.http.ext_proc:\n                    \"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute\n                    overrides: { processing_mode: { request_body_mode: FULL_DUPLEX_STREAMED, request_trailer_mode: SEND } }\n", "ExtProcPerRoute"},
		{"envoy.yaml", "gRPC requests capped", "max_requests: 100000", "max_requests: 1000", "max_requests 1000"},
		{"envoy-compose.yaml", "compose failure reports v2", "transport_api_version: V3", "transport_api_version: AUTO", "V3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			orig, err := os.ReadFile(tt.file)
			if err != nil {
				t.Fatal(err)
			}
			broken := strings.Replace(string(orig), tt.from, tt.to, 1)
			if broken == string(orig) {
				t.Fatalf("%q not found in %s", tt.from, tt.file)
			}
			b, err := Parse([]byte(broken))
			if err != nil {
				t.Fatalf("the broken copy must still parse: %v", err)
			}
			if err := CheckWiring(b, Defaults()); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tt.want)
			}
		})
	}
	// And against a server whose endpoint header differs from the files'.
	b, err := Load("envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	w := Defaults()
	w.EndpointHeader = "x-other-endpoint"
	if err := CheckWiring(b, w); err == nil || !strings.Contains(err.Error(), "x-other-endpoint") {
		t.Fatalf("a different server header passed: %v", err)
	}
}

// A typo in a field name, an unknown enum value, an unresolvable @type or
// a broken validation rule must each fail: the test above is not vacuous.
func TestBrokenCopiesFail(t *testing.T) {
	orig, err := os.ReadFile("envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct{ name, from, to, want string }{
		{"field typo", "allow_mode_override: true", "allow_mode_overide: true", "allow_mode_overide"},
		{"enum typo", "response_header_mode: SKIP", "response_header_mode: SKIPPED", "SKIPPED"},
		{"unknown typed_config", "envoy.extensions.filters.http.router.v3.Router", "envoy.extensions.filters.http.router.v3.Routr", "Routr"},
		{"validation rule", "port_value: 9002", "port_value: 99999", "PortValue"},
		{"nested typo", "use_http_header: false", "use_http_headers: false", "use_http_headers"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			broken := strings.Replace(string(orig), tt.from, tt.to, 1)
			if broken == string(orig) {
				t.Fatalf("%q not found in envoy.yaml", tt.from)
			}
			_, err := Parse([]byte(broken))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one mentioning %q", err, tt.want)
			}
		})
	}
	if _, err := Parse(orig); err != nil {
		t.Fatal(err)
	}
}

// Envoy files ext_authz metadata under the fixed name
// envoy.filters.http.ext_authz whatever the filter is named (ext_authz.cc,
// Filter::onComplete): a renamed filter (as Envoy Gateway names them) keeps
// working with the shipped metadata_key, and a metadata_key following the
// filter's own name is refused, since Envoy would answer 503.
func TestAuthzNamespaceIsFixed(t *testing.T) {
	orig, err := os.ReadFile("envoy-ext-authz.yaml")
	if err != nil {
		t.Fatal(err)
	}
	renamed := strings.Replace(string(orig), "- name: envoy.filters.http.ext_authz\n", "- name: envoy.filters.http.ext_authz/coord\n", 1)
	if renamed == string(orig) {
		t.Fatal("filter name not found")
	}
	b, err := Parse([]byte(renamed))
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckWiring(b, Defaults()); err != nil {
		t.Fatalf("renamed filter, fixed metadata key: %v", err)
	}
	following := strings.Replace(renamed, "metadata_key: { key: envoy.filters.http.ext_authz,", "metadata_key: { key: envoy.filters.http.ext_authz/coord,", 1)
	if b, err = Parse([]byte(following)); err != nil {
		t.Fatal(err)
	}
	if err := CheckWiring(b, Defaults()); err == nil || !strings.Contains(err.Error(), "metadata_key") {
		t.Fatalf("metadata_key under the filter's own name: %v, want it refused", err)
	}
}

// The server's two overrides listed in allowed_override_modes, and a
// full-duplex route that sends the response headers, pass: the checks
// above refuse only what cannot bind.
func TestLifecycleModesAllowed(t *testing.T) {
	orig, err := os.ReadFile("envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for name, edit := range map[string][2]string{
		"both overrides allowed":                        {"allow_mode_override: true", "allow_mode_override: true\n              allowed_override_modes:\n              - { response_header_mode: SEND, request_trailer_mode: SKIP, response_trailer_mode: SKIP }\n              - { response_header_mode: SEND, response_body_mode: BUFFERED, request_trailer_mode: SKIP, response_trailer_mode: SKIP }"},
		"route-level full duplex with response headers": {"                  timeout: 30s\n", "                  timeout: 30s\n                typed_per_filter_config:\n                  envoy.filters.http.ext_proc:\n                    \"@type\": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute\n                    overrides: { processing_mode: { request_body_mode: FULL_DUPLEX_STREAMED, request_trailer_mode: SEND, response_header_mode: SEND } }\n"},
	} {
		t.Run(name, func(t *testing.T) {
			edited := strings.Replace(string(orig), edit[0], edit[1], 1)
			if edited == string(orig) {
				t.Fatalf("%q not found", edit[0])
			}
			b, err := Parse([]byte(edited))
			if err != nil {
				t.Fatal(err)
			}
			if err := CheckWiring(b, Defaults()); err != nil {
				t.Fatal(err)
			}
		})
	}
}
