package envoy

import (
	"errors"
	"fmt"
	"slices"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	grpclogv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// FailureFlags are the response flags the failure reports carry (SPEC
// §8.1): a failed or timed-out connect, a connection cut. Envoy sets them
// per attempt (router.cc, Filter::streamResetReasonToResponseFlag).
var FailureFlags = []string{"UF", "UC"}

// FailureLog finds, in a router's typed_config, the upstream_log entry
// that sends failure reports over gRPC, with its filter's flags.
func FailureLog(router *anypb.Any) (*grpclogv3.HttpGrpcAccessLogConfig, []string, error) {
	var rt routerv3.Router
	if err := router.UnmarshalTo(&rt); err != nil {
		return nil, nil, fmt.Errorf("router: %w", err)
	}
	for _, l := range rt.GetUpstreamLog() {
		var cfg grpclogv3.HttpGrpcAccessLogConfig
		if l.GetTypedConfig().MessageIs(&cfg) {
			if err := l.GetTypedConfig().UnmarshalTo(&cfg); err != nil {
				return nil, nil, fmt.Errorf("router upstream_log %s: %w", l.GetName(), err)
			}
			return &cfg, l.GetFilter().GetResponseFlagFilter().GetFlags(), checkFilter(l)
		}
	}
	return nil, nil, errors.New("router: no upstream_log sends failure reports to coord-extproc (an http_grpc logger); a dead pod would fail its requests until its member record expires")
}

func checkFilter(l *accesslogv3.AccessLog) error {
	if _, ok := l.GetFilter().GetFilterSpecifier().(*accesslogv3.AccessLogFilter_ResponseFlagFilter); !ok {
		return fmt.Errorf("router upstream_log %s: want a response_flag_filter with flags %v, so only failed connections are sent", l.GetName(), FailureFlags)
	}
	return nil
}

// CheckFailureReports checks the router's failure reports: an http_grpc
// upstream_log to the coord-extproc cluster (API v3), filtered to exactly
// the failure flags, with no batching (every entry sent at once).
func CheckFailureReports(router *anypb.Any, grpcCluster string) error {
	cfg, flags, err := FailureLog(router)
	if err != nil {
		return err
	}
	var errs []error
	cc := cfg.GetCommonConfig()
	if got := cc.GetGrpcService().GetEnvoyGrpc().GetClusterName(); got != grpcCluster {
		errs = append(errs, fmt.Errorf("failure reports go to cluster %q, want the coord-extproc cluster %q", got, grpcCluster))
	}
	if cc.GetTransportApiVersion() != corev3.ApiVersion_V3 {
		errs = append(errs, errors.New("failure reports: transport_api_version must be V3"))
	}
	if b := cc.GetBufferSizeBytes(); b == nil || b.GetValue() != 0 {
		errs = append(errs, errors.New("failure reports: buffer_size_bytes must be 0 so every entry is sent at once (Envoy's default batches 16 KiB)"))
	}
	sorted := slices.Sorted(slices.Values(flags))
	if !slices.Equal(sorted, slices.Sorted(slices.Values(FailureFlags))) {
		errs = append(errs, fmt.Errorf("failure reports: response_flag_filter flags %v, want exactly %v", flags, FailureFlags))
	}
	return errors.Join(errs...)
}
