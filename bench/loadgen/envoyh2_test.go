package loadgen

import (
	"encoding/binary"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/service/ext_proc/v3"
	"google.golang.org/protobuf/proto"
)

// The hand-encoded frame is the message Envoy sends: gRPC prefix, then
// ProcessingRequest.request_headers with every header as raw_value.
func TestRequestFrame(t *testing.T) {
	req := Request{Method: "GET", Path: "/tenants/t1/keys/k", Headers: TypicalHeaders([2]string{"x-destination-id", "t1"})}
	frame := requestFrame(req)
	if frame[0] != 0 || int(binary.BigEndian.Uint32(frame[1:5])) != len(frame)-5 {
		t.Fatalf("bad gRPC prefix % x for %d bytes", frame[:5], len(frame)-5)
	}
	var got extprocv3.ProcessingRequest
	if err := proto.Unmarshal(frame[5:], &got); err != nil {
		t.Fatal(err)
	}
	hm := &corev3.HeaderMap{}
	add := func(k, v string) { hm.Headers = append(hm.Headers, &corev3.HeaderValue{Key: k, RawValue: []byte(v)}) }
	add(":method", "GET")
	add(":path", "/tenants/t1/keys/k")
	add(":scheme", "http")
	for _, h := range req.Headers {
		add(h[0], h[1])
	}
	want := &extprocv3.ProcessingRequest{Request: &extprocv3.ProcessingRequest_RequestHeaders{
		RequestHeaders: &extprocv3.HttpHeaders{Headers: hm, EndOfStream: true}}}
	if !proto.Equal(&got, want) {
		t.Fatalf("frame decodes to\n%v\nwant\n%v", &got, want)
	}
}

// The memo gives each answer the verdict decoding it gives, and stays bounded.
func TestVerdictMemo(t *testing.T) {
	routed := &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{
		Response: &extprocv3.CommonResponse{HeaderMutation: &extprocv3.HeaderMutation{SetHeaders: []*corev3.HeaderValueOption{
			{Header: &corev3.HeaderValue{Key: "x-ep", RawValue: []byte("10.0.0.1:80")}}}}}}}}
	notRouted := &extprocv3.ProcessingResponse{Response: &extprocv3.ProcessingResponse_RequestHeaders{RequestHeaders: &extprocv3.HeadersResponse{}}}
	h := &h2conn{verdicts: map[string]string{}}
	for _, tc := range []struct {
		name string
		msg  []byte
		want string
	}{
		{"routed", mustMarshal(t, routed), ""},
		{"routed again, from the memo", mustMarshal(t, routed), ""},
		{"not routed", mustMarshal(t, notRouted), "not_routed"},
		{"garbage", []byte{0xff}, "decode"},
	} {
		if got := h.verdict(tc.msg, "x-ep"); got != tc.want {
			t.Errorf("%s: verdict %q, want %q", tc.name, got, tc.want)
		}
	}
	for i := range maxVerdicts + 10 {
		r := proto.Clone(routed).(*extprocv3.ProcessingResponse)
		r.GetRequestHeaders().GetResponse().GetHeaderMutation().GetSetHeaders()[0].Header.RawValue = binary.BigEndian.AppendUint32(nil, uint32(i))
		h.verdict(mustMarshal(t, r), "x-ep")
	}
	if len(h.verdicts) > maxVerdicts {
		t.Fatalf("%d verdicts kept, bound %d", len(h.verdicts), maxVerdicts)
	}
}

func mustMarshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
