module github.com/coord-extproc/coord-extproc

go 1.26.0

require (
	github.com/hashicorp/golang-lru/v2 v2.0.7
	github.com/valkey-io/valkey-go v1.0.79
	gopkg.in/yaml.v3 v3.0.1
)

require (
	golang.org/x/net v0.60.0 // indirect
	golang.org/x/sys v0.48.0 // indirect
)
