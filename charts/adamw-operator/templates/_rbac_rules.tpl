{{/*
Rules the operator needs wherever it runs jobs (ClusterRole or per-namespace Role): exactly
the calls in operator/adamw_operator/kube.py plus what Kopf itself does (watch the jobs and
worker pods, post events). The operator never writes a job except its /status, and only
deletes a job for ttlSecondsAfterFinished; owner references clean up the children.
Children are only ever created, never patched or updated: the trainer config is an
immutable ConfigMap named by a hash of the job's uid and its content (a changed config is a
new ConfigMap), and the Service and NetworkPolicy are created once. So the operator can
create ConfigMaps, but cannot change or delete one it did not create (nor one it did).
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
  verbs: [create]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [create]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}
