package loadgen

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// h2conn is one HTTP/2 connection driven frame by frame, the way Envoy's
// gRPC client uses one for ext_proc: a stream per HTTP request, the
// request headers sent without half-closing, the stream held while the
// upstream works, then END_STREAM and RST_STREAM(CANCEL) together; it
// never waits for the server's end of stream. grpc-go's client cannot put
// those two frames on the wire together, hence the framer.
//
// Like Envoy's codec, it coalesces: frames built while a write is on the
// wire go out together in the next one (Envoy flushes a connection's
// buffer once per event-loop pass), and reads take whatever has arrived.
type h2conn struct {
	conn      net.Conn
	wmu       sync.Mutex // frame building, out and the HPACK encoder
	fr        *http2.Framer
	out       *pending // frames built, not yet written
	kick      chan struct{}
	done      chan struct{} // closed by close: the write loop ends
	closeOnce sync.Once
	henc      *hpack.Encoder
	hbuf      bytes.Buffer
	next      uint32 // next stream id

	mu       sync.Mutex
	streams  map[uint32]chan h2event
	verdicts map[string]string // answer bytes → routedKind, see verdict
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
	h := &h2conn{conn: c, next: 1, streams: map[uint32]chan h2event{}, verdicts: map[string]string{}, sendWin: 65535, out: &pending{}, kick: make(chan struct{}, 1), done: make(chan struct{})}
	h.winCond = sync.NewCond(&h.mu)
	h.fr = http2.NewFramer(h.out, bufio.NewReaderSize(c, 64<<10))
	h.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	h.fr.MaxHeaderListSize = 1 << 20
	h.henc = hpack.NewEncoder(&h.hbuf)
	if _, err := io.WriteString(c, http2.ClientPreface); err != nil {
		c.Close()
		return nil, err
	}
	// Envoy's defaults for its gRPC client's connection: large windows.
	_ = h.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 24}, http2.Setting{ID: http2.SettingEnablePush, Val: 0})
	_ = h.fr.WriteWindowUpdate(0, 1<<28)
	if _, err := c.Write(h.out.take(nil)); err != nil {
		c.Close()
		return nil, err
	}
	go h.read()
	go h.writeLoop()
	return h, nil
}

// pending collects built frames; the write loop takes them all at once.
type pending struct{ b []byte }

func (p *pending) Write(b []byte) (int, error) { p.b = append(p.b, b...); return len(b), nil }

// take returns what is pending and starts over in spare.
func (p *pending) take(spare []byte) []byte {
	b := p.b
	p.b = spare[:0]
	return b
}

// flush hands what is built to the write loop; the caller holds wmu.
func (h *h2conn) flush() {
	select {
	case h.kick <- struct{}{}:
	default: // a write is already due
	}
}

func (h *h2conn) writeLoop() {
	var spare []byte
	for {
		select {
		case <-h.kick:
		case <-h.done:
			return
		}
		h.wmu.Lock()
		b := h.out.take(spare)
		h.wmu.Unlock()
		// b is never the buffer now collecting frames: it becomes the spare.
		if len(b) > 0 {
			if _, err := h.conn.Write(b); err != nil {
				h.fail(err)
				return
			}
		}
		spare = b
	}
}

func (h *h2conn) close() { h.conn.Close(); h.closeOnce.Do(func() { close(h.done) }) }

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
		h.flush()
	}
}

// exchange runs one request: headers out, the answer back (the measured
// decision), hold, then END_STREAM + RST_STREAM(CANCEL) in one write.
func (h *h2conn) exchange(ctx context.Context, frame []byte, hold time.Duration, endpoint string) string {
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
	err := h.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: h.hbuf.Bytes(), EndHeaders: true})
	if err == nil {
		err = h.fr.WriteData(id, false, frame)
	}
	if err == nil {
		h.flush()
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
		return h.verdict(ev.msg, endpoint)
	}
}

// maxVerdicts bounds the verdict memo; answers are one per pod, mostly.
const maxVerdicts = 4096

// verdict is routedKind of an answer. Equal bytes are an equal answer,
// so each distinct answer is decoded once: the load generator then costs
// little beside the server it measures (decoding the metadata Struct in
// Go costs more than the server's whole decision).
func (h *h2conn) verdict(msg []byte, endpoint string) string {
	h.mu.Lock()
	kind, ok := h.verdicts[string(msg)]
	h.mu.Unlock()
	if ok {
		return kind
	}
	var resp extprocv3.ProcessingResponse
	if err := proto.Unmarshal(msg, &resp); err != nil {
		return "decode"
	}
	kind = routedKind(&resp, endpoint)
	h.mu.Lock()
	if len(h.verdicts) < maxVerdicts {
		h.verdicts[string(msg)] = kind
	}
	h.mu.Unlock()
	return kind
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

// requestFrame is the request-headers message Envoy sends for req
// (ProcessingRequest.request_headers: the headers as raw_value, end of
// stream), gRPC-framed. Encoded field by field, not through proto.Marshal,
// to keep the load generator's own cost low; TestRequestFrame checks it
// decodes to the message it stands for.
func requestFrame(req Request) []byte {
	var hm []byte
	header := func(k, v string) {
		hv := protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), k)
		hv = protowire.AppendString(protowire.AppendTag(hv, 3, protowire.BytesType), v)
		hm = protowire.AppendBytes(protowire.AppendTag(hm, 1, protowire.BytesType), hv)
	}
	header(":method", req.Method)
	header(":path", req.Path)
	header(":scheme", "http")
	for _, h := range req.Headers {
		header(h[0], h[1])
	}
	hh := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), hm)
	hh = protowire.AppendVarint(protowire.AppendTag(hh, 3, protowire.VarintType), 1)
	frame := protowire.AppendBytes(protowire.AppendTag(make([]byte, 5, 5+len(hh)+4), 2, protowire.BytesType), hh)
	binary.BigEndian.PutUint32(frame[1:5], uint32(len(frame)-5))
	return frame
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
		return conns[conn].exchange(ctx, requestFrame(req), cfg.Hold, cfg.EndpointHeader)
	}, closeAll, nil
}
