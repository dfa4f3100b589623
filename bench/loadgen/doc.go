// Package loadgen drives coord-extproc the way Envoy does — a few shared
// HTTP/2 connections, one ext_proc stream per HTTP request carrying a
// realistic request-headers message (or one ext_authz Check, or plain HTTP
// through a gateway) — in closed-loop or open-loop (fixed rate) mode, and
// records latency in a log-linear histogram.
package loadgen
