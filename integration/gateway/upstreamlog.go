package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	accesslogcfgv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	grpclogv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"
)

// Response flags of one upstream attempt, as the router sets them
// (router.cc Filter::streamResetReasonToResponseFlag: a local or remote
// connection failure and a connect timeout are UF, a connection
// termination UC; upstream_request.cc UpstreamRequest::onPoolFailure
// records the host first, so the entry names the address).
const (
	flagUF = "UF" // upstream connection failure (refused, connect timeout)
	flagUC = "UC" // upstream connection termination
	flagUT = "UT" // upstream request timeout (route timeout)
	flagDC = "DC" // downstream connection termination (client went away)
)

// upstreamLog plays the router's upstream_log with the http_grpc logger
// (envoy.access_loggers.http_grpc) and a response_flag_filter: one entry
// per upstream attempt (UpstreamRequest's destructor logs it), kept if any
// configured flag is set (ResponseFlagFilter::evaluate). The logger
// (source/extensions/access_loggers/common/grpc_access_logger.h) opens its
// stream on the first entry, whose message carries the identifier (node
// and log_name), flushes when the buffered size reaches buffer_size_bytes
// (0: every entry at once) or every buffer_flush_interval, drops entries
// while the stream is backed up (canLogMore), and after a stream error
// opens a new one with the next entry; entries in between are lost.
type upstreamLog struct {
	flags    []string
	logName  string
	batch    uint32        // buffer_size_bytes: 0 sends every entry at once
	interval time.Duration // buffer_flush_interval (default 1 s)
	client   accesslogv3.AccessLogServiceClient
	entries  chan *accesslogdatav3.HTTPAccessLogEntry
	log      *slog.Logger
}

// readUpstreamLog reads the router's typed_config. Only what it plays is
// accepted: the http_grpc logger, a response_flag_filter, and the common
// settings below.
func readUpstreamLog(router *anypb.Any, grpcCluster string) (*upstreamLog, error) {
	var rt routerv3.Router
	if err := router.UnmarshalTo(&rt); err != nil {
		return nil, fmt.Errorf("router: %w", err)
	}
	if err := unsupported(&rt, "upstream_log"); err != nil {
		return nil, err
	}
	switch n := len(rt.GetUpstreamLog()); {
	case n == 0:
		return nil, nil
	case n > 1:
		return nil, errors.New("router: the stand-in plays one upstream_log")
	}
	l := rt.GetUpstreamLog()[0]
	if err := unsupported(l, "name", "filter", "typed_config"); err != nil {
		return nil, err
	}
	ff, ok := l.GetFilter().GetFilterSpecifier().(*accesslogcfgv3.AccessLogFilter_ResponseFlagFilter)
	if !ok {
		return nil, errors.New("upstream_log: the stand-in plays a response_flag_filter only")
	}
	var cfg grpclogv3.HttpGrpcAccessLogConfig
	if err := l.GetTypedConfig().UnmarshalTo(&cfg); err != nil {
		return nil, fmt.Errorf("upstream_log: the stand-in plays envoy.access_loggers.http_grpc only: %w", err)
	}
	if err := unsupported(&cfg, "common_config"); err != nil {
		return nil, err
	}
	cc := cfg.GetCommonConfig()
	if err := unsupported(cc, "log_name", "grpc_service", "transport_api_version", "buffer_size_bytes", "buffer_flush_interval"); err != nil {
		return nil, err
	}
	if cc.GetTransportApiVersion() != corev3.ApiVersion_V3 {
		return nil, errors.New("upstream_log: transport_api_version must be V3") // Envoy refuses others
	}
	if c := cc.GetGrpcService().GetEnvoyGrpc().GetClusterName(); c != grpcCluster {
		return nil, fmt.Errorf("upstream_log: the stand-in sends access logs to the coord-extproc cluster only, not %q", c)
	}
	u := &upstreamLog{
		flags:    ff.ResponseFlagFilter.GetFlags(),
		logName:  cc.GetLogName(),
		batch:    16384, // PROTOBUF_GET_WRAPPED_OR_DEFAULT(config, buffer_size_bytes, 16384)
		interval: time.Second,
	}
	if b := cc.GetBufferSizeBytes(); b != nil {
		u.batch = b.GetValue()
	}
	if d := cc.GetBufferFlushInterval(); d != nil {
		u.interval = d.AsDuration()
	}
	return u, nil
}

