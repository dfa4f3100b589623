package deploy

import (
	"errors"
	"fmt"
	"net"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	egv1a1 "github.com/envoyproxy/gateway/api/v1alpha1"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	extprocv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/ext_proc/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	istioapi "istio.io/api/networking/v1alpha3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/labels"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/coord-extproc/coord-extproc/envoy"
	"github.com/coord-extproc/coord-extproc/extproc"
	"github.com/coord-extproc/coord-extproc/route"
)

// Server is what the manifests must agree with: the wiring Envoy
// configs are checked against, and the environment variables the server
// reads.
type Server struct {
	envoy.Wiring
	Env []string
}

// manifests holds decoded objects by kind.
type manifests struct {
	deployments []*appsv1.Deployment
	services    []*corev1.Service
	configMaps  []*corev1.ConfigMap
	pdbs        []*policyv1.PodDisruptionBudget
	extPolicies []*egv1a1.EnvoyExtensionPolicy
	btps        []*egv1a1.BackendTrafficPolicy
	patches     []*egv1a1.EnvoyPatchPolicy
	filters     []*EnvoyFilter
	netpols     []*networkingv1.NetworkPolicy
	backendTLS  []*gwapiv1.BackendTLSPolicy
	proxies     []*egv1a1.EnvoyProxy
	peerAuths   []*PeerAuthentication
	authzPols   []*AuthorizationPolicy
}

func byKind(objs []any) *manifests {
	m := &manifests{}
	for _, o := range objs {
		switch o := o.(type) {
		case *appsv1.Deployment:
			m.deployments = append(m.deployments, o)
		case *corev1.Service:
			m.services = append(m.services, o)
		case *corev1.ConfigMap:
			m.configMaps = append(m.configMaps, o)
		case *policyv1.PodDisruptionBudget:
			m.pdbs = append(m.pdbs, o)
		case *egv1a1.EnvoyExtensionPolicy:
			m.extPolicies = append(m.extPolicies, o)
		case *egv1a1.BackendTrafficPolicy:
			m.btps = append(m.btps, o)
		case *egv1a1.EnvoyPatchPolicy:
			m.patches = append(m.patches, o)
		case *EnvoyFilter:
			m.filters = append(m.filters, o)
		case *networkingv1.NetworkPolicy:
			m.netpols = append(m.netpols, o)
		case *gwapiv1.BackendTLSPolicy:
			m.backendTLS = append(m.backendTLS, o)
		case *egv1a1.EnvoyProxy:
			m.proxies = append(m.proxies, o)
		case *PeerAuthentication:
			m.peerAuths = append(m.peerAuths, o)
		case *AuthorizationPolicy:
			m.authzPols = append(m.authzPols, o)
		}
	}
	return m
}

// Check returns every disagreement between the manifests (all of them,
// from every file, so references across files resolve) and the server.
func Check(objs []any, s Server) error {
	m := byKind(objs)
	var errs []error
	fail := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	for _, d := range m.deployments {
		m.checkDeployment(d, s, fail)
	}
	for _, p := range m.extPolicies {
		m.checkExtensionPolicy(p, s, fail)
	}
	for _, b := range m.btps {
		lb := b.Spec.LoadBalancer
		if lb == nil || lb.EndpointOverride == nil || len(lb.EndpointOverride.ExtractFrom) != 1 ||
			lb.EndpointOverride.ExtractFrom[0].Header == nil || *lb.EndpointOverride.ExtractFrom[0].Header != s.EndpointHeader {
			fail("BackendTrafficPolicy %s: endpointOverride must read header %q only", b.Name, s.EndpointHeader)
		}
	}
	reports := false
	for _, p := range m.patches {
		reports = checkPatchPolicy(p, s, fail) || reports
	}
	if len(m.extPolicies) > 0 && !reports {
		fail("Envoy Gateway: no EnvoyPatchPolicy adds the failure reports (router upstream_log to coord-extproc, SPEC §8.1)")
	}
	for _, f := range m.filters {
		m.checkEnvoyFilter(f, s, fail)
	}
	return errors.Join(errs...)
}

