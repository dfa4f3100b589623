package deploy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	egv1a1 "github.com/envoyproxy/gateway/api/v1alpha1"
	"google.golang.org/protobuf/encoding/protojson"
	istioapi "istio.io/api/networking/v1alpha3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
	if ef, ok := obj.(*EnvoyFilter); ok {
		var raw struct {
			metav1.TypeMeta   `json:",inline"`
			metav1.ObjectMeta `json:"metadata"`
			Spec              json.RawMessage `json:"spec"`
		}
		if err := decodeStrict(js, &raw); err != nil {
			return err
		}
		ef.TypeMeta, ef.ObjectMeta, ef.Spec = raw.TypeMeta, raw.ObjectMeta, &istioapi.EnvoyFilter{}
		return protojson.Unmarshal(raw.Spec, ef.Spec)
	}
	return decodeStrict(js, obj)
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
