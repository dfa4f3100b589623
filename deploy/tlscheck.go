package deploy

import (
	"cmp"
	"path"
	"slices"
	"strconv"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// secretFileVars are the variables naming files that hold secrets: each
// must lie in a mounted Secret (the server re-reads them when it changes).
var secretFileVars = []string{"COORD_TLS_CERT", "COORD_TLS_KEY", "COORD_TLS_CLIENT_CA", "COORD_VALKEY_CA", "COORD_VALKEY_CERT", "COORD_VALKEY_KEY", "COORD_VALKEY_PASSWORD_FILE"}

// checkProbes: the gRPC health service on the gRPC port, except with TLS
// on it — the kubelet's gRPC probes cannot speak TLS — where /healthz on
// the metrics port answers, over HTTPS when the metrics port speaks TLS.
func checkProbes(d *appsv1.Deployment, c corev1.Container, env map[string]corev1.EnvVar, grpcPort int32, fail func(string, ...any)) {
	metricsPort := portOf(env["COORD_METRICS_LISTEN"].Value)
	tls := env["COORD_TLS_CERT"].Value != ""
	scheme := corev1.URISchemeHTTP
	if env["COORD_METRICS_TLS"].Value == "true" {
		scheme = corev1.URISchemeHTTPS
	}
	for name, p := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		var get *corev1.HTTPGetAction
		if p != nil {
			get = p.HTTPGet
		}
		switch {
		case !tls && (p == nil || p.GRPC == nil || p.GRPC.Port != grpcPort):
			fail("Deployment %s: %s probe must ask the gRPC health service on %d", d.Name, name, grpcPort)
		case tls && (get == nil || get.Path != "/healthz" || !namesPort(c, get.Port.String(), metricsPort) || cmp.Or(get.Scheme, corev1.URISchemeHTTP) != scheme):
			fail("Deployment %s: with TLS on the gRPC port the %s probe must GET /healthz on the metrics port %d (%s): the kubelet's gRPC probes cannot speak TLS", d.Name, name, metricsPort, scheme)
		}
	}
}

// namesPort: port (a number or a container port's name) is number.
func namesPort(c corev1.Container, port string, number int32) bool {
	return slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool {
		return p.ContainerPort == number && (p.Name == port || port == strconv.Itoa(int(number)))
	})
}

func checkSecretFiles(d *appsv1.Deployment, c corev1.Container, env map[string]corev1.EnvVar, fail func(string, ...any)) {
	for _, name := range secretFileVars {
		file := env[name].Value
		if file == "" {
			continue
		}
		if !slices.ContainsFunc(c.VolumeMounts, func(vm corev1.VolumeMount) bool {
			return vm.MountPath == path.Dir(file) && slices.ContainsFunc(d.Spec.Template.Spec.Volumes, func(v corev1.Volume) bool {
				return v.Name == vm.Name && v.Secret != nil
			})
		}) {
			fail("Deployment %s: %s %q is not in a mounted Secret", d.Name, name, file)
		}
	}
	if (env["COORD_TLS_CERT"].Value == "") != (env["COORD_TLS_KEY"].Value == "") {
		fail("Deployment %s: COORD_TLS_CERT and COORD_TLS_KEY go together", d.Name)
	}
}
