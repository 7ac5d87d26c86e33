{{/*
Names, labels and the image of the hftpipe operator chart (Strimzi's helper layout).
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "hftpipe-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects: fullnameOverride, else the release name when it
already contains the chart name, else "<release>-<chart>". 63 characters at most (DNS label).
*/}}
{{- define "hftpipe-operator.fullname" -}}
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

{{/* "<chart>-<version>" for the helm.sh/chart label. */}}
{{- define "hftpipe-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator pods: minimal, since Deployment selectors are immutable. */}}
{{- define "hftpipe-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hftpipe-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Every label of every object of the chart. */}}
{{- define "hftpipe-operator.labels" -}}
helm.sh/chart: {{ include "hftpipe-operator.chart" . }}
{{ include "hftpipe-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: hftpipe
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The operator image: repository:tag (tag defaults to appVersion), or @digest. */}}
{{- define "hftpipe-operator.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion | toString }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The ServiceAccount the operator runs as. */}}
{{- define "hftpipe-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "hftpipe-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Name of the KopfPeering objects the replicas share. */}}
{{- define "hftpipe-operator.peeringName" -}}
{{- default (include "hftpipe-operator.fullname" .) .Values.operator.peeringName }}
{{- end }}

{{/* Watched namespaces, checked: the schema requires them, this names the fix. */}}
{{- define "hftpipe-operator.watchNamespaces" -}}
{{- if not .Values.watchNamespaces }}
{{- fail "watchNamespaces is empty: name the namespaces whose ReplayJobs the operator handles (a cluster-wide operator would need Secret access in every namespace)" }}
{{- end }}
{{- join "," .Values.watchNamespaces }}
{{- end }}
