{{/*
Rules the operator needs wherever it runs jobs (ClusterRole or per-namespace Role): exactly
the calls in operator/adamw_operator/kube.py plus what Kopf itself does (watch the jobs and
worker pods, post events). The operator never writes a job except its /status, and only
deletes a job for ttlSecondsAfterFinished; owner references clean up the children.
*/}}
{{- define "adamw-operator.namespacedRules" -}}
- apiGroups: [training.adamw.io]
  resources: [adamwtrainingjobs]
  verbs: [get, list, watch, delete]
- apiGroups: [training.adamw.io]
  resources: [adamwtrainingjobs/status]
  verbs: [patch]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch, create, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [create]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [create, patch]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}
