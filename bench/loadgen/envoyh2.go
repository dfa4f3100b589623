package loadgen

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/proto"
)

// h2conn is one HTTP/2 connection driven frame by frame, the way Envoy's
// gRPC client uses one for ext_proc: a stream per HTTP request, the
// request headers sent without half-closing, the stream held while the
// upstream works, then END_STREAM and RST_STREAM(CANCEL) together; it
// never waits for the server's end of stream. grpc-go's client cannot put
// those two frames on the wire together, hence the framer.
type h2conn struct {
	conn net.Conn
	wmu  sync.Mutex // frame writes and the HPACK encoder
	fr   *http2.Framer
	wbuf *bytes.Buffer // frames are built here and written in one go
	henc *hpack.Encoder
	hbuf bytes.Buffer
	next uint32 // next stream id

	mu       sync.Mutex
	streams  map[uint32]chan h2event
	dead     error
	sendWin  int64 // connection send window
	winCond  *sync.Cond
	consumed int // received DATA bytes not yet given back
}

type h2event struct {
	msg []byte // a whole gRPC message
	end bool   // the server ended the stream (trailers or RST)
	err string
}

func dialH2(ctx context.Context, addr string) (*h2conn, error) {
	c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	h := &h2conn{conn: c, next: 1, streams: map[uint32]chan h2event{}, sendWin: 65535, wbuf: &bytes.Buffer{}}
	h.winCond = sync.NewCond(&h.mu)
	h.fr = http2.NewFramer(h.wbuf, c)
	h.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	h.fr.MaxHeaderListSize = 1 << 20
	h.henc = hpack.NewEncoder(&h.hbuf)
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		c.Close()
		return nil, err
	}
	// Envoy's defaults for its gRPC client's connection: large windows.
	h.wmu.Lock()
	_ = h.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 24}, http2.Setting{ID: http2.SettingEnablePush, Val: 0})
	_ = h.fr.WriteWindowUpdate(0, 1<<28)
	err = h.flush()
	h.wmu.Unlock()
	if err != nil {
		c.Close()
		return nil, err
	}
	go h.read()
	return h, nil
}

func (h *h2conn) flush() error {
	_, err := h.conn.Write(h.wbuf.Bytes())
	h.wbuf.Reset()
	return err
}

func (h *h2conn) close() { h.conn.Close() }

func (h *h2conn) fail(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.dead == nil {
		h.dead = err
	}
	for id, ch := range h.streams {
		ch <- h2event{end: true, err: "connection"}
		delete(h.streams, id)
	}
	h.winCond.Broadcast()
}

// read dispatches the server's frames: answers and trailers to their
// streams, SETTINGS and PING acknowledged, flow control kept open.
func (h *h2conn) read() {
	msgs := map[uint32][]byte{}
	for {
		f, err := h.fr.ReadFrame()
		if err != nil {
			h.fail(err)
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				h.write(func() error { return h.fr.WriteSettingsAck() })
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				data := f.Data
				h.write(func() error { return h.fr.WritePing(true, data) })
			}
		case *http2.WindowUpdateFrame:
			if f.StreamID == 0 {
				h.mu.Lock()
				h.sendWin += int64(f.Increment)
				h.winCond.Broadcast()
				h.mu.Unlock()
			}
		case *http2.GoAwayFrame:
			h.fail(fmt.Errorf("goaway %v", f.ErrCode))
			return
		case *http2.MetaHeadersFrame:
			if f.StreamEnded() {
				status := f.PseudoValue("status")
				grpcStatus := ""
				for _, hf := range f.RegularFields() {
					if hf.Name == "grpc-status" {
						grpcStatus = hf.Value
					}
				}
				ev := h2event{end: true}
				if status != "" && status != "200" || grpcStatus != "" && grpcStatus != "0" {
					ev.err = "grpc_status_" + grpcStatus
				}
				h.deliver(f.StreamID, ev)
				delete(msgs, f.StreamID)
			}
		case *http2.DataFrame:
			h.giveBack(len(f.Data()))
			buf := append(msgs[f.StreamID], f.Data()...)
			for len(buf) >= 5 {
				n := int(binary.BigEndian.Uint32(buf[1:5]))
				if len(buf) < 5+n {
					break
				}
				h.deliver(f.StreamID, h2event{msg: append([]byte(nil), buf[5:5+n]...)})
				buf = buf[5+n:]
			}
			msgs[f.StreamID] = buf
			if f.StreamEnded() {
				h.deliver(f.StreamID, h2event{end: true})
				delete(msgs, f.StreamID)
			}
		case *http2.RSTStreamFrame:
			h.deliver(f.StreamID, h2event{end: true, err: "rst_" + f.ErrCode.String()})
			delete(msgs, f.StreamID)
		}
	}
}

func (h *h2conn) deliver(id uint32, ev h2event) {
	h.mu.Lock()
	ch := h.streams[id]
	if ev.end {
		delete(h.streams, id)
	}
	h.mu.Unlock()
	if ch != nil {
		select {
		case ch <- ev:
		default: // the exchange is gone or has what it needs
		}
	}
}