// service finds the Service namespace/name.
func (m *manifests) service(ns, name string) *corev1.Service {
	for _, s := range m.services {
		if s.Namespace == ns && s.Name == name {
			return s
		}
	}
	return nil
}

func (m *manifests) checkDeployment(d *appsv1.Deployment, s Server, fail func(string, ...any)) {
	pod := d.Spec.Template
	if len(pod.Spec.Containers) != 1 {
		fail("Deployment %s: want one container", d.Name)
		return
	}
	c := pod.Spec.Containers[0]
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
		if strings.HasPrefix(e.Name, "COORD_") && !slices.Contains(s.Env, e.Name) {
			fail("Deployment %s: %s is not a variable coord-extproc reads", d.Name, e.Name)
		}
	}
	if v := env["COORD_VALKEY_URL"].ValueFrom; v == nil || v.SecretKeyRef == nil {
		fail("Deployment %s: COORD_VALKEY_URL must come from a Secret", d.Name)
	}
	if v := env["GOMEMLIMIT"].ValueFrom; v == nil || v.ResourceFieldRef == nil || v.ResourceFieldRef.Resource != "limits.memory" || c.Resources.Limits.Memory().IsZero() {
		fail("Deployment %s: GOMEMLIMIT must follow limits.memory, and a memory limit must be set", d.Name)
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
		fail("Deployment %s: resource requests missing", d.Name)
	}
	grpcPort := portOf(env["COORD_LISTEN"].Value)
	if grpcPort != int32(s.Port) {
		fail("Deployment %s: COORD_LISTEN %q, the configs expect port %d", d.Name, env["COORD_LISTEN"].Value, s.Port)
	}
	if !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == "grpc" && p.ContainerPort == grpcPort }) {
		fail("Deployment %s: no container port named grpc on %d", d.Name, grpcPort)
	}
	m.checkNetworkPolicy(d, grpcPort, fail)
	m.checkTLSWiring(d, env, grpcPort, fail)
	checkGrace(d, env, s, fail)
	checkProbes(d, c, env, grpcPort, fail)
	checkSecretFiles(d, c, env, fail)
	sc, psc := c.SecurityContext, pod.Spec.SecurityContext
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		fail("Deployment %s: want runAsNonRoot, readOnlyRootFilesystem and no privilege escalation", d.Name)
	}
	m.checkRoutes(d, c, env["COORD_ROUTES"].Value, fail)
	sel := labels.Set(pod.Labels)
	svcOK := false
	for _, svc := range m.services {
		if svc.Namespace != d.Namespace || !labels.SelectorFromSet(svc.Spec.Selector).Matches(sel) {
			continue
		}
		for _, p := range svc.Spec.Ports {
			if p.Name == "grpc" && p.Port == int32(s.Port) && p.TargetPort.String() == "grpc" {
				svcOK = true
			}
		}
	}
	if !svcOK {
		fail("Deployment %s: no Service selects it with port grpc %d -> grpc", d.Name, s.Port)
	}
	pdbOK := false
	for _, p := range m.pdbs {
		if p.Namespace == d.Namespace && p.Spec.Selector != nil && labels.SelectorFromSet(p.Spec.Selector.MatchLabels).Matches(sel) {
			pdbOK = true
		}
	}
	if !pdbOK {
		fail("Deployment %s: no PodDisruptionBudget selects it", d.Name)
	}
}

