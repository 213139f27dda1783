{{/* The release's full name: the release name, with the chart's unless it already says it. */}}
{{- define "ovllm-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ovllm-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ovllm-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "ovllm-operator.selectorLabels" -}}
app.kubernetes.io/name: ovllm-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ovllm-operator.labels" -}}
{{ include "ovllm-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/*
What the operator does to an OVLLMDeployment's children, verb by verb; the same rules go into the
ClusterRole (every namespace) or into one Role per watched namespace. Children are written with
server-side apply (patch, and create for a new object), and read from the operator's watch cache
(list and watch, filtered to its own by label): never one by one.
*/}}
{{- define "ovllm-operator.rules" -}}
- apiGroups: [ovllm.io]
  resources: [ovllmdeployments]
  verbs: [get, list, watch, patch]
- apiGroups: [ovllm.io]
  resources: [ovllmdeployments/status]
  verbs: [get, patch]
# The autoscaler changes replicas as `kubectl scale` does.
- apiGroups: [ovllm.io]
  resources: [ovllmdeployments/scale]
  verbs: [get, patch]
# Engine and router Deployments; the router's are removed when spec.router is turned off.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch, delete]
# The router's identity, and its Role to read EndpointSlices: Kubernetes lets the operator grant
# only what it holds itself, hence the endpointslices rule below.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [monitoring.coreos.com]
  resources: [servicemonitors]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get, list, watch, create]
# Pods' readiness and why one is not scheduled go into status; the autoscaler finds the ready
# engine pods' addresses.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
# Only to say in status that a Secret the spec names is missing; never listed, never read by name
# other than those.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end -}}
