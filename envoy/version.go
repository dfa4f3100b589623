package envoy

// Version is the exact Envoy release the shipped configs are written and
// checked for, and the one compose runs: the newest line whose API the
// go-control-plane protos here (v1.40.0, generated from Envoy's tree of
// 2026-10-13) cover, inside Envoy's one-year support window.
const Version = "1.40.0"

// MinVersion is the oldest release coord-extproc supports: the oldest line
// still supported by Envoy (1.37, until January 2027), at its first patch
// that resolves dot segments carrying ;parameters (CVE-2026-73551; 1.38.4,
// 1.39.1 and 1.40.0 on later lines). Everything else the server relies on
// is older (protocol_config in the first ext_proc message,
// FULL_DUPLEX_STREAMED, ORIGINAL_DST metadata_key); 1.37 also ends the
// ext_proc stream itself after the last expected answer.
const MinVersion = "1.37.6"
