package detector

import (
	"context"
	"net"
	"runtime"
	"strconv"
	"testing"

	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Report ingestion, per core: entries naming a live pod's address (a
// flood, or one failure logged by many requests), each read and reported;
// one probe per cooldown.
func BenchmarkReportIngest(b *testing.B) {
	f := newFake()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	addr := l.Addr().String()
	f.add("m", addr)
	d := New(Options{Registry: f})
	defer d.Close()
	e := entry(addr, &accesslogdatav3.ResponseFlags{UpstreamConnectionFailure: true}, 503)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if a, ok := failedUpstream(e.GetCommonProperties()); ok {
			d.Report(a)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "reports/s")
}

// The same over a real gRPC stream on loopback, 100 entries a message
// (Envoy sends one: this is the hostile batch), decode included.
func BenchmarkAccessLogStream(b *testing.B) {
	f := newFake()
	d := New(Options{Registry: f})
	defer d.Close()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	gs := grpc.NewServer()
	accesslogv3.RegisterAccessLogServiceServer(gs, NewAccessLogServer(d))
	go func() { _ = gs.Serve(lis) }()
	defer gs.Stop()
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Close()
	st, err := accesslogv3.NewAccessLogServiceClient(cc).StreamAccessLogs(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	batch := make([]*accesslogdatav3.HTTPAccessLogEntry, 100)
	for i := range batch {
		batch[i] = entry("10.0.0.1:"+strconv.Itoa(8000+i), &accesslogdatav3.ResponseFlags{UpstreamConnectionFailure: true}, 503)
	}
	msg := &accesslogv3.StreamAccessLogsMessage{LogEntries: &accesslogv3.StreamAccessLogsMessage_HttpLogs{
		HttpLogs: &accesslogv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: batch},
	}}
	b.ResetTimer()
	for range b.N {
		if err := st.Send(msg); err != nil {
			b.Fatal(err)
		}
	}
	want := uint64(b.N * len(batch))
	for d.Stats().Reports.Load() < want {
		runtime.Gosched()
	}
	b.ReportMetric(float64(want)/b.Elapsed().Seconds(), "reports/s")
}
