package extproc

import (
	"sync"
	"sync/atomic"
	"unicode/utf8"
	"unsafe"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/encoding"
	gproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// Codec is the server's gRPC codec: grpc-go's proto codec, except that
//   - the message every decision starts with — a ProcessingRequest
//     carrying request headers — is decoded in one pass with a handful of
//     allocations (all header values share one arena) instead of several
//     per header. Anything else, or any field that pass does not know, is
//     left to proto.Unmarshal, so the result is always what
//     proto.Unmarshal gives (FuzzCodecMatchesProto checks it);
//   - a frozen answer (Freeze) is sent as the bytes encoded when it was
//     frozen: a cached decision's answer is shared by every stream, so
//     encoding it each time would redo the same work.
type Codec struct {
	std    encoding.CodecV2
	frozen *frozenSet
}

// NewCodec returns the codec; install it with grpc.ForceServerCodecV2.
func NewCodec() Codec {
	return Codec{std: encoding.GetCodecV2(gproto.Name), frozen: &frozenSet{}}
}

// Name is the content subtype it serves.
func (Codec) Name() string { return gproto.Name }

// Marshal sends a frozen message's encoding, else encodes v.
func (c Codec) Marshal(v any) (mem.BufferSlice, error) {
	if c.frozen != nil && freezable(v) {
		if b, ok := c.frozen.m.Load(v); ok {
			// A new one-element slice: gRPC owns the slice, the bytes are shared
			// and only read (SliceBuffer's Free does nothing).
			return mem.BufferSlice{b.(mem.Buffer)}, nil
		}
	}
	return c.std.Marshal(v)
}

// Freeze encodes m (a ProcessingResponse or CheckResponse) once and sends
// those bytes whenever m itself is sent.
// The invariant callers keep: m is never changed after Freeze (every
// frozen answer is a shared, immutable one). The set is bounded; past
// maxFrozen it starts over, and an answer no longer in it is encoded
// again as usual.
func (c Codec) Freeze(m proto.Message) {
	if c.frozen == nil || !freezable(m) {
		return
	}
	b, err := proto.Marshal(m)
	if err != nil {
		return // encoded on each send instead, where the error is reported
	}
	if c.frozen.n.Add(1) > maxFrozen {
		c.frozen.m.Clear()
		c.frozen.n.Store(1)
	}
	c.frozen.m.Store(m, mem.Buffer(mem.SliceBuffer(b)))
}

// freezable: the answers the server shares (pointers, so a set key).
func freezable(v any) bool {
	switch v.(type) {
	case *extprocv3.ProcessingResponse, *authv3.CheckResponse:
		return true
	}
	return false
}

// maxFrozen bounds the frozen set (twice the answer caches' bound: an
// ext_proc and an ext_authz answer per member and address).
const maxFrozen = 2 * maxAnswers

// frozenSet maps a frozen message (by pointer) to its encoding.
type frozenSet struct {
	m sync.Map
	n atomic.Int64
}

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

// field is one length-delimited or varint field off the wire.
type field struct {
	num    protowire.Number
	typ    protowire.Type
	bytes  []byte
	varint uint64
}

// nextField reads the field at the head of b; other wire types (and
// malformed input) are not ok, which sends the message to
// proto.Unmarshal.
func nextField(b []byte) (field, []byte, bool) {
	num, typ, n := protowire.ConsumeTag(b)
	if n < 0 {
		return field{}, nil, false
	}
	f := field{num: num, typ: typ}
	var m int
	switch typ {
	case protowire.BytesType:
		f.bytes, m = protowire.ConsumeBytes(b[n:])
	case protowire.VarintType:
		f.varint, m = protowire.ConsumeVarint(b[n:])
	default:
		return field{}, nil, false
	}
	if m < 0 {
		return field{}, nil, false
	}
	return f, b[n+m:], true
}

// decodeRequestHeaders fills m from b when b holds only fields it knows
// (request_headers with headers and end_of_stream, protocol_config,
// observability_mode), each message field once, with valid UTF-8 where
// proto3 requires it; otherwise it reports false and m is to be reset.
func decodeRequestHeaders(b []byte, m *extprocv3.ProcessingRequest) bool {
	var hdrs, pc field // num 0: not seen
	for len(b) > 0 {
		f, rest, ok := nextField(b)
		if !ok {
			return false
		}
		b = rest
		switch {
		case f.num == 2 && f.typ == protowire.BytesType && hdrs.num == 0:
			hdrs = f
		case f.num == 11 && f.typ == protowire.BytesType && pc.num == 0:
			pc = f
		case f.num == 10 && f.typ == protowire.VarintType:
			m.ObservabilityMode = f.varint != 0
		default:
			return false
		}
	}
	if hdrs.num == 0 {
		return false
	}
	if pc.num != 0 {
		cfg, ok := decodeProtocolConfig(pc.bytes)
		if !ok {
			return false
		}
		m.ProtocolConfig = cfg
	}
	h, ok := decodeHTTPHeaders(hdrs.bytes)
	if !ok {
		return false
	}
	m.Request = &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: h}
	return true
}

