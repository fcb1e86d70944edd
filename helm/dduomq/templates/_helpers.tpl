{{/*
Chart name, truncated to the 63 characters Kubernetes allows in names and labels.
*/}}
{{- define "dduomq.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart> (or the release name when it already contains the
chart name), truncated to 63 characters.
*/}}
{{- define "dduomq.fullname" -}}
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

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "dduomq.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels.
*/}}
{{- define "dduomq.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dduomq.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "dduomq.labels" -}}
helm.sh/chart: {{ include "dduomq.chart" . }}
{{ include "dduomq.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels of the brokers. The headless Service carries the same
name/component/instance labels, and the EndpointSlice controller copies a
Service's labels onto its EndpointSlices: that is what the operator's
--broker-selector and the broker ServiceMonitor match.
*/}}
{{- define "dduomq.broker.selectorLabels" -}}
{{ include "dduomq.selectorLabels" . }}
app.kubernetes.io/component: broker
{{- end }}

{{/*
Selector labels of the operator.
*/}}
{{- define "dduomq.operator.selectorLabels" -}}
{{ include "dduomq.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
The operator's --broker-selector: the broker headless Service's labels.
*/}}
{{- define "dduomq.broker.endpointSelector" -}}
{{- printf "app.kubernetes.io/name=%s,app.kubernetes.io/component=broker,app.kubernetes.io/instance=%s" (include "dduomq.name" .) .Release.Name }}
{{- end }}

{{/*
The operator's pods as a label selector (the uninstall hook waits for them).
*/}}
{{- define "dduomq.operator.podSelector" -}}
{{- printf "app.kubernetes.io/name=%s,app.kubernetes.io/component=operator,app.kubernetes.io/instance=%s" (include "dduomq.name" .) .Release.Name }}
{{- end }}

{{/*
Names. The StatefulSet's name is kept to 52 characters, so that its pods'
controller-revision-hash label (<name>-<10 character hash>) stays a valid label
value.
*/}}
{{- define "dduomq.broker.fullname" -}}
{{- printf "%s-broker" (include "dduomq.fullname" . | trunc 45 | trimSuffix "-") }}
{{- end }}

{{- define "dduomq.operator.fullname" -}}
{{- printf "%s-operator" (include "dduomq.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{/*
Images: repository:tag, the tag defaulting to the chart's appVersion.
*/}}
{{- define "dduomq.broker.image" -}}
{{- printf "%s:%s" .Values.broker.image.repository (.Values.broker.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "dduomq.operator.image" -}}
{{- printf "%s:%s" .Values.operator.image.repository (.Values.operator.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
The client Service's address, for the CLI (`--server`).
*/}}
{{- define "dduomq.clientAddress" -}}
{{- printf "%s.%s.svc:%v" (include "dduomq.fullname" .) .Release.Namespace .Values.broker.service.grpcPort }}
{{- end }}

{{/*
The replication factor, validated: the broker count must be whole groups.
*/}}
{{- define "dduomq.replicationFactor" -}}
{{- $factor := int .Values.broker.replicationFactor }}
{{- if ne (mod (int .Values.broker.replicas) $factor) 0 }}
{{- fail (printf "broker.replicas (%v) must be a multiple of broker.replicationFactor (%v): scaling adds or removes whole groups" .Values.broker.replicas $factor) }}
{{- end }}
{{- $factor }}
{{- end }}

{{/*
The broker config overlay with `[replication] factor` set from
broker.replicationFactor when it is above 1 (a factor of 1 renders the overlay
unchanged). A `[replication]` table in broker.config keeps its other keys: the
factor goes in at its top; a `factor` key of its own is refused (two sources).
*/}}
{{- define "dduomq.broker.configOverlay" -}}
{{- $factor := int (include "dduomq.replicationFactor" .) }}
{{- $overlay := .Values.broker.config | default "" }}
{{- if .Values.auth.enabled }}
{{- if regexMatch "(?m)^\\s*\\[auth\\]" $overlay }}
{{- fail "broker.config sets [auth]: set the auth values instead" }}
{{- end }}
{{- if and (gt $factor 1) (not .Values.auth.brokerUser) }}
{{- fail "auth.brokerUser is required with broker.replicationFactor above 1: the user (admin on cluster) the brokers replicate as" }}
{{- end }}
{{- $overlay = printf "%s\n[auth]\nenabled = true\nusers_file = \"/var/run/dduomq/users/users.toml\"\nsealing_key_file = \"/var/run/dduomq/sealing/sealing.key\"\nbroker_user = %q\nprotect_metrics = %t\n" $overlay (.Values.auth.brokerUser | default "") .Values.auth.protectMetrics }}
{{- end }}
{{- if gt $factor 1 }}
{{- if regexMatch "(?m)^\\s*\\[replication\\]" $overlay }}
{{- if regexMatch "(?ms)^\\s*\\[replication\\][^\\[]*^\\s*factor\\s*=" $overlay }}
{{- fail "broker.config sets [replication] factor: set broker.replicationFactor instead" }}
{{- end }}
{{- regexReplaceAll "(?m)^\\s*\\[replication\\][ \\t]*$" $overlay (printf "[replication]\nfactor = %d" $factor) }}
{{- else }}
{{- printf "%s\n[replication]\nfactor = %d\n" $overlay $factor }}
{{- end }}
{{- else }}
{{- $overlay }}
{{- end }}
{{- end }}
