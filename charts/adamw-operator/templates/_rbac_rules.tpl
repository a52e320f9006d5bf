{{/*
Rules the operator needs wherever it runs jobs (ClusterRole or per-namespace Role).
Keep in step with operator/adamw_operator/RBAC.md; tests/chart checks the two agree.
*/}}
{{- define "adamw-operator.namespacedRules" -}}
- apiGroups: [training.adamw.io]
  resources: [adamwtrainingjobs]
  verbs: [get, list, watch, patch, delete]
- apiGroups: [training.adamw.io]
  resources: [adamwtrainingjobs/status]
  verbs: [get, patch]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, delete]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end }}
