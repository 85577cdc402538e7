{{/* Names and labels shared by every template. */}}

{{- define "mailsync.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mailsync.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Name of one service's objects: <fullname>-<service>. Call with (dict "root" $ "svc" "fetcher"). */}}
{{- define "mailsync.svcname" -}}
{{- printf "%s-%s" (include "mailsync.fullname" .root) .svc | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mailsync.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "mailsync.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mailsync
{{- end -}}

{{/* Selector labels of one service. Call with (dict "root" $ "svc" "fetcher"). */}}
{{- define "mailsync.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mailsync.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .svc }}
{{- end -}}

{{- define "mailsync.image" -}}
{{- printf "%s-%s:%s" .root.Values.image.repository .svc (default .root.Chart.AppVersion .root.Values.image.tag) -}}
{{- end -}}

{{- define "mailsync.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mailsync.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "mailsync.secretName" -}}
{{- default (include "mailsync.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "mailsync.sasl" -}}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol -}}true{{- end -}}
{{- end -}}

{{/* Checks that fail the render with a message instead of producing a broken release. */}}
{{- define "mailsync.validate" -}}
{{- if and (include "mailsync.sasl" .) (not .Values.kafka.sasl.mechanism) -}}
{{- fail "kafka.securityProtocol is SASL_*: set kafka.sasl.mechanism (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)" -}}
{{- end -}}
{{- if and (include "mailsync.sasl" .) (not .Values.kafka.sasl.username) -}}
{{- fail "kafka.securityProtocol is SASL_*: set kafka.sasl.username" -}}
{{- end -}}
{{- if not .Values.secrets.existingSecret -}}
{{- if not .Values.secrets.mongoUri -}}
{{- fail "set secrets.mongoUri, or secrets.existingSecret naming a Secret with MAILSYNC_MONGO_URI" -}}
{{- end -}}
{{- if and (include "mailsync.sasl" .) (not .Values.secrets.kafkaSaslPassword) -}}
{{- fail "SASL is on: set secrets.kafkaSaslPassword, or secrets.existingSecret with MAILSYNC_KAFKA_SASL_PASSWORD" -}}
{{- end -}}
{{- end -}}
{{- range $svc, $s := .Values.services -}}
{{- if and $s.enabled $s.autoscaling.enabled $s.keda.enabled -}}
{{- fail (printf "services.%s: enable either autoscaling (HPA on CPU) or keda (consumer lag), not both" $svc) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Pod-level volumes every mailsync container uses: writable /tmp and optional CA secrets. */}}
{{- define "mailsync.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if .Values.kafka.caSecret }}
- name: kafka-ca
  secret:
    secretName: {{ .Values.kafka.caSecret }}
{{- end }}
{{- if .Values.mongo.caSecret }}
- name: mongo-ca
  secret:
    secretName: {{ .Values.mongo.caSecret }}
{{- end }}
{{- end -}}

{{- define "mailsync.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.kafka.caSecret }}
- name: kafka-ca
  mountPath: /etc/mailsync/kafka-ca
  readOnly: true
{{- end }}
{{- if .Values.mongo.caSecret }}
- name: mongo-ca
  mountPath: /etc/mailsync/mongo-ca
  readOnly: true
{{- end }}
{{- end -}}
