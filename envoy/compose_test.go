package envoy

import (
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"google.golang.org/protobuf/proto"
	"gopkg.in/yaml.v3"

	"github.com/coord-extproc/coord-extproc/route"
)

type compose struct {
	Services map[string]struct {
		Build       any               `yaml:"build"`
		PullPolicy  string            `yaml:"pull_policy"`
		Image       string            `yaml:"image"`
		Command     []string          `yaml:"command"`
		Entrypoint  []string          `yaml:"entrypoint"`
		Environment map[string]string `yaml:"environment"`
		Volumes     []string          `yaml:"volumes"`
		Ports       []string          `yaml:"ports"`
		DependsOn   map[string]struct {
			Condition string `yaml:"condition"`
		} `yaml:"depends_on"`
		Healthcheck *struct {
			Test []string `yaml:"test"`
		} `yaml:"healthcheck"`
	} `yaml:"services"`
}

func flagValue(args []string, name string) string {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == name {
			return args[i+1]
		}
	}
	return ""
}

func port(t *testing.T, addr string) string {
	t.Helper()
	if u, err := url.Parse(addr); err == nil && u.Host != "" {
		addr = u.Host
	}
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("%q: %v", addr, err)
	}
	return p
}

// docker-compose.yml, envoy/envoy-compose.yaml and envoy/demo-routes.yaml
// must agree: Docker itself cannot run here, so this is what keeps
// `docker compose up` honest.
func TestComposeAgreesWithEnvoyAndRoutes(t *testing.T) {
	raw, err := os.ReadFile("../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var c compose
	if err := yaml.Unmarshal(raw, &c); err != nil {
		t.Fatal(err)
	}
	b, err := Load("envoy-compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	coord, envoySvc := c.Services["coord-extproc"], c.Services["envoy"]

	// Published on loopback only; Envoy is healthy before traffic starts;
	// one build of the pod image; coord-extproc built with its version.
	for name, svc := range c.Services {
		for _, p := range svc.Ports {
			if !strings.HasPrefix(p, "127.0.0.1:") {
				t.Errorf("%s publishes %q beyond loopback", name, p)
			}
		}
	}
	if envoySvc.Healthcheck == nil || !strings.Contains(strings.Join(envoySvc.Healthcheck.Test, " "), "/ready") {
		t.Errorf("envoy has no readiness health check: %v", envoySvc.Healthcheck)
	}
	if c.Services["loadgen"].DependsOn["envoy"].Condition != "service_healthy" {
		t.Errorf("loadgen starts before Envoy is healthy: %v", c.Services["loadgen"].DependsOn)
	}
	builds := 0
	for name, svc := range c.Services {
		if svc.Image == "coord-demopod:local" {
			if svc.Build != nil {
				builds++
			} else if svc.PullPolicy != "never" {
				t.Errorf("%s would try to pull the local demo pod image", name)
			}
		}
	}
	if builds != 1 {
		t.Errorf("the demo pod image is built by %d services, want 1", builds)
	}
	if !strings.Contains(string(raw), `VERSION: "${VERSION:-dev}"`) {
		t.Error("coord-extproc is built without the VERSION build argument")
	}

	// One exact Envoy release, the one the configs are checked for.
	if envoySvc.Image != "envoyproxy/envoy:v"+Version {
		t.Fatalf("envoy image %q, want envoyproxy/envoy:v%s", envoySvc.Image, Version)
	}

	// Envoy mounts this file and publishes its listener.
	if !slices.Contains(envoySvc.Volumes, "./envoy/envoy-compose.yaml:/etc/envoy/envoy.yaml:ro") || flagValue(envoySvc.Command, "-c") != "/etc/envoy/envoy.yaml" {
		t.Fatalf("envoy service does not run envoy/envoy-compose.yaml: %v %v", envoySvc.Volumes, envoySvc.Command)
	}
	listener := b.GetStaticResources().GetListeners()[0].GetAddress().GetSocketAddress()
	if lp := listener.GetPortValue(); !slices.Contains(envoySvc.Ports, "127.0.0.1:"+itoa(lp)+":"+itoa(lp)) {
		t.Fatalf("listener port %d not published: %v", lp, envoySvc.Ports)
	}
	if listener.GetAddress() != "0.0.0.0" {
		t.Fatalf("listener on %s: other containers cannot reach it", listener.GetAddress())
	}

	// The coord_extproc cluster points at the coord-extproc service's port.
	var cl *clusterv3.Cluster
	for _, x := range b.GetStaticResources().GetClusters() {
		if x.GetName() == "coord_extproc" {
			cl = x
		}
	}
	sa := cl.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
	if sa.GetAddress() != "coord-extproc" || itoa(sa.GetPortValue()) != port(t, coord.Environment["COORD_LISTEN"]) || cl.GetType() != clusterv3.Cluster_STRICT_DNS {
		t.Fatalf("coord_extproc cluster %s:%d (%s) vs service coord-extproc on %s", sa.GetAddress(), sa.GetPortValue(), cl.GetType(), coord.Environment["COORD_LISTEN"])
	}
	if !strings.HasPrefix(coord.Environment["COORD_LISTEN"], "0.0.0.0:") {
		t.Fatalf("coord-extproc listens on %s inside its container", coord.Environment["COORD_LISTEN"])
	}
	// The health check asks the port it serves on.
	if hc := coord.Healthcheck.Test; port(t, flagValue(hc, "--listen")) != port(t, coord.Environment["COORD_LISTEN"]) {
		t.Fatalf("coord-extproc health check %v", hc)
	}

	// ORIGINAL_DST reads what this coord-extproc writes.
	w := Defaults()
	w.EndpointHeader = coord.Environment["COORD_ENDPOINT_HEADER"]
	if err := CheckWiring(b, w); err != nil {
		t.Fatal(err)
	}

	// The route file mounted where COORD_ROUTES points, and it loads.
	var routesMounted bool
	for _, v := range coord.Volumes {
		src, dst, _ := strings.Cut(strings.TrimSuffix(v, ":ro"), ":")
		if dst == coord.Environment["COORD_ROUTES"] {
			routesMounted = true
			if _, err := route.Load("../" + strings.TrimPrefix(src, "./")); err != nil {
				t.Fatal(err)
			}
		}
	}
	if !routesMounted {
		t.Fatalf("COORD_ROUTES=%s is not mounted: %v", coord.Environment["COORD_ROUTES"], coord.Volumes)
	}

	// Pods: registered reachable by IP, on the port they listen on, in the
	// Valkey coord-extproc reads.
	for _, name := range []string{"pod-a", "pod-b", "pod-c"} {
		p := c.Services[name]
		if flagValue(p.Command, "--advertise") != "auto" || !strings.HasPrefix(flagValue(p.Command, "--listen"), "0.0.0.0:") ||
			flagValue(p.Command, "--valkey") != coord.Environment["COORD_VALKEY_URL"] || flagValue(p.Command, "--id") != name {
			t.Fatalf("%s command %v", name, p.Command)
		}
		if port(t, flagValue(p.Healthcheck.Test, "--check")) != port(t, flagValue(p.Command, "--listen")) {
			t.Fatalf("%s health check %v", name, p.Healthcheck.Test)
		}
	}
	// The load generator drives Envoy's listener.
	lg := c.Services["loadgen"]
	if tgt := flagValue(lg.Command, "--target"); tgt != "http://envoy:"+itoa(listener.GetPortValue()) || flagValue(lg.Command, "--mode") != "http" {
		t.Fatalf("loadgen targets %q", tgt)
	}
}

// envoy-compose.yaml may differ from envoy.yaml only in addresses.
func TestComposeEnvoyMatchesEnvoyYAML(t *testing.T) {
	a, err := Load("envoy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	b, err := Load("envoy-compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	normalize := func(x *bootstrapv3.Bootstrap) {
		x.GetAdmin().GetAddress().GetSocketAddress().Address = ""
		for _, c := range x.GetStaticResources().GetClusters() {
			if c.GetName() == "coord_extproc" {
				c.ClusterDiscoveryType = nil
				c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().Address = ""
			}
		}
	}
	normalize(a)
	normalize(b)
	if !proto.Equal(a, b) {
		t.Fatal("envoy-compose.yaml differs from envoy.yaml beyond the coord_extproc address and the admin address")
	}
}

func itoa(n uint32) string { return strconv.FormatUint(uint64(n), 10) }