// start connects the logger to the gRPC service and starts its loop.
func (u *upstreamLog) start(ctx context.Context, conn grpc.ClientConnInterface, log *slog.Logger) {
	u.client = accesslogv3.NewAccessLogServiceClient(conn)
	u.entries = make(chan *accesslogdatav3.HTTPAccessLogEntry, 1024)
	u.log = log
	go u.run(ctx)
}

// attempt logs one upstream attempt to addr that ended with flag ("" for
// none), if the filter keeps it.
func (u *upstreamLog) attempt(addr netip.AddrPort, cluster, method, path, flag string) {
	if u == nil || !u.keeps(flag) {
		return
	}
	e := &accesslogdatav3.HTTPAccessLogEntry{
		CommonProperties: &accesslogdatav3.AccessLogCommon{
			UpstreamRemoteAddress: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
				Address: addr.Addr().String(), PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(addr.Port())},
			}}},
			UpstreamCluster: cluster,
			ResponseFlags: &accesslogdatav3.ResponseFlags{
				UpstreamConnectionFailure:       flag == flagUF,
				UpstreamConnectionTermination:   flag == flagUC,
				UpstreamRequestTimeout:          flag == flagUT,
				DownstreamConnectionTermination: flag == flagDC,
			},
		},
		Request: &accesslogdatav3.HTTPRequestProperties{RequestMethod: corev3.RequestMethod(corev3.RequestMethod_value[method]), Path: path},
	}
	select {
	case u.entries <- e:
	default: // backed up: dropped (logs_dropped)
	}
}

// keeps is ResponseFlagFilter::evaluate: with flags configured, any of
// them; with none, any flag at all.
func (u *upstreamLog) keeps(flag string) bool {
	if flag == "" {
		return false
	}
	return len(u.flags) == 0 || slices.Contains(u.flags, flag)
}

func (u *upstreamLog) run(ctx context.Context) {
	var stream accesslogv3.AccessLogService_StreamAccessLogsClient
	var pending []*accesslogdatav3.HTTPAccessLogEntry
	size := 0
	closed := make(chan accesslogv3.AccessLogService_StreamAccessLogsClient, 1)
	t := time.NewTicker(u.interval)
	defer t.Stop()
	flush := func() {
		if len(pending) == 0 {
			return
		}
		msg := &accesslogv3.StreamAccessLogsMessage{LogEntries: &accesslogv3.StreamAccessLogsMessage_HttpLogs{
			HttpLogs: &accesslogv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: pending},
		}}
		if stream == nil {
			s, err := u.client.StreamAccessLogs(ctx)
			if err != nil {
				u.log.Debug("upstream_log: cannot open the access-log stream; entries dropped", "err", err)
				pending, size = nil, 0
				return
			}
			stream = s
			// The server's end of the stream (onRemoteClose) drops it at
			// once; the next entry opens a new one.
			go func() {
				_ = s.RecvMsg(&accesslogv3.StreamAccessLogsResponse{})
				closed <- s
			}()
			msg.Identifier = &accesslogv3.StreamAccessLogsMessage_Identifier{Node: &corev3.Node{Id: "gateway-stand-in"}, LogName: u.logName}
		}
		if err := stream.Send(msg); err != nil {
			u.log.Debug("upstream_log: stream failed; entries dropped, a new stream with the next one", "err", err)
			stream = nil
		}
		pending, size = nil, 0
	}
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-u.entries:
			pending = append(pending, e)
			size += 64 // an entry's approximate size; any positive figure reaches a 0 threshold
			if uint32(size) >= u.batch {
				flush()
			}
		case s := <-closed:
			if s == stream {
				stream = nil
			}
		case <-t.C:
			flush()
		}
	}
}
