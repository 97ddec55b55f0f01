{{/* Names and labels shared by every template. */}}

{{- define "tinymlops.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tinymlops.fullname" -}}
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

{{- define "tinymlops.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "tinymlops.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tinymlops
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "tinymlops.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tinymlops.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tinymlops.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tinymlops.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tinymlops.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "tinymlops.signingSecret" -}}
{{- default (printf "%s-signing-key" (include "tinymlops.fullname" .)) .Values.signingKey.existingSecret }}
{{- end }}

{{- define "tinymlops.storeClaim" -}}
{{- default (printf "%s-store" (include "tinymlops.fullname" .)) .Values.store.persistence.existingClaim }}
{{- end }}

{{- define "tinymlops.gatewayURL" -}}
{{- $scheme := ternary "https" "http" (ne .Values.gateway.tls.secretName "") }}
{{- default (printf "%s://%s-gateway.%s.svc:%v" $scheme (include "tinymlops.fullname" .) .Release.Namespace .Values.gateway.service.port) .Values.operator.gatewayURL }}
{{- end }}

{{/* The gateway's TLS Secret (tls.crt, tls.key, and ca.crt when a CA issued it), when it serves HTTPS. */}}
{{- define "tinymlops.gatewayTLSVolume" -}}
{{- with .Values.gateway.tls.secretName }}
- name: gateway-tls
  secret:
    secretName: {{ . }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{/* The store volume: the PVC, or an emptyDir shared by the containers of the operator pod. */}}
{{- define "tinymlops.storeVolume" -}}
- name: data
{{- if .Values.store.persistence.enabled }}
  persistentVolumeClaim:
    claimName: {{ include "tinymlops.storeClaim" . }}
{{- else }}
  emptyDir:
    sizeLimit: {{ .Values.store.emptyDirSizeLimit }}
{{- end }}
{{- end }}

{{/* The gateway container, used by its own Deployment or inside the operator pod. */}}
{{- define "tinymlops.gatewayContainer" -}}
- name: gateway
  image: {{ include "tinymlops.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command:
    {{- toYaml .Values.gateway.command | nindent 4 }}
    - --host
    - 0.0.0.0
    - --port
    - {{ .Values.gateway.port | quote }}
    {{- if .Values.gateway.authenticateReports }}
    - --registry-from-store
    {{- end }}
    {{- if .Values.gateway.tls.secretName }}
    - --tls-cert
    - /etc/tinymlops/gateway-tls/tls.crt
    - --tls-key
    - /etc/tinymlops/gateway-tls/tls.key
    {{- end }}
  env:
    - name: TINYMLOPS_STORE
      value: /var/lib/tinymlops/store
    - name: HOME
      value: /tmp
    {{- with .Values.gateway.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: http
      containerPort: {{ .Values.gateway.port }}
      protocol: TCP
  readinessProbe:
    httpGet:
      path: /healthz
      port: http
      scheme: {{ ternary "HTTPS" "HTTP" (ne .Values.gateway.tls.secretName "") }}
    periodSeconds: 10
  livenessProbe:
    httpGet:
      path: /healthz
      port: http
      scheme: {{ ternary "HTTPS" "HTTP" (ne .Values.gateway.tls.secretName "") }}
    initialDelaySeconds: 10
    periodSeconds: 20
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  resources:
    {{- toYaml .Values.gateway.resources | nindent 4 }}
  volumeMounts:
    - name: data
      mountPath: /var/lib/tinymlops
      readOnly: {{ .Values.gateway.storeReadOnly }}
    - name: tmp
      mountPath: /tmp
    {{- if .Values.gateway.tls.secretName }}
    - name: gateway-tls
      mountPath: /etc/tinymlops/gateway-tls
      readOnly: true
    {{- end }}
{{- end }}
