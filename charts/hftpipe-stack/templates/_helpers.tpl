{{/*
Chart name, truncated to 63 characters (a DNS label).
*/}}
{{- define "hftpipe-stack.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: `<release>-<chart>`, or the release name when it already contains the chart name.
*/}}
{{- define "hftpipe-stack.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
`chart` label value.
*/}}
{{- define "hftpipe-stack.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels: what identifies the release's pods (immutable in StatefulSets: keep minimal).
*/}}
{{- define "hftpipe-stack.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hftpipe-stack.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Every label of every object.
*/}}
{{- define "hftpipe-stack.labels" -}}
helm.sh/chart: {{ include "hftpipe-stack.chart" . }}
{{ include "hftpipe-stack.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: hftpipe
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Name of the Strimzi `Kafka` resource.
*/}}
{{- define "hftpipe-stack.kafkaName" -}}
{{- default (include "hftpipe-stack.fullname" .) .Values.kafka.clusterName | trunc 50 | trimSuffix "-" }}
{{- end }}

{{/*
Base name of the Redis objects (client Service, StatefulSet, Secret).
*/}}
{{- define "hftpipe-stack.redisName" -}}
{{- default (printf "%s-redis" (include "hftpipe-stack.fullname" .)) .Values.redis.name | trunc 54 | trimSuffix "-" }}
{{- end }}

{{/*
An image reference from {repository, tag, digest}: `repository:tag`, or with a digest
`repository:tag@digest` (the runtime pulls by digest; the tag stays for people).
*/}}
{{- define "hftpipe-stack.image" -}}
{{- if .digest }}
{{- printf "%s:%s@%s" .repository (toString .tag) .digest }}
{{- else }}
{{- printf "%s:%s" .repository (toString .tag) }}
{{- end }}
{{- end }}

{{/*
Secret holding the Redis password, and its key.
*/}}
{{- define "hftpipe-stack.redisSecretName" -}}
{{- default (include "hftpipe-stack.redisName" .) .Values.redis.auth.existingSecret }}
{{- end }}

{{/*
Whether helm talks to a cluster: listing ConfigMaps of the release's namespace returns a
list there, and nothing in `helm template`, `helm lint` and client-side dry runs.
*/}}
{{- define "hftpipe-stack.online" -}}
{{- if lookup "v1" "ConfigMap" .Release.Namespace "" }}true{{ end }}
{{- end }}

{{/*
"true" when the objects of API `group/version` may be rendered: always offline (helm
template shows what the values ask for; `make manifests` renders the raw manifests
this way), and online only when the cluster serves the API.
Call as: include "hftpipe-stack.served" (list $ "kafka.strimzi.io/v1")
*/}}
{{- define "hftpipe-stack.served" -}}
{{- $root := index . 0 }}
{{- $api := index . 1 }}
{{- if or (not (include "hftpipe-stack.online" $root)) ($root.Capabilities.APIVersions.Has $api) }}true{{ end }}
{{- end }}

{{/*
Whether to render the Strimzi objects; fails an install into a cluster without Strimzi's
v1 API with a message that says what to do (Kubernetes' own "no matches for kind" does not).
*/}}
{{- define "hftpipe-stack.kafkaEnabled" -}}
{{- if .Values.kafka.enabled }}
{{- if not (include "hftpipe-stack.served" (list . "kafka.strimzi.io/v1")) }}
{{- fail "kafka.enabled is true but the cluster does not serve kafka.strimzi.io/v1: install Strimzi's cluster operator (0.49 or newer) first (see the chart's README), or set kafka.enabled=false" }}
{{- end }}true
{{- end }}
{{- end }}

{{/*
Whether to render the Prometheus Operator objects (PodMonitors, PrometheusRule).
*/}}
{{- define "hftpipe-stack.monitoringEnabled" -}}
{{- if and .Values.monitoring.enabled (include "hftpipe-stack.served" (list . "monitoring.coreos.com/v1")) }}true{{ end }}
{{- end }}

{{/*
Whether the Kafka cluster uses `simple` authorization (ACLs).
*/}}
{{- define "hftpipe-stack.kafkaAuthorization" -}}
{{- if or .Values.kafka.authorization.enabled .Values.kafka.user.enabled }}true{{ end }}
{{- end }}

{{/*
Restricted security context of the chart's own containers (Pod Security Standard "restricted").
*/}}
{{- define "hftpipe-stack.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}
