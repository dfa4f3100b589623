// Package streamguard bounds what a gRPC client can hold open on the
// server: a stream must send its first message within a deadline, and the
// streams open at once across all connections are capped.
package streamguard