// checkRoutes: the route file the server reads is a mounted ConfigMap key
// that parses, and it has no pass rule (SPEC §5.2; see the Envoy Gateway
// fallback in the README).
func (m *manifests) checkRoutes(d *appsv1.Deployment, c corev1.Container, file string, fail func(string, ...any)) {
	for _, vm := range c.VolumeMounts {
		if path.Dir(file) != vm.MountPath {
			continue
		}
		for _, v := range d.Spec.Template.Spec.Volumes {
			if v.Name != vm.Name || v.ConfigMap == nil {
				continue
			}
			for _, cm := range m.configMaps {
				if cm.Namespace != d.Namespace || cm.Name != v.ConfigMap.Name {
					continue
				}
				text, ok := cm.Data[path.Base(file)]
				if !ok {
					fail("ConfigMap %s has no key %s", cm.Name, path.Base(file))
					return
				}
				tbl, err := route.Parse([]byte(text))
				if err != nil {
					fail("ConfigMap %s: %v", cm.Name, err)
					return
				}
				for _, r := range tbl.Rules {
					if r.Action == route.ActionPass {
						fail("ConfigMap %s: rule %s passes requests, which Envoy Gateway's endpointOverride load-balances to any pod", cm.Name, r.Name)
					}
				}
				return
			}
		}
	}
	fail("Deployment %s: COORD_ROUTES %q is not a key of a mounted ConfigMap in these manifests", d.Name, file)
}

func portOf(addr string) int32 {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(p)
	return int32(n)
}

func (m *manifests) checkExtensionPolicy(p *egv1a1.EnvoyExtensionPolicy, s Server, fail func(string, ...any)) {
	if len(p.Spec.ExtProc) != 1 {
		fail("EnvoyExtensionPolicy %s: want one extProc", p.Name)
		return
	}
	x := p.Spec.ExtProc[0]
	if len(x.BackendRefs) != 1 {
		fail("EnvoyExtensionPolicy %s: want one backendRef", p.Name)
	} else {
		ref := x.BackendRefs[0]
		ns := p.Namespace
		if ref.Namespace != nil {
			ns = string(*ref.Namespace)
		}
		if svc := m.service(ns, string(ref.Name)); svc == nil || ref.Port == nil || int32(*ref.Port) != int32(s.Port) {
			fail("EnvoyExtensionPolicy %s: backendRef %s/%s:%v is not coord-extproc's Service on %d", p.Name, ns, ref.Name, ref.Port, s.Port)
		}
	}
	// Each request's stream is one request on the extension's cluster;
	// Envoy's default circuit breaker allows 1024 at once.
	if bs := x.BackendSettings; bs == nil || bs.CircuitBreaker == nil || bs.CircuitBreaker.MaxParallelRequests == nil || *bs.CircuitBreaker.MaxParallelRequests < envoy.MinGRPCRequests {
		fail("EnvoyExtensionPolicy %s: backendSettings.circuitBreaker.maxParallelRequests must be %d or more: each ext_proc stream is a request on the extension's cluster, and Envoy's default allows 1024", p.Name, envoy.MinGRPCRequests)
	}
	pm := x.ProcessingMode
	if pm == nil || pm.Request == nil || !pm.AllowModeOverride {
		fail("EnvoyExtensionPolicy %s: processingMode.request must be set (else nothing is sent) and allowModeOverride true (create/delete)", p.Name)
	}
	if x.FailOpen == nil || *x.FailOpen || x.MessageTimeout == nil {
		fail("EnvoyExtensionPolicy %s: want failOpen false and a messageTimeout", p.Name)
	}
	if x.Metadata == nil || !slices.Contains(x.Metadata.WritableNamespaces, extproc.MetadataNamespace) {
		fail("EnvoyExtensionPolicy %s: metadata.writableNamespaces must hold %s", p.Name, extproc.MetadataNamespace)
	}
}

// egExtProcCluster is the cluster Envoy Gateway makes for the first extProc
// backend of EnvoyExtensionPolicy coord/coord-extproc
// (internal/gatewayapi/envoyextensionpolicy.go, irConfigNameForExtProc).
const egExtProcCluster = "envoyextensionpolicy/coord/coord-extproc/extproc/0"

