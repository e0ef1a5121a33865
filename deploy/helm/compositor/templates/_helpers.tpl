{{/*
Names and labels shared by every template. The selector labels are the subset of the labels that
never change across upgrades (a Deployment's selector is immutable), so the Service, the
PodDisruptionBudget and the ServiceMonitor select exactly the pods the Deployment owns.
*/}}

{{- define "compositor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "compositor.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "compositor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "compositor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "compositor.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "compositor.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: inference-server
{{- end -}}

{{- define "compositor.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/*
The container ports are the image's (deploy/docker: EXPOSE 8000 8001 8002, `compositor serve`
defaults), not settings: changing them here would point the probes and the Service at ports
nothing listens on. The Service's own ports are values.
*/}}
{{- define "compositor.containerPort.http" -}}8000{{- end -}}
{{- define "compositor.containerPort.grpc" -}}8001{{- end -}}
{{- define "compositor.containerPort.metrics" -}}8002{{- end -}}
