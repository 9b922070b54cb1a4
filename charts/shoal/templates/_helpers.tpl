{{/*
Names are fixed, not derived from the release name: the control plane's SPIFFE id names its service account
(spiffe://<trust domain>/ns/<namespace>/sa/shoal-control-plane), and proxies expect exactly that id
(SHOAL_CONTROL_PLANE_IDENTITY's default). One release per namespace.
*/}}
{{- define "shoal.name" -}}shoal-control-plane{{- end }}

{{- define "shoal.labels" -}}
app.kubernetes.io/name: shoal
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{- define "shoal.selectorLabels" -}}
app.kubernetes.io/name: shoal
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: control-plane
{{- end }}

{{- define "shoal.cpImage" -}}
{{ .Values.controlPlane.image.repository }}:{{ .Values.controlPlane.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "shoal.proxyImage" -}}
{{ .Values.injector.proxy.image.repository }}:{{ .Values.injector.proxy.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "shoal.proxyInitImage" -}}
{{ .Values.injector.proxy.initImage.repository }}:{{ .Values.injector.proxy.initImage.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "shoal.webhookSecret" -}}shoal-webhook-tls{{- end }}

{{/*
The sidecar injector's configuration file (SHOAL_CP_INJECTOR_CONFIG_FILE): the fields the control plane's
inject::Template reads, which refuses unknown ones. Its checksum on the pod template restarts the control
plane when it changes, since the file is read at start-up.
*/}}
{{- define "shoal.injectorConfig" -}}
{{- $p := .Values.injector.proxy -}}
image: {{ include "shoal.proxyImage" . | quote }}
init_image: {{ include "shoal.proxyInitImage" . | quote }}
image_pull_policy: {{ $p.image.pullPolicy }}
uid: {{ $p.uid }}
ports:
  outbound: {{ $p.ports.outbound }}
  inbound: {{ $p.ports.inbound }}
  admin: {{ $p.ports.admin }}
log_level: {{ $p.logLevel | quote }}
log_format: {{ $p.logFormat }}
resources:
  requests:
    {{- with $p.resources.requests }}
    {{- toYaml . | nindent 4 }}
    {{- else }} {}
    {{- end }}
  limits:
    {{- with $p.resources.limits }}
    {{- toYaml . | nindent 4 }}
    {{- else }} {}
    {{- end }}
discovery_addr: "https://{{ include "shoal.name" . }}.{{ .Release.Namespace }}.svc:15010"
control_plane_identity: "spiffe://{{ .Values.controlPlane.trustDomain }}/ns/{{ .Release.Namespace }}/sa/shoal-control-plane"
scrape_annotations: {{ $p.scrapeAnnotations }}
token_audience: {{ .Values.controlPlane.tokenAudience | quote }}
token_expiration_seconds: {{ $p.tokenExpirationSeconds }}
{{- end }}

{{/* Refuse combinations that would install something that cannot work, saying why. */}}
{{- define "shoal.checks" -}}
{{- $cp := .Values.controlPlane -}}
{{- if and (gt (int $cp.replicas) 1) $cp.persistence.enabled -}}
{{- fail "controlPlane.replicas > 1 needs controlPlane.persistence.enabled=false: the replicas of a Deployment would share one volume claim, and only one process can open the store (see values-ha.yaml)" -}}
{{- end -}}
{{- if and (gt (int $cp.replicas) 1) (not $cp.kubernetesDiscovery) (not .Values.ca.existingSecret) -}}
{{- fail "controlPlane.replicas > 1 needs controlPlane.kubernetesDiscovery=true (the replicas then share one CA in the Secret shoal-ca-state) or ca.existingSecret: otherwise each replica has its own store, so with generated roots each would run a different CA and proxies served by one replica would not trust workloads certified by another" -}}
{{- end -}}
{{- if and .Values.injector.enabled (not $cp.kubernetesDiscovery) -}}
{{- fail "injector.enabled needs controlPlane.kubernetesDiscovery=true: injected proxies certify themselves with their projected service-account token, which the control plane verifies with TokenReview only in Kubernetes mode" -}}
{{- end -}}
{{- if not (has .Values.injector.failurePolicy (list "Fail" "Ignore")) -}}
{{- fail (printf "injector.failurePolicy %q: expected Fail or Ignore" .Values.injector.failurePolicy) -}}
{{- end -}}
{{- if not (has .Values.injector.certificate.source (list "helm" "cert-manager")) -}}
{{- fail (printf "injector.certificate.source %q: expected helm or cert-manager" .Values.injector.certificate.source) -}}
{{- end -}}
{{- if not (has $cp.logFormat (list "plain" "json")) -}}
{{- fail (printf "controlPlane.logFormat %q: expected plain or json" $cp.logFormat) -}}
{{- end -}}
{{- end }}
