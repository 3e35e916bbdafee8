{{/* The release's name for Herald's objects, at most 63 characters. */}}
{{- define "herald.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "herald.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "herald.labels" -}}
{{ include "herald.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The metrics port: a default for releases upgraded with --reuse-values from a chart without it. */}}
{{- define "herald.metricsPort" -}}
{{- default 9102 .Values.service.metricsPort -}}
{{- end -}}

{{/* The metrics Service's name: the fullname cut to leave room for "-metrics" (63 at most). */}}
{{- define "herald.metricsServiceName" -}}
{{- printf "%s-metrics" (include "herald.fullname" . | trunc 55 | trimSuffix "-") -}}
{{- end -}}

{{- define "herald.secretName" -}}
{{- default (include "herald.fullname" .) .Values.existingSecret -}}
{{- end -}}

{{/* Refuses values that would make a broken cluster, naming the value. */}}
{{- define "herald.checks" -}}
{{- $budget := int (default "20" (index .Values.config "HERALD_SHUTDOWN_BUDGET_SECONDS")) -}}
{{- if lt (int .Values.terminationGracePeriodSeconds) (add $budget 10) -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be at least config.HERALD_SHUTDOWN_BUDGET_SECONDS (%d) + 10 (the node's 5 s of cancellation after the budget, and a margin), or Kubernetes kills nodes in the middle of their handover" (int .Values.terminationGracePeriodSeconds) $budget) -}}
{{- end -}}
{{- if eq (int (include "herald.metricsPort" .)) (int .Values.service.port) -}}
{{- fail (printf "service.metricsPort (%d) must differ from service.port: /metrics has a port of its own" (int .Values.service.port)) -}}
{{- end -}}
{{- if and .Values.autoscaling.hpa.enabled .Values.autoscaling.keda.enabled -}}
{{- fail "autoscaling.hpa.enabled and autoscaling.keda.enabled: choose one" -}}
{{- end -}}
{{- $partitions := int (default "256" (index .Values.config "HERALD_PARTITIONS")) -}}
{{- if and .Values.autoscaling.keda.enabled (gt (int .Values.autoscaling.keda.maxReplicas) $partitions) -}}
{{- fail (printf "autoscaling.keda.maxReplicas (%d) exceeds config.HERALD_PARTITIONS (%d): nodes beyond the partition count would own nothing" (int .Values.autoscaling.keda.maxReplicas) $partitions) -}}
{{- end -}}
{{- if and .Values.autoscaling.hpa.enabled (gt (int .Values.autoscaling.hpa.maxReplicas) $partitions) -}}
{{- fail (printf "autoscaling.hpa.maxReplicas (%d) exceeds config.HERALD_PARTITIONS (%d)" (int .Values.autoscaling.hpa.maxReplicas) $partitions) -}}
{{- end -}}
{{- if and (not .Values.existingSecret) (or (not .Values.secret.HERALD_REDIS_URL) (not .Values.secret.HERALD_AMQP_URL)) -}}
{{- fail "secret.HERALD_REDIS_URL and secret.HERALD_AMQP_URL are required unless existingSecret names a Secret that has them" -}}
{{- end -}}
{{- if and (not .Values.existingSecret) (index .Values.config "HERALD_KEYSTONE_URL") (not .Values.secret.HERALD_KEYSTONE_PASSWORD) -}}
{{- fail "secret.HERALD_KEYSTONE_PASSWORD is required while config.HERALD_KEYSTONE_URL is set (the node logs in for tokens, trusts and the catalog whatever HERALD_API_AUTH is), unless existingSecret names a Secret that has it; set HERALD_KEYSTONE_URL to \"\" to run without Keystone" -}}
{{- end -}}
{{- if and (not (or .Values.autoscaling.hpa.enabled .Values.autoscaling.keda.enabled)) (gt (int .Values.replicas) $partitions) -}}
{{- fail (printf "replicas (%d) exceeds config.HERALD_PARTITIONS (%d): nodes beyond the partition count would own nothing" (int .Values.replicas) $partitions) -}}
{{- end -}}
{{- end -}}
