// Package valkeyserver runs a throw-away valkey-server (or redis-server)
// on a loopback port, for tests, benchmarks and the demo: no persistence,
// its own directory, and stop, pause, resume and restart for failure
// drills.
package valkeyserver
