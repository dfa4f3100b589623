// Package tlsfiles serves TLS from certificate files that are replaced
// while the process runs (cert-manager, Kubernetes secret volumes): new
// handshakes use the new files, a broken new file keeps the old ones.
package tlsfiles