// checkPatchPolicy: an added cluster is an ORIGINAL_DST cluster reading
// the server's metadata only, and the route patch points at it; a listener
// patch adds the failure reports to the router. It reports whether the
// policy adds the failure reports.
func checkPatchPolicy(p *egv1a1.EnvoyPatchPolicy, s Server, fail func(string, ...any)) (reports bool) {
	var cluster string
	for _, jp := range p.Spec.JSONPatches {
		if jp.Operation.Value == nil {
			fail("EnvoyPatchPolicy %s: patch %s has no value", p.Name, jp.Name)
			continue
		}
		switch jp.Type {
		case egv1a1.ClusterEnvoyResourceType:
			var c clusterv3.Cluster
			if err := envoyProto(jp.Operation.Value.Raw, &c); err != nil {
				fail("EnvoyPatchPolicy %s: cluster %s: %v", p.Name, jp.Name, err)
				continue
			}
			if err := envoy.CheckOriginalDst(&c, extproc.MetadataNamespace, s.Wiring); err != nil {
				fail("EnvoyPatchPolicy %s: %v", p.Name, err)
			}
			cluster = c.GetName()
		case egv1a1.RouteConfigurationEnvoyResourceType:
			if v := strings.Trim(string(jp.Operation.Value.Raw), `"`); v != cluster || jp.Operation.Path == nil || *jp.Operation.Path != "/cluster" {
				fail("EnvoyPatchPolicy %s: the route patch sets %s to %s, not the ORIGINAL_DST cluster %q", p.Name, strOr(jp.Operation.Path), v, cluster)
			}
		case egv1a1.ListenerEnvoyResourceType:
			if jp.Operation.JSONPath == nil || *jp.Operation.JSONPath != "..http_filters[?(@.name == 'envoy.filters.http.router')].typed_config" ||
				strOr(jp.Operation.Path) != "/upstream_log" {
				fail("EnvoyPatchPolicy %s: the listener patch must add /upstream_log to the router's typed_config", p.Name)
				continue
			}
			var rt routerv3.Router
			if err := envoyProto([]byte(`{"upstream_log":`+string(jp.Operation.Value.Raw)+`}`), &rt); err != nil {
				fail("EnvoyPatchPolicy %s: upstream_log: %v", p.Name, err)
				continue
			}
			a, err := anypb.New(&rt)
			if err == nil {
				err = envoy.CheckFailureReports(a, egExtProcCluster)
			}
			if err != nil {
				fail("EnvoyPatchPolicy %s: %v", p.Name, err)
				continue
			}
			reports = true
		}
	}
	if cluster == "" && !reports {
		fail("EnvoyPatchPolicy %s: adds neither an ORIGINAL_DST cluster nor the failure reports", p.Name)
	}
	return reports
}

func strOr(s *string) string {
	if s == nil {
		return "<nil>"
	}
	return *s
}

// envoyProto decodes an embedded Envoy fragment strictly into its proto
// and runs the proto's validation rules.
func envoyProto(js []byte, m interface {
	proto.Message
	ValidateAll() error
}) error {
	if err := protojson.Unmarshal(js, m); err != nil {
		return err
	}
	return m.ValidateAll()
}

