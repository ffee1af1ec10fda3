{{/* Name of the chart, truncated to the 63 characters Kubernetes allows in a name. */}}
{{- define "tidemark.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name of a release's resources. */}}
{{- define "tidemark.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels on every resource. */}}
{{- define "tidemark.labels" -}}
app.kubernetes.io/name: {{ include "tidemark.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Service account of the pods. */}}
{{- define "tidemark.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tidemark.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The correlate configuration file: `correlate.config`, with `state.policy` naming the
ConfigMap's `policy.yaml` when `correlate.policy` is not empty. */}}
{{- define "tidemark.correlateConfig" -}}
{{- $config := deepCopy .Values.correlate.config -}}
{{- if .Values.correlate.policy -}}
{{- $_ := set $config.state "policy" "/etc/tidemark/policy.yaml" -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{/* The api configuration file: `api.config`, with `server.tls` naming the files of
`api.tls.existingSecret` (mounted in `/etc/tidemark/tls`) when it is set. */}}
{{- define "tidemark.apiConfig" -}}
{{- $config := deepCopy .Values.api.config -}}
{{- with .Values.api.tls.existingSecret -}}
{{- $tls := dict "cert" "/etc/tidemark/tls/tls.crt" "key" "/etc/tidemark/tls/tls.key" -}}
{{- if $.Values.api.tls.clientCertificates -}}
{{- $_ := set $tls "client_ca" "/etc/tidemark/tls/ca.crt" -}}
{{- end -}}
{{- $_ := set $config.server "tls" $tls -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{/* The api's gRPC port: the port of `api.config.server.listen` (`0.0.0.0:50051`,
`[::]:50051`). */}}
{{- define "tidemark.apiPort" -}}
{{- $port := .Values.api.config.server.listen | toString | splitList ":" | last | atoi -}}
{{- if not $port -}}
{{- fail "api.config.server.listen must be an IP address and port (`0.0.0.0:50051`)" -}}
{{- end -}}
{{- $port -}}
{{- end -}}
