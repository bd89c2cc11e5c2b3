{{/* Chart name, truncated to 63 characters (the DNS label limit). */}}
{{- define "celery-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified name: the release name alone when it already contains the chart name,
so `helm install celery-operator ...` yields objects named `celery-operator`.
*/}}
{{- define "celery-operator.fullname" -}}
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

{{- define "celery-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "celery-operator.labels" -}}
helm.sh/chart: {{ include "celery-operator.chart" . }}
{{ include "celery-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: celery-operator
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels: stable across upgrades (a Deployment's selector is immutable). */}}
{{- define "celery-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "celery-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "celery-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "celery-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "celery-operator.leaseName" -}}
{{- default (include "celery-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{- define "celery-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The operator's permissions on the namespaced objects it watches and creates, generated from
operator/celery_operator/rbac.py into files/rbac/ (dev/gen_manifests.py). Bound cluster-wide
(ClusterRole) when watchNamespaces is empty, else per namespace (Role).
*/}}
{{- define "celery-operator.namespacedRules" -}}
{{ .Files.Get "files/rbac/namespaced.yaml" }}
{{- with .Values.rbac.extraRules }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Cluster-scoped reads kopf needs in every mode: CRD discovery, and namespaces for all-namespaces watching. */}}
{{- define "celery-operator.clusterReadRules" -}}
{{ .Files.Get "files/rbac/cluster-read.yaml" }}
{{- end }}

{{/* Leader election: a Lease in the release namespace only. */}}
{{- define "celery-operator.leaseRules" -}}
{{ .Files.Get "files/rbac/lease.yaml" }}
{{- end }}
