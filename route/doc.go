// Package route is the route table of coord-extproc: ordered rules loaded
// from YAML that say, for a request's method, path and headers, which
// action applies and where the destination or lock id comes from.
package route
