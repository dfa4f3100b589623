package deploy

import (
	"slices"
	"strconv"

	egv1a1 "github.com/envoyproxy/gateway/api/v1alpha1"
	istiosec "istio.io/api/security/v1beta1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// checkTLSWiring: what the gateways speak to coord-extproc's gRPC port
// agrees with what it serves. Envoy Gateway: a TLS server needs a
// BackendTLSPolicy on its Service (verified CA and name), a client
// certificate from an EnvoyProxy when it asks for one, and ALPN h2; a
// plaintext one must have none. Istio: a STRICT PeerAuthentication means
// the sidecar terminates mesh mTLS, so the server itself must be
// plaintext, and an AuthorizationPolicy must keep the gRPC port to named
// identities (mTLS alone admits every workload of the mesh).
func (m *manifests) checkTLSWiring(d *appsv1.Deployment, env map[string]corev1.EnvVar, grpcPort int32, fail func(string, ...any)) {
	serverTLS := env["COORD_TLS_CERT"].Value != ""
	sel := labels.Set(d.Spec.Template.Labels)
	for _, svc := range m.services {
		if svc.Namespace != d.Namespace || !labels.SelectorFromSet(svc.Spec.Selector).Matches(sel) {
			continue
		}
		for _, p := range svc.Spec.Ports {
			if p.Name == "grpc" && serverTLS && p.AppProtocol != nil && *p.AppProtocol == "kubernetes.io/h2c" {
				fail("Service %s: appProtocol kubernetes.io/h2c (cleartext HTTP/2) on a port that serves TLS", svc.Name)
			}
		}
		if len(m.extPolicies) > 0 {
			m.checkBackendTLS(svc, serverTLS, env["COORD_TLS_CLIENT_CA"].Value != "", fail)
		}
	}
	for _, pa := range m.peerAuths {
		if pa.Namespace != d.Namespace || !labels.SelectorFromSet(pa.Spec.GetSelector().GetMatchLabels()).Matches(sel) {
			continue
		}
		mode := pa.Spec.GetMtls().GetMode()
		if pm, ok := pa.Spec.GetPortLevelMtls()[uint32(grpcPort)]; ok {
			mode = pm.GetMode()
		}
		if mode != istiosec.PeerAuthentication_MutualTLS_STRICT {
			fail("PeerAuthentication %s: the gRPC port %d is %s, not STRICT", pa.Name, grpcPort, mode)
		}
		if serverTLS {
			fail("PeerAuthentication %s: Istio's sidecar terminates mesh mTLS and forwards plaintext, but %s serves TLS itself (leave --tls-cert unset under Istio)", pa.Name, d.Name)
		}
		m.checkAuthorizationPolicy(d, grpcPort, fail)
	}
}

func (m *manifests) checkBackendTLS(svc *corev1.Service, serverTLS, clientCA bool, fail func(string, ...any)) {
	var policy bool
	for _, p := range m.backendTLS {
		for _, ref := range p.Spec.TargetRefs {
			if p.Namespace != svc.Namespace || ref.Kind != "Service" || string(ref.Name) != svc.Name || ref.SectionName != nil && *ref.SectionName != "grpc" {
				continue
			}
			policy = true
			v := p.Spec.Validation
			if len(v.CACertificateRefs) == 0 && v.WellKnownCACertificates == nil || v.Hostname == "" {
				fail("BackendTLSPolicy %s: want CA certificates and the hostname in coord-extproc's certificate", p.Name)
			}
		}
	}
	switch {
	case serverTLS && !policy:
		fail("Service %s serves TLS but no BackendTLSPolicy targets it: Envoy Gateway would speak plaintext to it", svc.Name)
	case !serverTLS && policy:
		fail("a BackendTLSPolicy targets Service %s, which serves plaintext (set the chart's tls.secretName)", svc.Name)
	}
	if !serverTLS {
		return
	}
	var cert bool
	for _, p := range m.proxies {
		bt := p.Spec.BackendTLS
		if bt == nil {
			continue
		}
		cert = cert || bt.ClientCertificateRef != nil
		if len(bt.ALPNProtocols) > 0 && !slices.Contains(bt.ALPNProtocols, egv1a1.ALPNProtocol("h2")) {
			fail("EnvoyProxy %s: backendTLS.alpnProtocols %v lacks h2 (grpc-go refuses the handshake)", p.Name, bt.ALPNProtocols)
		}
	}
	if clientCA && !cert {
		fail("%s asks for client certificates (COORD_TLS_CLIENT_CA) and no EnvoyProxy gives Envoy Gateway's proxies one (backendTLS.clientCertificateRef)", svc.Name)
	}
}

// checkAuthorizationPolicy: some ALLOW policy selects the pods, and every
// rule of it that reaches the gRPC port names its callers' principals.
func (m *manifests) checkAuthorizationPolicy(d *appsv1.Deployment, grpcPort int32, fail func(string, ...any)) {
	sel := labels.Set(d.Spec.Template.Labels)
	port := strconv.Itoa(int(grpcPort))
	found := false
	for _, ap := range m.authzPols {
		if ap.Namespace != d.Namespace || ap.Spec.GetAction() != istiosec.AuthorizationPolicy_ALLOW ||
			!labels.SelectorFromSet(ap.Spec.GetSelector().GetMatchLabels()).Matches(sel) {
			continue
		}
		found = true
		for i, r := range ap.Spec.GetRules() {
			reaches := len(r.GetTo()) == 0
			for _, to := range r.GetTo() {
				ports := to.GetOperation().GetPorts()
				reaches = reaches || len(ports) == 0 || slices.Contains(ports, port)
			}
			if !reaches {
				continue
			}
			named := len(r.GetFrom()) > 0
			for _, f := range r.GetFrom() {
				named = named && len(f.GetSource().GetPrincipals()) > 0
			}
			if !named {
				fail("AuthorizationPolicy %s: rule %d admits the gRPC port %s without naming the callers' principals", ap.Name, i, port)
			}
		}
	}
	if !found {
		fail("Deployment %s: no ALLOW AuthorizationPolicy keeps its gRPC port to the gateway's identity (mesh mTLS alone admits every workload)", d.Name)
	}
}