// giveBack returns received bytes to the server's send window in batches.
func (h *h2conn) giveBack(n int) {
	h.mu.Lock()
	h.consumed += n
	back := 0
	if h.consumed >= 1<<16 {
		back, h.consumed = h.consumed, 0
	}
	h.mu.Unlock()
	if back > 0 {
		h.write(func() error { return h.fr.WriteWindowUpdate(0, uint32(back)) })
	}
}

func (h *h2conn) write(build func() error) {
	h.wmu.Lock()
	defer h.wmu.Unlock()
	if err := build(); err == nil {
		_ = h.flush()
	}
}

// exchange runs one request: headers out, the answer back (the measured
// decision), hold, then END_STREAM + RST_STREAM(CANCEL) in one write.
func (h *h2conn) exchange(ctx context.Context, req *extprocv3.ProcessingRequest, hold time.Duration, endpoint string) string {
	body, err := proto.Marshal(req)
	if err != nil {
		return "marshal"
	}
	frame := make([]byte, 5+len(body))
	binary.BigEndian.PutUint32(frame[1:5], uint32(len(body)))
	copy(frame[5:], body)
	ch := make(chan h2event, 4)

	h.mu.Lock()
	for h.dead == nil && h.sendWin < int64(len(frame)) {
		h.winCond.Wait()
	}
	if h.dead != nil {
		h.mu.Unlock()
		return "connection"
	}
	h.sendWin -= int64(len(frame))
	h.mu.Unlock()

	h.wmu.Lock()
	id := h.next
	h.next += 2
	h.mu.Lock()
	h.streams[id] = ch
	h.mu.Unlock()
	h.hbuf.Reset()
	for _, f := range [][2]string{
		{":method", "POST"}, {":scheme", "http"}, {":path", "/envoy.service.ext_proc.v3.ExternalProcessor/Process"},
		{":authority", "coord_extproc"}, {"content-type", "application/grpc"}, {"te", "trailers"},
	} {
		_ = h.henc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	err = h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: h.hbuf.Bytes(), EndHeaders: true})
	if err == nil {
		err = h.fr.WriteData(id, false, frame)
	}
	if err == nil {
		err = h.flush()
	}
	h.wmu.Unlock()
	if err != nil {
		return "write"
	}
	kind := h.await(ctx, ch, endpoint)
	if hold > 0 && kind == "" {
		select {
		case <-time.After(hold):
		case <-ctx.Done():
		}
	}
	// Envoy's closeStream: end of stream and reset together.
	h.write(func() error {
		if err := h.fr.WriteData(id, true, nil); err != nil {
			return err
		}
		return h.fr.WriteRSTStream(id, http2.ErrCodeCancel)
	})
	h.mu.Lock()
	delete(h.streams, id)
	h.mu.Unlock()
	return kind
}

func (h *h2conn) await(ctx context.Context, ch chan h2event, endpoint string) string {
	select {
	case <-ctx.Done():
		return "timeout"
	case ev := <-ch:
		if ev.msg == nil {
			if ev.err != "" {
				return ev.err
			}
			return "no_answer"
		}
		var resp extprocv3.ProcessingResponse
		if err := proto.Unmarshal(ev.msg, &resp); err != nil {
			return "decode"
		}
		return routedKind(&resp, endpoint)
	}
}

// routedKind is "" for an answer that routes, else what it was.
func routedKind(resp *extprocv3.ProcessingResponse, endpoint string) string {
	if ir := resp.GetImmediateResponse(); ir != nil {
		return "immediate_" + strconv.Itoa(int(ir.GetStatus().GetCode()))
	}
	for _, h := range resp.GetRequestHeaders().GetResponse().GetHeaderMutation().GetSetHeaders() {
		if h.GetHeader().GetKey() == endpoint && len(h.GetHeader().GetRawValue()) > 0 {
			return ""
		}
	}
	return "not_routed"
}

// processingRequest is the request-headers message Envoy sends for req.
func processingRequest(req Request) *extprocv3.ProcessingRequest {
	hm := &corev3.HeaderMap{Headers: make([]*corev3.HeaderValue, 0, len(req.Headers)+3)}
	hm.Headers = append(hm.Headers,
		&corev3.HeaderValue{Key: ":method", RawValue: []byte(req.Method)},
		&corev3.HeaderValue{Key: ":path", RawValue: []byte(req.Path)},
		&corev3.HeaderValue{Key: ":scheme", RawValue: []byte("http")})
	for _, h := range req.Headers {
		hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: h[0], RawValue: []byte(h[1])})
	}
	return &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{
		RequestHeaders: &extprocv3.HttpHeaders{Headers: hm, EndOfStream: true},
	}}
}

// newEnvoyExchanger opens cfg.Conns Envoy-shaped connections before the
// clock starts (Envoy keeps its connections open).
func newEnvoyExchanger(cfg Config) (exchanger, func(), error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conns := make([]*h2conn, 0, cfg.Conns)
	closeAll := func() {
		for _, c := range conns {
			c.close()
		}
	}
	for range cfg.Conns {
		c, err := dialH2(ctx, cfg.Target)
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("loadgen: %s not reachable: %w", cfg.Target, err)
		}
		conns = append(conns, c)
	}
	return func(ctx context.Context, conn uint64, req Request) string {
		return conns[conn].exchange(ctx, processingRequest(req), cfg.Hold, cfg.EndpointHeader)
	}, closeAll, nil
}
