{{/* Names, labels and the pieces every service's objects share. */}}

{{- define "vk8s.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "vk8s.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The objects of one service: call with (dict "root" $ "service" "scheduler"). */}}
{{- define "vk8s.serviceName" -}}
{{- printf "%s-%s" (include "vk8s.fullname" .root) .service -}}
{{- end -}}

{{- define "vk8s.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vk8s.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- if .service }}
app.kubernetes.io/component: {{ .service }}
{{- end }}
{{- end -}}

{{- define "vk8s.labels" -}}
{{ include "vk8s.selectorLabels" . }}
app.kubernetes.io/part-of: vk8s
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "vk8s.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Env prefix of a service's settings: VK8S_<SERVICE>_. */}}
{{- define "vk8s.envPrefix" -}}
{{- printf "VK8S_%s_" (upper .) -}}
{{- end -}}

{{/* Service names in a fixed order, enabled ones only. */}}
{{- define "vk8s.enabledServices" -}}
{{- $enabled := list -}}
{{- range $name := list "gateway" "scheduler" "ipmanager" "vnode" "bootstrap" "kubeflow" "projector" -}}
{{- if (index $.Values.services $name).enabled -}}
{{- $enabled = append $enabled $name -}}
{{- end -}}
{{- end -}}
{{- join "," $enabled -}}
{{- end -}}

{{- define "vk8s.validate" -}}
{{- if and .Values.mesh.enabled .Values.mesh.permissiveOperatorPort .Values.mesh.metricsPrincipals -}}
{{- fail "mesh.metricsPrincipals needs mTLS on the operator port: set mesh.permissiveOperatorPort=false, or leave metricsPrincipals empty" -}}
{{- end -}}
{{- if and .Values.metrics.serviceMonitor.enabled .Values.metrics.podMonitor.enabled -}}
{{- fail "metrics.serviceMonitor and metrics.podMonitor would scrape every pod twice: enable one of them" -}}
{{- end -}}
{{- end -}}

{{/* The platform ClusterRoles (templates/rbac.yaml) and the ServiceAccount each is for: the gateway binds them in
every platform namespace it creates. A JSON list of {role, service_account, namespace}. */}}
{{/* The RoleBindings the gateway makes, as a JSON list of {role, service_account, namespace}, for `scope`:
"platform" (in each platform namespace it creates) or "tenant" (in each namespace it serves a Vk8s in, when
rbac.tenantNamespaces is empty; else the chart binds the tenant roles in the listed namespaces, and this is []). */}}
{{- define "vk8s.gatewayBindings" -}}
{{- $root := .root -}}
{{- $permissions := include "vk8s.rbacPermissions" $root | fromYaml -}}
{{- $bindings := list -}}
{{- if or (eq .scope "platform") (not $root.Values.rbac.tenantNamespaces) -}}
{{- range $name := splitList "," (include "vk8s.enabledServices" $root) -}}
{{- if index (index $permissions $name) $.scope -}}
{{- $serviceName := include "vk8s.serviceName" (dict "root" $root "service" $name) -}}
{{- $role := printf "%s-%s-%s" $root.Release.Namespace $serviceName $.scope -}}
{{- $bindings = append $bindings (dict "role" $role "service_account" $serviceName "namespace" $root.Release.Namespace) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson $bindings -}}
{{- end -}}

{{/* Namespaces no virtual cluster is made in: rbac.reservedNamespaces and the release's own. */}}
{{- define "vk8s.reservedNamespaces" -}}
{{- append .Values.rbac.reservedNamespaces .Release.Namespace | uniq | toJson -}}
{{- end -}}

{{/* The host apiserver as NetworkPolicyPeers: an ipBlock per address of the `kubernetes` Service's endpoints
(default namespace), looked up at install and upgrade. helm template and a client-side dry run have no cluster
to ask, so they need networkPolicy.egress.kubeApi.to set. */}}
{{- define "vk8s.apiServerPeers" -}}
{{- $peers := list -}}
{{- $endpoints := lookup "v1" "Endpoints" "default" "kubernetes" -}}
{{- range $subset := $endpoints.subsets | default list -}}
{{- range $address := $subset.addresses | default list -}}
{{- $cidr := printf "%s/%s" $address.ip (ternary "128" "32" (contains ":" $address.ip)) -}}
{{- $peers = append $peers (dict "ipBlock" (dict "cidr" $cidr)) -}}
{{- end -}}
{{- end -}}
{{- if not $peers -}}
{{- fail "networkPolicy.egress.kubeApi.to is empty and the apiserver's addresses could not be looked up (Endpoints default/kubernetes; helm template and --dry-run have no cluster): set it to the apiserver's addresses, e.g. [{ipBlock: {cidr: 10.0.0.1/32}}]" -}}
{{- end -}}
{{- toYaml $peers -}}
{{- end -}}

{{/* The nats-server variable holding NATS user <user>'s password: $VK8S_NATS_<USER>_PASSWORD (- as _). */}}
{{- define "vk8s.natsPasswordVariable" -}}
{{- printf "$VK8S_NATS_%s_PASSWORD" (. | upper | replace "-" "_") -}}
{{- end -}}
