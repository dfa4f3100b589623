package deploy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	egv1a1 "github.com/envoyproxy/gateway/api/v1alpha1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	istioapi "istio.io/api/networking/v1alpha3"
	istiosec "istio.io/api/security/v1beta1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gwapiv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"
)

// EnvoyFilter is Istio's networking/v1alpha3 EnvoyFilter with its spec
// decoded by protojson, which (unlike the client type's own decoder)
// refuses unknown fields.
type EnvoyFilter struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              *istioapi.EnvoyFilter `json:"-"`
}

// PeerAuthentication and AuthorizationPolicy are Istio's security/v1
// kinds, decoded as EnvoyFilter is.
type PeerAuthentication struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              *istiosec.PeerAuthentication `json:"-"`
}

type AuthorizationPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              *istiosec.AuthorizationPolicy `json:"-"`
}

// newObject returns the Go type of an apiVersion/kind the manifests use.
func newObject(apiVersion, kind string) (any, error) {
	switch apiVersion + " " + kind {
	case "v1 ConfigMap":
		return &corev1.ConfigMap{}, nil
	case "v1 Service":
		return &corev1.Service{}, nil
	case "apps/v1 Deployment":
		return &appsv1.Deployment{}, nil
	case "networking.k8s.io/v1 NetworkPolicy":
		return &networkingv1.NetworkPolicy{}, nil
	case "policy/v1 PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, nil
	case "gateway.envoyproxy.io/v1alpha1 EnvoyExtensionPolicy":
		return &egv1a1.EnvoyExtensionPolicy{}, nil
	case "gateway.envoyproxy.io/v1alpha1 BackendTrafficPolicy":
		return &egv1a1.BackendTrafficPolicy{}, nil
	case "gateway.envoyproxy.io/v1alpha1 EnvoyPatchPolicy":
		return &egv1a1.EnvoyPatchPolicy{}, nil
	case "networking.istio.io/v1alpha3 EnvoyFilter":
		return &EnvoyFilter{}, nil
	case "security.istio.io/v1 PeerAuthentication":
		return &PeerAuthentication{}, nil
	case "security.istio.io/v1 AuthorizationPolicy":
		return &AuthorizationPolicy{}, nil
	case "gateway.networking.k8s.io/v1 BackendTLSPolicy":
		return &gwapiv1.BackendTLSPolicy{}, nil
	case "gateway.envoyproxy.io/v1alpha1 EnvoyProxy":
		return &egv1a1.EnvoyProxy{}, nil
	}
	return nil, fmt.Errorf("%s %s: not a kind these manifests use", apiVersion, kind)
}

// Load decodes every document of a manifest file strictly into its
// project's Go type: an unknown field, a wrong type or an unknown kind is
// an error naming the document.
func Load(path string) ([]any, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(data)
}

// Parse is Load for manifest text.
func Parse(data []byte) ([]any, error) {
	var objs []any
	for i, doc := range strings.Split("\n"+string(data), "\n---\n") {
		if strings.TrimSpace(stripComments(doc)) == "" {
			continue
		}
		js, err := yaml.YAMLToJSON([]byte(doc))
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i+1, err)
		}
		var tm metav1.TypeMeta
		if err := json.Unmarshal(js, &tm); err != nil {
			return nil, fmt.Errorf("document %d: %w", i+1, err)
		}
		obj, err := newObject(tm.APIVersion, tm.Kind)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", i+1, err)
		}
		if err := strict(js, obj); err != nil {
			return nil, fmt.Errorf("document %d (%s): %w", i+1, tm.Kind, err)
		}
		objs = append(objs, obj)
	}
	return objs, nil
}

func strict(js []byte, obj any) error {
	var raw struct {
		metav1.TypeMeta   `json:",inline"`
		metav1.ObjectMeta `json:"metadata"`
		Spec              json.RawMessage `json:"spec"`
	}
	var spec proto.Message
	switch o := obj.(type) {
	case *EnvoyFilter:
		o.Spec = &istioapi.EnvoyFilter{}
		spec = o.Spec
		defer func() { o.TypeMeta, o.ObjectMeta = raw.TypeMeta, raw.ObjectMeta }()
	case *PeerAuthentication:
		o.Spec = &istiosec.PeerAuthentication{}
		spec = o.Spec
		defer func() { o.TypeMeta, o.ObjectMeta = raw.TypeMeta, raw.ObjectMeta }()
	case *AuthorizationPolicy:
		o.Spec = &istiosec.AuthorizationPolicy{}
		spec = o.Spec
		defer func() { o.TypeMeta, o.ObjectMeta = raw.TypeMeta, raw.ObjectMeta }()
	default:
		return decodeStrict(js, obj)
	}
	// Istio's specs are protos: protojson refuses unknown fields, which the
	// client types' own decoders accept.
	if err := decodeStrict(js, &raw); err != nil {
		return err
	}
	return protojson.Unmarshal(raw.Spec, spec)
}

func decodeStrict(js []byte, obj any) error {
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	return dec.Decode(obj)
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}
