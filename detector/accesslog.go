package detector

import (
	"errors"
	"io"
	"net"
	"strconv"
	"sync"

	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
)

// maxEntries bounds the entries read from one message; Envoy's shipped
// configs flush every entry on its own, so a larger batch is not Envoy's.
const maxEntries = 1000

// AccessLogServer is Envoy's gRPC access-log service
// (envoy.service.accesslog.v3.AccessLogService). The shipped configs send
// it the router's upstream_log, one entry per upstream attempt, filtered to
// connection-level failures; every entry flagged UF (connect failure or
// timeout) or UC (connection terminated) with an upstream address becomes
// a report. Anything else in the stream is ignored, so a 5xx from the pod
// is never a report even if a config sends it.
type AccessLogServer struct {
	accesslogv3.UnimplementedAccessLogServiceServer
	d         *Detector
	done      chan struct{}
	closeOnce sync.Once
}

// NewAccessLogServer returns the service feeding d.
func NewAccessLogServer(d *Detector) *AccessLogServer {
	return &AccessLogServer{d: d, done: make(chan struct{})}
}

// Close ends every stream: Envoy never ends them itself, so a graceful
// stop would otherwise wait for them until its grace ran out. Envoy opens
// a new stream (to another replica) with its next entry.
func (s *AccessLogServer) Close() { s.closeOnce.Do(func() { close(s.done) }) }

// StreamAccessLogs reads entries until Envoy ends the stream or Close.
// Envoy keeps one stream open per logger and worker and never expects an
// answer.
func (s *AccessLogServer) StreamAccessLogs(stream accesslogv3.AccessLogService_StreamAccessLogsServer) error {
	errc := make(chan error, 1)
	go func() { errc <- s.read(stream) }()
	select {
	case err := <-errc:
		return err
	case <-s.done:
		return nil // the reader ends with the stream's context
	}
}

func (s *AccessLogServer) read(stream accesslogv3.AccessLogService_StreamAccessLogsServer) error {
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&accesslogv3.StreamAccessLogsResponse{})
		}
		if err != nil {
			return err
		}
		entries := msg.GetHttpLogs().GetLogEntry()
		if len(entries) > maxEntries {
			s.d.stats.Dropped.Add(uint64(len(entries) - maxEntries))
			entries = entries[:maxEntries]
		}
		for _, e := range entries {
			if addr, ok := failedUpstream(e.GetCommonProperties()); ok {
				s.d.Report(addr)
			}
		}
	}
}

// failedUpstream returns the upstream address of an entry flagged as a
// connection-level failure.
func failedUpstream(cp *accesslogdatav3.AccessLogCommon) (string, bool) {
	f := cp.GetResponseFlags()
	if !f.GetUpstreamConnectionFailure() && !f.GetUpstreamConnectionTermination() {
		return "", false
	}
	sa := cp.GetUpstreamRemoteAddress().GetSocketAddress()
	if sa == nil || sa.GetAddress() == "" {
		return "", false
	}
	return net.JoinHostPort(sa.GetAddress(), strconv.FormatUint(uint64(sa.GetPortValue()), 10)), true
}
