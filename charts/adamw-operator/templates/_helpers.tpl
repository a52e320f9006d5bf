{{/* Chart name, cut to 63 characters (the DNS label limit for names). */}}
{{- define "adamw-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name, cut to 63 characters. If the release name already contains the
chart name it is not repeated.
*/}}
{{- define "adamw-operator.fullname" -}}
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

{{- define "adamw-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object the chart renders. */}}
{{- define "adamw-operator.labels" -}}
helm.sh/chart: {{ include "adamw-operator.chart" . }}
{{ include "adamw-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: adamw-operator
{{- end }}

{{/* Labels that select the operator's pods (immutable once installed). */}}
{{- define "adamw-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "adamw-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "adamw-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "adamw-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "adamw-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "adamw-operator.trainerImage" -}}
{{- printf "%s:%s" .Values.trainerImage.repository (default .Chart.AppVersion .Values.trainerImage.tag) }}
{{- end }}

{{/*
Whether a Prometheus-Operator object is rendered: `true`/`false` from values, or `auto`:
only when the cluster serves the kind (helm template: pass --api-versions).
Call with (list $ .Values.serviceMonitor.enabled "monitoring.coreos.com/v1/ServiceMonitor").
Returns "true" or "".
*/}}
{{- define "adamw-operator.enabled" -}}
{{- $root := index . 0 }}
{{- $value := index . 1 }}
{{- $api := index . 2 }}
{{- if eq (toString $value) "auto" }}
{{- if $root.Capabilities.APIVersions.Has $api }}true{{ end }}
{{- else if eq (toString $value) "true" }}true
{{- end }}
{{- end }}

{{/* Namespaces the operator watches: empty means the whole cluster. */}}
{{- define "adamw-operator.clusterWide" -}}
{{- if not .Values.watch.namespaces }}true{{ end }}
{{- end }}

{{/* Peering object kind: cluster-wide when watching all namespaces. */}}
{{- define "adamw-operator.peeringKind" -}}
{{- if include "adamw-operator.clusterWide" . }}ClusterKopfPeering{{ else }}KopfPeering{{ end }}
{{- end }}
