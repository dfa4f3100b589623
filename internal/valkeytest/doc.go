// Package valkeytest starts a real valkey-server (or redis-server) on a free
// loopback port for tests, and can stop, pause, resume and restart it so
// failure behaviour is tested against the real thing, never a mock.
package valkeytest