func (m *manifests) checkEnvoyFilter(f *EnvoyFilter, s Server, fail func(string, ...any)) {
	var cluster, routed, grpcCluster string
	var router *anypb.Any
	for i, cp := range f.Spec.GetConfigPatches() {
		js, err := protojson.Marshal(cp.GetPatch().GetValue())
		if err != nil {
			fail("EnvoyFilter %s patch %d: %v", f.Name, i, err)
			continue
		}
		switch cp.GetApplyTo() {
		case istioapi.EnvoyFilter_HTTP_FILTER:
			var hf hcmv3.HttpFilter
			if err := envoyProto(js, &hf); err != nil {
				fail("EnvoyFilter %s HTTP_FILTER: %v", f.Name, err)
				continue
			}
			if hf.GetTypedConfig().MessageIs(&routerv3.Router{}) {
				// The router's failure reports, merged into Istio's router.
				if cp.GetPatch().GetOperation() != istioapi.EnvoyFilter_Patch_MERGE || cp.GetMatch().GetListener().GetFilterChain().GetFilter().GetSubFilter().GetName() != "envoy.filters.http.router" {
					fail("EnvoyFilter %s: the failure reports must be merged into the router", f.Name)
				}
				router = hf.GetTypedConfig()
				continue
			}
			var x extprocv3.ExternalProcessor
			if err := hf.GetTypedConfig().UnmarshalTo(&x); err != nil {
				fail("EnvoyFilter %s HTTP_FILTER: not ext_proc: %v", f.Name, err)
				continue
			}
			if cp.GetPatch().GetOperation() != istioapi.EnvoyFilter_Patch_INSERT_BEFORE || cp.GetMatch().GetListener().GetFilterChain().GetFilter().GetSubFilter().GetName() != "envoy.filters.http.router" {
				fail("EnvoyFilter %s: ext_proc must be inserted before the router", f.Name)
			}
			if err := envoy.CheckExtProc(&x, s.Wiring); err != nil {
				fail("EnvoyFilter %s: %v", f.Name, err)
			}
			grpcCluster = x.GetGrpcService().GetEnvoyGrpc().GetClusterName()
		case istioapi.EnvoyFilter_CLUSTER:
			var c clusterv3.Cluster
			if err := envoyProto(js, &c); err != nil {
				fail("EnvoyFilter %s CLUSTER: %v", f.Name, err)
				continue
			}
			if err := envoy.CheckOriginalDst(&c, extproc.MetadataNamespace, s.Wiring); err != nil {
				fail("EnvoyFilter %s: %v", f.Name, err)
			}
			cluster = c.GetName()
		case istioapi.EnvoyFilter_HTTP_ROUTE:
			var r routev3.Route
			if err := protojson.Unmarshal(js, &r); err != nil { // a partial route: merged, not validated alone
				fail("EnvoyFilter %s HTTP_ROUTE: %v", f.Name, err)
				continue
			}
			routed = r.GetRoute().GetCluster()
		}
	}
	if cluster == "" || routed != cluster {
		fail("EnvoyFilter %s: the route goes to %q, not to the ORIGINAL_DST cluster %q it adds", f.Name, routed, cluster)
	}
	if router == nil {
		fail("EnvoyFilter %s: no patch adds the failure reports (router upstream_log to coord-extproc, SPEC §8.1)", f.Name)
	} else if err := envoy.CheckFailureReports(router, grpcCluster); err != nil {
		fail("EnvoyFilter %s: %v", f.Name, err)
	}
	// Istio names the Service's cluster outbound|port||host.
	parts := strings.Split(grpcCluster, "|")
	if len(parts) != 4 || parts[0] != "outbound" {
		fail("EnvoyFilter %s: gRPC cluster %q is not an Istio outbound cluster", f.Name, grpcCluster)
		return
	}
	host := strings.Split(parts[3], ".")
	if len(host) < 2 || m.service(host[1], host[0]) == nil || parts[1] != strconv.Itoa(int(s.Port)) {
		fail("EnvoyFilter %s: gRPC cluster %q is not coord-extproc's Service on port %d", f.Name, grpcCluster, s.Port)
	}
}

// checkGrace: Kubernetes must not kill the pod before the server's own
// grace is over: create/delete streams wait for the upstream that long.
func checkGrace(d *appsv1.Deployment, env map[string]corev1.EnvVar, s Server, fail func(string, ...any)) {
	grace := s.StreamGrace
	if v := env["COORD_SHUTDOWN_GRACE"].Value; v != "" {
		g, err := time.ParseDuration(v)
		if err != nil {
			fail("Deployment %s: COORD_SHUTDOWN_GRACE %q: %v", d.Name, v, err)
			return
		}
		grace = g
	}
	if grace < s.StreamGrace {
		fail("Deployment %s: COORD_SHUTDOWN_GRACE %s is shorter than the configs' route timeouts allow (%s): create/delete streams would be cut", d.Name, grace, s.StreamGrace)
	}
	period := int64(corev1.DefaultTerminationGracePeriodSeconds)
	if p := d.Spec.Template.Spec.TerminationGracePeriodSeconds; p != nil {
		period = *p
	}
	if time.Duration(period)*time.Second <= grace {
		fail("Deployment %s: terminationGracePeriodSeconds %d must exceed the server's shutdown grace %s, or Kubernetes kills it while create/delete streams still wait", d.Name, period, grace)
	}
}
