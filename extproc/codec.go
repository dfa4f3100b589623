package extproc

import (
	"unicode/utf8"
	"unsafe"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/encoding"
	gproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// Codec is the server's gRPC codec: grpc-go's proto codec, except that
// the message every decision starts with — a ProcessingRequest carrying
// request headers — is decoded in one pass with a handful of allocations
// (all header values share one arena) instead of several per header.
// Anything else, or any field that pass does not know, is left to
// proto.Unmarshal, so the result is always what proto.Unmarshal gives
// (FuzzCodecMatchesProto checks it).
type Codec struct{ std encoding.CodecV2 }

// NewCodec returns the codec; install it with grpc.ForceServerCodecV2.
func NewCodec() Codec { return Codec{std: encoding.GetCodecV2(gproto.Name)} }

// Name is the content subtype it serves.
func (Codec) Name() string { return gproto.Name }

// Marshal is the standard codec's.
func (c Codec) Marshal(v any) (mem.BufferSlice, error) { return c.std.Marshal(v) }

// Unmarshal decodes data into v.
func (c Codec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(*extprocv3.ProcessingRequest)
	if !ok {
		return c.std.Unmarshal(data, v)
	}
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	b := buf.ReadOnlyData()
	if decodeRequestHeaders(b, m) {
		return nil
	}
	proto.Reset(m)
	return proto.Unmarshal(b, m)
}

// decodeRequestHeaders fills m from b when b holds only fields it knows
// (request_headers with headers and end_of_stream, protocol_config,
// observability_mode), each message field once, with valid UTF-8 where
// proto3 requires it; otherwise it reports false and m is to be reset.
func decodeRequestHeaders(b []byte, m *extprocv3.ProcessingRequest) bool {
	var hdrs, pc []byte
	var seenHdrs, seenPC bool
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return false
		}
		b = b[n:]
		switch {
		case num == 2 && typ == protowire.BytesType && !seenHdrs:
			hdrs, n = protowire.ConsumeBytes(b)
			seenHdrs = true
		case num == 11 && typ == protowire.BytesType && !seenPC:
			pc, n = protowire.ConsumeBytes(b)
			seenPC = true
		case num == 10 && typ == protowire.VarintType:
			var v uint64
			v, n = protowire.ConsumeVarint(b)
			m.ObservabilityMode = v != 0
		default:
			return false
		}
		if n < 0 {
			return false
		}
		b = b[n:]
	}
	if !seenHdrs {
		return false
	}
	if seenPC {
		cfg, ok := decodeProtocolConfig(pc)
		if !ok {
			return false
		}
		m.ProtocolConfig = cfg
	}
	h, ok := decodeHTTPHeaders(hdrs)
	if !ok {
		return false
	}
	m.Request = &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: h}
	return true
}

func decodeProtocolConfig(b []byte) (*extprocv3.ProtocolConfiguration, bool) {
	pc := &extprocv3.ProtocolConfiguration{}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || typ != protowire.VarintType || num < 1 || num > 3 {
			return nil, false
		}
		v, m := protowire.ConsumeVarint(b[n:])
		if m < 0 {
			return nil, false
		}
		b = b[n+m:]
		switch num {
		case 1:
			pc.RequestBodyMode = filterv3.ProcessingMode_BodySendMode(int32(v))
		case 2:
			pc.ResponseBodyMode = filterv3.ProcessingMode_BodySendMode(int32(v))
		case 3:
			pc.SendBodyWithoutWaitingForHeaderResponse = v != 0
		}
	}
	return pc, true
}

// decodeHTTPHeaders decodes HttpHeaders in two passes: the first checks
// the shape and sizes everything, the second fills one slice of
// HeaderValues and one arena holding every key and value.
func decodeHTTPHeaders(b []byte) (*extprocv3.HttpHeaders, bool) {
	h := &extprocv3.HttpHeaders{}
	var hm []byte
	seenMap := false
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return nil, false
		}
		b = b[n:]
		switch {
		case num == 1 && typ == protowire.BytesType && !seenMap:
			hm, n = protowire.ConsumeBytes(b)
			seenMap = true
		case num == 3 && typ == protowire.VarintType:
			var v uint64
			v, n = protowire.ConsumeVarint(b)
			h.EndOfStream = v != 0
		default:
			return nil, false
		}
		if n < 0 {
			return nil, false
		}
		b = b[n:]
	}
	if !seenMap {
		return h, true
	}
	count, size, ok := walkHeaderMap(hm, nil)
	if !ok {
		return nil, false
	}
	fill := &headerFill{vals: make([]corev3.HeaderValue, count), arena: make([]byte, 0, size)}
	h.Headers = &corev3.HeaderMap{Headers: make([]*corev3.HeaderValue, count)}
	for i := range fill.vals {
		h.Headers.Headers[i] = &fill.vals[i]
	}
	walkHeaderMap(hm, fill)
	return h, true
}

// headerFill receives the second pass: the arena is never written after
// a string is made over it, which is what makes those strings safe.
type headerFill struct {
	vals  []corev3.HeaderValue
	arena []byte
	i     int
}

func (f *headerFill) str(s []byte) string {
	if len(s) == 0 {
		return ""
	}
	off := len(f.arena)
	f.arena = append(f.arena, s...)
	return unsafe.String(&f.arena[off], len(s))
}

func (f *headerFill) bytes(s []byte) []byte {
	if len(s) == 0 {
		return nil
	}
	off := len(f.arena)
	f.arena = append(f.arena, s...)
	return f.arena[off:len(f.arena):len(f.arena)]
}

// walkHeaderMap checks a HeaderMap (fill nil: counting headers and their
// bytes) or fills it.
func walkHeaderMap(b []byte, fill *headerFill) (count, size int, ok bool) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || num != 1 || typ != protowire.BytesType {
			return 0, 0, false
		}
		hv, m := protowire.ConsumeBytes(b[n:])
		if m < 0 {
			return 0, 0, false
		}
		b = b[n+m:]
		var key, value, raw []byte
		var seen [4]bool
		for len(hv) > 0 {
			fnum, ftyp, k := protowire.ConsumeTag(hv)
			if k < 0 || ftyp != protowire.BytesType || fnum < 1 || fnum > 3 || seen[fnum] {
				return 0, 0, false
			}
			seen[fnum] = true
			v, l := protowire.ConsumeBytes(hv[k:])
			if l < 0 {
				return 0, 0, false
			}
			hv = hv[k+l:]
			switch fnum {
			case 1:
				key = v
			case 2:
				value = v
			case 3:
				raw = v
			}
		}
		if fill == nil {
			if !utf8.Valid(key) || !utf8.Valid(value) {
				return 0, 0, false
			}
			count++
			size += len(key) + len(value) + len(raw)
			continue
		}
		hvp := &fill.vals[fill.i]
		fill.i++
		hvp.Key, hvp.Value, hvp.RawValue = fill.str(key), fill.str(value), fill.bytes(raw)
	}
	return count, size, true
}
