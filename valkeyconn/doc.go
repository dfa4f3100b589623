// Package valkeyconn applies TLS files and a password file to a Valkey
// client option, the same way for coord-extproc and for pods' Member.
package valkeyconn