func decodeProtocolConfig(b []byte) (*extprocv3.ProtocolConfiguration, bool) {
	pc := &extprocv3.ProtocolConfiguration{}
	for len(b) > 0 {
		f, rest, ok := nextField(b)
		if !ok || f.typ != protowire.VarintType {
			return nil, false
		}
		b = rest
		switch f.num {
		case 1:
			pc.RequestBodyMode = filterv3.ProcessingMode_BodySendMode(int32(f.varint))
		case 2:
			pc.ResponseBodyMode = filterv3.ProcessingMode_BodySendMode(int32(f.varint))
		case 3:
			pc.SendBodyWithoutWaitingForHeaderResponse = f.varint != 0
		default:
			return nil, false
		}
	}
	return pc, true
}

// decodeHTTPHeaders decodes HttpHeaders in two passes: the first checks
// the shape and sizes everything, the second fills one slice of
// HeaderValues and one arena holding every key and value.
func decodeHTTPHeaders(b []byte) (*extprocv3.HttpHeaders, bool) {
	h := &extprocv3.HttpHeaders{}
	var hm field // num 0: not seen
	for len(b) > 0 {
		f, rest, ok := nextField(b)
		if !ok {
			return nil, false
		}
		b = rest
		switch {
		case f.num == 1 && f.typ == protowire.BytesType && hm.num == 0:
			hm = f
		case f.num == 3 && f.typ == protowire.VarintType:
			h.EndOfStream = f.varint != 0
		default:
			return nil, false
		}
	}
	if hm.num == 0 {
		return h, true
	}
	count, size, ok := walkHeaderMap(hm.bytes, nil)
	if !ok {
		return nil, false
	}
	fill := &headerFill{vals: make([]corev3.HeaderValue, count), arena: make([]byte, 0, size)}
	h.Headers = &corev3.HeaderMap{Headers: make([]*corev3.HeaderValue, count)}
	for i := range fill.vals {
		h.Headers.Headers[i] = &fill.vals[i]
	}
	walkHeaderMap(hm.bytes, fill)
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

// lenField reads a length-delimited field with a one-byte tag (field
// numbers 1 to 15, all a HeaderMap holds) at the head of b. It is the
// inner loop of every decision, hence no protowire call for the common
// one-byte length; anything else is not ok, and proto.Unmarshal decides.
func lenField(b []byte) (num byte, val, rest []byte, ok bool) {
	if len(b) < 2 || b[0]&0x80 != 0 || b[0]&7 != byte(protowire.BytesType) {
		return 0, nil, nil, false
	}
	n, i := uint64(b[1]), 2
	if n >= 0x80 {
		var m int
		if n, m = protowire.ConsumeVarint(b[1:]); m < 0 {
			return 0, nil, nil, false
		}
		i = 1 + m
	}
	if n > uint64(len(b)-i) {
		return 0, nil, nil, false
	}
	end := i + int(n)
	return b[0] >> 3, b[i:end], b[end:], true
}

// walkHeaderMap checks a HeaderMap (fill nil: counting headers and their
// bytes) or fills it.
func walkHeaderMap(b []byte, fill *headerFill) (count, size int, ok bool) {
	for len(b) > 0 {
		num, hv, rest, ok := lenField(b)
		if !ok || num != 1 {
			return 0, 0, false
		}
		b = rest
		var parts [4][]byte // key, value, raw_value by field number
		var seen [4]bool
		for len(hv) > 0 {
			num, v, rest, ok := lenField(hv)
			if !ok || num < 1 || num > 3 || seen[num] {
				return 0, 0, false
			}
			hv, seen[num], parts[num] = rest, true, v
		}
		key, value, raw := parts[1], parts[2], parts[3]
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
