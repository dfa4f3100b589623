// Package valkeytest gives each test its own real valkey-server (see
// valkeyserver) with cleanup and failures tied to the test, plus small
// helpers to run raw commands against it.
package valkeytest
