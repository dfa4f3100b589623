package extproc

import (
	"bytes"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	filterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

func typicalRequest() *extprocv3.ProcessingRequest {
	req := reqHeaders("GET", "/tenants/t1/keys/k?x=1", "user-agent", "envoy", "accept", "*/*", "x-request-id", "0b7a-12",
		"x-forwarded-proto", "https", "x-destination-id", "t1", "x-gateway-destination-endpoint", "10.0.0.9:80")
	req.GetRequestHeaders().EndOfStream = true
	req.ProtocolConfig = &extprocv3.ProtocolConfiguration{RequestBodyMode: filterv3.ProcessingMode_FULL_DUPLEX_STREAMED, SendBodyWithoutWaitingForHeaderResponse: true}
	return req
}

func codecSeeds() [][]byte {
	var out [][]byte
	add := func(m proto.Message) {
		b, _ := proto.Marshal(m)
		out = append(out, b)
	}
	add(typicalRequest())
	add(reqHeaders("POST", "/tenants"))
	add(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{}}, ObservabilityMode: true})
	add(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{RequestHeaders: &extprocv3.HttpHeaders{
		Headers: &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: "k", Value: "v", RawValue: []byte{0, 0xff}}, {}, {Key: "only-key"}}}}}})
	add(&extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestBody{RequestBody: &extprocv3.HttpBody{Body: []byte("x"), EndOfStream: true}}})
	add(respHeaders(201, "x-new-tenant", "t9"))
	// The same field twice (proto merges): left to proto.Unmarshal.
	a, _ := proto.Marshal(reqHeaders("GET", "/a"))
	out = append(out, append(append([]byte(nil), a...), a...))
	// Invalid UTF-8 in a string field, and a truncated message.
	bad := protowire.AppendTag(nil, 1, protowire.BytesType)
	bad = protowire.AppendBytes(bad, []byte{0xff, 0xfe})
	hm := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), bad)
	hh := protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), hm)
	out = append(out, protowire.AppendBytes(protowire.AppendTag(nil, 2, protowire.BytesType), hh))
	t, _ := proto.Marshal(typicalRequest())
	out = append(out, t[:len(t)/2])
	return out
}

// The codec's answer is proto.Unmarshal's, for any input: the same error
// outcome and an equal message.
func FuzzCodecMatchesProto(f *testing.F) {
	for _, s := range codecSeeds() {
		f.Add(s)
	}
	c := NewCodec()
	f.Fuzz(func(t *testing.T, data []byte) {
		var got, want extprocv3.ProcessingRequest
		gerr := c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(bytes.Clone(data))}, &got)
		werr := proto.Unmarshal(data, &want)
		if (gerr == nil) != (werr == nil) {
			t.Fatalf("codec err %v, proto err %v", gerr, werr)
		}
		if werr == nil && !proto.Equal(&got, &want) {
			t.Fatalf("codec decoded\n%v\nproto decoded\n%v", &got, &want)
		}
	})
}

// The typical request takes the fast path: far fewer allocations than
// proto.Unmarshal (the test can fail: with the fast path off they match).
func TestCodecAllocatesLess(t *testing.T) {
	data, _ := proto.Marshal(typicalRequest())
	c := NewCodec()
	fast := testing.AllocsPerRun(200, func() {
		var m extprocv3.ProcessingRequest
		_ = c.Unmarshal(mem.BufferSlice{mem.SliceBuffer(data)}, &m)
	})
	std := testing.AllocsPerRun(200, func() {
		var m extprocv3.ProcessingRequest
		_ = proto.Unmarshal(data, &m)
	})
	t.Logf("allocations: codec %.0f, proto.Unmarshal %.0f", fast, std)
	if fast > std/2 {
		t.Fatalf("codec %.0f allocations, proto.Unmarshal %.0f: the fast path is not taken", fast, std)
	}
}

// BenchmarkDecodeRequestHeaders puts the codec's request-headers decode
// beside proto.Unmarshal's, on the typical request.
func BenchmarkDecodeRequestHeaders(b *testing.B) {
	data, _ := proto.Marshal(typicalRequest())
	for _, bc := range []struct {
		name   string
		decode func(*extprocv3.ProcessingRequest) error
	}{
		{"codec", func(m *extprocv3.ProcessingRequest) error {
			return NewCodec().Unmarshal(mem.BufferSlice{mem.SliceBuffer(data)}, m)
		}},
		{"proto", func(m *extprocv3.ProcessingRequest) error { return proto.Unmarshal(data, m) }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				var m extprocv3.ProcessingRequest
				if err := bc.decode(&m); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// A frozen answer is sent as encoded when frozen (proved by changing it
// afterwards, which callers never do); anything else is encoded as sent,
// and the set stays bounded.
func TestCodecFrozenAnswers(t *testing.T) {
	c := NewCodec()
	frozen := &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{
		Response: &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{setHeader("x", "10.0.0.1:80")}}}}}}
	want, _ := proto.Marshal(frozen)
	c.Freeze(frozen)
	other := proto.Clone(frozen).(*extprocv3.ProcessingResponse)
	frozen.GetRequestHeaders().GetResponse().GetHeaderMutation().GetSetHeaders()[0].Header.RawValue = []byte("10.0.0.2:80")
	other.GetRequestHeaders().GetResponse().GetHeaderMutation().GetSetHeaders()[0].Header.RawValue = []byte("10.0.0.3:80")
	for _, tc := range []struct {
		name string
		msg  proto.Message
		want []byte
	}{
		{"frozen: the bytes of Freeze time", frozen, want},
		{"not frozen: encoded now", other, func() []byte { b, _ := proto.Marshal(other); return b }()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := c.Marshal(tc.msg)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Materialize(), tc.want) {
				t.Fatalf("sent %x, want %x", got.Materialize(), tc.want)
			}
			got.Free()
		})
	}
	for i := 0; i < maxFrozen+10; i++ {
		c.Freeze(&extprocv3.ProcessingResponse{})
	}
	n := 0
	c.frozen.m.Range(func(any, any) bool { n++; return true })
	if n > maxFrozen {
		t.Fatalf("%d frozen answers kept, bound %d", n, maxFrozen)
	}
}
