{{/*
Selector labels: the chart's name, and the release's when it is not the chart's name (two releases
in one namespace). The default release, coord-extproc, renders deploy/kubernetes/coord-extproc.yaml.
*/}}
{{- define "coord-extproc.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
{{- if ne .Release.Name .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
{{- end }}

{{/* Secret mounts, beside (not inside) the routes ConfigMap's read-only mount. */}}
{{- define "coord-extproc.tlsDir" -}}/etc/coord-extproc-tls{{- end }}
{{- define "coord-extproc.valkeyDir" -}}/etc/coord-extproc-valkey{{- end }}
{{- define "coord-extproc.valkeyPasswordDir" -}}/etc/coord-extproc-valkey-password{{- end }}

{{/* The probes: the gRPC health service, or /healthz on the metrics port when the gRPC port speaks TLS. */}}
{{- define "coord-extproc.probe" -}}
{{- if .Values.tls.secretName }}
httpGet: { path: /healthz, port: metrics{{ if .Values.tls.metrics }}, scheme: HTTPS{{ end }} }
{{- else }}
grpc: { port: {{ .Values.grpcPort }} }
{{- end }}
{{- end }}
