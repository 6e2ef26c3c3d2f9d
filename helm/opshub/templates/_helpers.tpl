{{- /*
  z2jh's resource name prefix, computed as z2jh's "jupyterhub.fullname.dash" does from the same
  values (jupyterhub.fullnameOverride, jupyterhub.nameOverride), without calling into the
  subchart: "" by default (resources named hub, proxy-public), else "<prefix>-".
  opshub.kubernetes.service_host() derives the same name from z2jh's hub name.
*/}}
{{- define "opshub.z2jhPrefix" -}}
{{- $fullnameOverride := .Values.jupyterhub.fullnameOverride }}
{{- $name := "" }}
{{- if eq (typeOf $fullnameOverride) "string" }}
{{- $name = $fullnameOverride }}
{{- else }}
{{- $short := .Values.jupyterhub.nameOverride | default "jupyterhub" }}
{{- $name = contains $short .Release.Name | ternary .Release.Name (printf "%s-%s" .Release.Name $short) }}
{{- end }}
{{- if $name }}{{ $name }}-{{ end }}
{{- end }}

{{- /* The opshub service's resources: Deployment, Service, PVC, ConfigMap, ... */}}
{{- define "opshub.fullname" -}}
{{- include "opshub.z2jhPrefix" . }}opshub
{{- end }}

{{- /* z2jh's hub Secret, which holds the API token of jupyterhub.hub.services.opshub */}}
{{- define "opshub.hubSecret" -}}
{{- include "opshub.z2jhPrefix" . }}hub
{{- end }}

{{- define "opshub.metricsSecret" -}}
{{- .Values.service.metricsToken.existingSecret | default (printf "%s-metrics" (include "opshub.fullname" .)) }}
{{- end }}

{{- define "opshub.alertsSecret" -}}
{{- .Values.service.alertsToken.existingSecret | default (printf "%s-alerts" (include "opshub.fullname" .)) }}
{{- end }}

{{- /* opshub's settings, from the one values key */}}
{{- define "opshub.settings" -}}
{{- (.Values.jupyterhub.custom | default dict).opshub | default dict | toYaml }}
{{- end }}

{{- /* SQLite (on the PVC) unless history.database_url names another database */}}
{{- define "opshub.sqlite" -}}
{{- $settings := include "opshub.settings" . | fromYaml }}
{{- if not (dig "history" "database_url" "" $settings) }}true{{ end }}
{{- end }}

{{- define "opshub.baseUrl" -}}
{{- $url := .Values.jupyterhub.hub.baseUrl | default "/" }}
{{- ternary $url (printf "%s/" $url) (hasSuffix "/" $url) }}
{{- end }}

{{- define "opshub.selectorLabels" -}}
app.kubernetes.io/name: opshub
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: service
{{- end }}

{{- define "opshub.labels" -}}
{{ include "opshub.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "opshub.image" -}}
{{- printf "%s:%s" .Values.service.image.name (.Values.service.image.tag | default .Chart.AppVersion) }}
{{- end }}
