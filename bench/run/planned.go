package main

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// The work of SPEC §8 beside the request path, for the pods curve's
// control point: failure reports (§8.1) streamed as Envoy's access-log
// service does, naming pods that answer a connect (so the detector probes
// and clears, and routing is unchanged), and draining pods (§8.2), whose
// members poll their handoff queues.
const (
	reportedPods   = 10
	reportsPerTick = 10 // every 100 ms: 100 failure reports a second
	drainEvery     = 20 // one pod in 20 is draining
)

// failureReports listens on the first reportedPods pods' addresses and
// streams failure reports about them to addr until ctx ends.
func failureReports(ctx context.Context, addr string, port func(p int) int) (stop func(), err error) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	stop = func() { cancel(); wg.Wait() }
	var targets []*corev3.Address
	for p := range reportedPods {
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port(p)))
		if err != nil {
			continue // in use: that pod is simply not reported
		}
		wg.Go(func() {
			go func() { <-ctx.Done(); l.Close() }()
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		})
		targets = append(targets, &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port(p))}}}})
	}
	if len(targets) == 0 {
		stop()
		return nil, fmt.Errorf("failure reports: none of the first %d pods' ports could be listened on", reportedPods)
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		stop()
		return nil, err
	}
	st, err := accesslogv3.NewAccessLogServiceClient(cc).StreamAccessLogs(ctx)
	if err != nil {
		cc.Close()
		stop()
		return nil, fmt.Errorf("failure reports: %w", err)
	}
	wg.Go(func() {
		defer cc.Close()
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		uf := &accesslogdatav3.ResponseFlags{UpstreamConnectionFailure: true}
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			entries := make([]*accesslogdatav3.HTTPAccessLogEntry, reportsPerTick)
			for j := range entries {
				entries[j] = &accesslogdatav3.HTTPAccessLogEntry{CommonProperties: &accesslogdatav3.AccessLogCommon{
					ResponseFlags: uf, UpstreamRemoteAddress: targets[(i+j)%len(targets)]}}
			}
			msg := &accesslogv3.StreamAccessLogsMessage{LogEntries: &accesslogv3.StreamAccessLogsMessage_HttpLogs{
				HttpLogs: &accesslogv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: entries}}}
			if i == 0 {
				msg.Identifier = &accesslogv3.StreamAccessLogsMessage_Identifier{Node: &corev3.Node{Id: "bench"}, LogName: "failures"}
			}
			if st.Send(msg) != nil {
				return
			}
		}
	})
	return stop, nil
}

// drainSome marks one pod in drainEvery draining, as Member.Drain does
// before its handoffs: they keep their destinations and take no new one.
func (b *bench) drainSome(ctx context.Context, prefix string, n int) error {
	for p := 0; p < n; p += drainEvery {
		if err := b.client.Do(ctx, b.client.B().Hset().Key(fmt.Sprintf("%s:member:pod-%d", prefix, p)).FieldValue().FieldValue("draining", "1").Build()).Error(); err != nil {
			return fmt.Errorf("drain pod-%d: %w", p, err)
		}
	}
	return nil
}
