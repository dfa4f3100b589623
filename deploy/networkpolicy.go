package deploy

import (
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// checkNetworkPolicy: the gRPC port of d's pods admits named gateway pods
// only (issue #24: anyone reaching it can ask where tenants live and claim
// ids), and the Istio gateway the EnvoyFilter patches is one of them.
func (m *manifests) checkNetworkPolicy(d *appsv1.Deployment, grpcPort int32, fail func(string, ...any)) {
	podLabels := labels.Set(d.Spec.Template.Labels)
	var selecting []*networkingv1.NetworkPolicy
	for _, p := range m.netpols {
		sel, err := metav1.LabelSelectorAsSelector(&p.Spec.PodSelector)
		if err == nil && p.Namespace == d.Namespace && sel.Matches(podLabels) {
			selecting = append(selecting, p)
		}
	}
	if len(selecting) == 0 {
		fail("Deployment %s: no NetworkPolicy selects its pods; the gRPC port would be open to every pod", d.Name)
		return
	}
	var grpcPeers []networkingv1.NetworkPolicyPeer
	for _, p := range selecting {
		ingress := false
		for _, t := range p.Spec.PolicyTypes {
			ingress = ingress || t == networkingv1.PolicyTypeIngress
		}
		if !ingress {
			fail("NetworkPolicy %s: policyTypes must include Ingress", p.Name)
		}
		for i, rule := range p.Spec.Ingress {
			if !admitsPort(rule.Ports, d, grpcPort) {
				continue
			}
			if len(rule.From) == 0 {
				fail("NetworkPolicy %s: ingress rule %d admits every source to the gRPC port", p.Name, i+1)
			}
			for _, peer := range rule.From {
				if peer.PodSelector == nil || peer.IPBlock != nil || len(peer.PodSelector.MatchLabels)+len(peer.PodSelector.MatchExpressions) == 0 {
					fail("NetworkPolicy %s: ingress rule %d admits more than named gateway pods to the gRPC port (each peer needs a non-empty podSelector, no ipBlock)", p.Name, i+1)
				}
			}
			grpcPeers = append(grpcPeers, rule.From...)
		}
	}
	for _, f := range m.filters {
		if f.Spec.GetWorkloadSelector() == nil {
			continue
		}
		if !peersAdmit(grpcPeers, f.Namespace, f.Spec.GetWorkloadSelector().GetLabels()) {
			fail("NetworkPolicy: the Istio gateway the EnvoyFilter %s patches (namespace %s, %v) cannot reach the gRPC port", f.Name, f.Namespace, f.Spec.GetWorkloadSelector().GetLabels())
		}
	}
}

// admitsPort reports whether ports (empty: all) include the container port
// grpcPort of d, by number or by its name.
func admitsPort(ports []networkingv1.NetworkPolicyPort, d *appsv1.Deployment, grpcPort int32) bool {
	if len(ports) == 0 {
		return true
	}
	name := ""
	for _, c := range d.Spec.Template.Spec.Containers {
		for _, p := range c.Ports {
			if p.ContainerPort == grpcPort {
				name = p.Name
			}
		}
	}
	for _, p := range ports {
		if p.Protocol != nil && *p.Protocol != corev1.ProtocolTCP {
			continue
		}
		switch {
		case p.Port == nil:
			return true
		case p.Port.Type == intstr.Int && p.Port.IntVal == grpcPort:
			return true
		case p.Port.Type == intstr.String && p.Port.StrVal == name:
			return true
		}
	}
	return false
}

// peersAdmit reports whether a peer admits pods with podLabels in the
// namespace ns (namespaces labelled with their name, as Kubernetes does).
func peersAdmit(peers []networkingv1.NetworkPolicyPeer, ns string, podLabels map[string]string) bool {
	nsLabels := labels.Set{"kubernetes.io/metadata.name": ns}
	for _, p := range peers {
		if p.NamespaceSelector == nil || p.PodSelector == nil {
			continue
		}
		nsSel, err1 := metav1.LabelSelectorAsSelector(p.NamespaceSelector)
		podSel, err2 := metav1.LabelSelectorAsSelector(p.PodSelector)
		if err1 == nil && err2 == nil && nsSel.Matches(nsLabels) && podSel.Matches(labels.Set(podLabels)) {
			return true
		}
	}
	return false
}
