package detector

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

func entry(addr string, flags *accesslogdatav3.ResponseFlags, status uint32) *accesslogdatav3.HTTPAccessLogEntry {
	cp := &accesslogdatav3.AccessLogCommon{ResponseFlags: flags}
	if addr != "" {
		host, port, _ := net.SplitHostPort(addr)
		p, _ := strconv.Atoi(port)
		cp.UpstreamRemoteAddress = &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(p)},
		}}}
	}
	e := &accesslogdatav3.HTTPAccessLogEntry{CommonProperties: cp}
	if status != 0 {
		e.Response = &accesslogdatav3.HTTPResponseProperties{}
	}
	return e
}

func alsClient(t *testing.T, d *Detector) accesslogv3.AccessLogService_StreamAccessLogsClient {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	accesslogv3.RegisterAccessLogServiceServer(gs, NewAccessLogServer(d))
	go func() { _ = gs.Serve(l) }()
	t.Cleanup(gs.Stop)
	cc, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	st, err := accesslogv3.NewAccessLogServiceClient(cc).StreamAccessLogs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// Only connection-level failures (UF, UC) with an upstream address are
// reports: a pod's own 5xx, a local reset or an entry without address is
// not, whatever a config sends.
func TestAccessLogEntries(t *testing.T) {
	uf := &accesslogdatav3.ResponseFlags{UpstreamConnectionFailure: true}
	uc := &accesslogdatav3.ResponseFlags{UpstreamConnectionTermination: true}
	tests := []struct {
		name       string
		entry      func(addr string) *accesslogdatav3.HTTPAccessLogEntry
		wantMarked bool
	}{
		{"UF: connect failure", func(a string) *accesslogdatav3.HTTPAccessLogEntry { return entry(a, uf, 503) }, true},
		{"UC: connection terminated", func(a string) *accesslogdatav3.HTTPAccessLogEntry { return entry(a, uc, 503) }, true},
		{"a 500 from the pod", func(a string) *accesslogdatav3.HTTPAccessLogEntry { return entry(a, nil, 500) }, false},
		{"local reset (LR)", func(a string) *accesslogdatav3.HTTPAccessLogEntry {
			return entry(a, &accesslogdatav3.ResponseFlags{LocalReset: true}, 503)
		}, false},
		{"UF without an upstream address", func(string) *accesslogdatav3.HTTPAccessLogEntry { return entry("", uf, 503) }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFake()
			addr := refusing(t)
			f.add("m", addr)
			d, _ := newDetector(t, f, nil)
			st := alsClient(t, d)
			msg := &accesslogv3.StreamAccessLogsMessage{
				Identifier: &accesslogv3.StreamAccessLogsMessage_Identifier{Node: &corev3.Node{Id: "envoy"}, LogName: "coord_extproc_upstream_failures"},
				LogEntries: &accesslogv3.StreamAccessLogsMessage_HttpLogs{HttpLogs: &accesslogv3.StreamAccessLogsMessage_HTTPAccessLogEntries{
					LogEntry: []*accesslogdatav3.HTTPAccessLogEntry{tt.entry(addr)},
				}},
			}
			if err := st.Send(msg); err != nil {
				t.Fatal(err)
			}
			if tt.wantMarked {
				waitFor(t, 5*time.Second, "the member marked down", func() bool { return f.isMarked("m") })
				return
			}
			// A second, real failure report on the same stream proves the
			// first was read (and ignored) before it.
			other := refusing(t)
			f.add("witness", other)
			if err := st.Send(&accesslogv3.StreamAccessLogsMessage{LogEntries: &accesslogv3.StreamAccessLogsMessage_HttpLogs{
				HttpLogs: &accesslogv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: []*accesslogdatav3.HTTPAccessLogEntry{entry(other, uf, 503)}},
			}}); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 5*time.Second, "the witness marked down", func() bool { return f.isMarked("witness") })
			idle(t, d)
			if f.isMarked("m") {
				t.Error("marked down on an entry that is no connection failure")
			}
		})
	}
}

// A batch larger than Envoy ever sends is cut, counted, and costs nothing
// more.
func TestAccessLogHugeBatch(t *testing.T) {
	f := newFake()
	d, cd := newDetector(t, f, nil)
	st := alsClient(t, d)
	uf := &accesslogdatav3.ResponseFlags{UpstreamConnectionFailure: true}
	batch := make([]*accesslogdatav3.HTTPAccessLogEntry, 5000)
	for i := range batch {
		batch[i] = entry("127.0.0.1:"+strconv.Itoa(1+i%60000), uf, 503)
	}
	if err := st.Send(&accesslogv3.StreamAccessLogsMessage{LogEntries: &accesslogv3.StreamAccessLogsMessage_HttpLogs{
		HttpLogs: &accesslogv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: batch},
	}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the batch read", func() bool {
		return d.Stats().Reports.Load() == maxEntries
	})
	idle(t, d)
	if n := cd.n.Load(); n != 0 {
		t.Errorf("%d probes for addresses no member has", n)
	}
	if got := d.Stats().Dropped.Load(); got < uint64(len(batch)-maxEntries) {
		t.Errorf("dropped %d, want at least %d", got, len(batch)-maxEntries)
	}
}

// Close ends the streams Envoy keeps open, so a graceful stop does not
// wait for them until its grace runs out.
func TestAccessLogCloseEndsStreams(t *testing.T) {
	d, _ := newDetector(t, newFake(), nil)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	als := NewAccessLogServer(d)
	accesslogv3.RegisterAccessLogServiceServer(gs, als)
	go func() { _ = gs.Serve(l) }()
	t.Cleanup(gs.Stop)
	cc, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	st, err := accesslogv3.NewAccessLogServiceClient(cc).StreamAccessLogs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&accesslogv3.StreamAccessLogsMessage{}); err != nil {
		t.Fatal(err)
	}
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	als.Close()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("GracefulStop still waits for an access-log stream after Close")
	}
}
