{{- define "extproc.name" -}}{{ .Chart.Name }}{{- end -}}

{{- define "extproc.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "extproc.labels" -}}
app.kubernetes.io/name: {{ include "extproc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "extproc.selectorLabels" -}}
app.kubernetes.io/name: {{ include "extproc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Where Envoy reaches sidecar worker i, as the sidecar's --listen address. */}}
{{- define "extproc.sidecarListen" -}}
{{- if eq .Values.sidecar.transport "tcp" -}}127.0.0.1:{{ .Values.sidecar.grpcPort }}
{{- else -}}unix:/run/extproc/ext.sock{{- end -}}
{{- end -}}

{{/* The Envoy bootstrap: envoy/gateway.yaml (copied to files/) with its placeholders filled. */}}
{{- define "extproc.failoverCluster" -}}
{{- toJson (dict "name" (join "~" .) "connect_timeout" "1s" "lb_policy" "CLUSTER_PROVIDED" "cluster_type" (dict "name" "envoy.clusters.aggregate" "typed_config" (dict "@type" "type.googleapis.com/envoy.extensions.clusters.aggregate.v3.ClusterConfig" "clusters" .))) -}}
{{- end -}}

{{- define "extproc.envoyConfig" -}}
{{- $v := .Values -}}
{{- $endpoints := list -}}
{{- range $i := until (int $v.sidecar.workers) -}}
{{- if eq $v.sidecar.transport "tcp" -}}
{{- $endpoints = append $endpoints (dict "endpoint" (dict "address" (dict "socket_address" (dict "address" "127.0.0.1" "port_value" (add $v.sidecar.grpcPort $i))))) -}}
{{- else -}}
{{- $path := ternary "/run/extproc/ext.sock" (printf "/run/extproc/ext-%d.sock" $i) (eq (int $v.sidecar.workers) 1) -}}
{{- $endpoints = append $endpoints (dict "endpoint" (dict "address" (dict "pipe" (dict "path" $path)))) -}}
{{- end -}}
{{- end -}}
{{- $pools := list -}}
{{- range $p := $v.pools -}}
{{- $cluster := dict "name" $p.name "type" "STRICT_DNS" "connect_timeout" "1s" "load_assignment" (dict "cluster_name" $p.name "endpoints" (list (dict "lb_endpoints" (list (dict "endpoint" (dict "address" (dict "socket_address" (dict "address" $p.host "port_value" (int $p.port))))))))) -}}
{{- $pools = append $pools (printf "  - %s" (toJson $cluster)) -}}
{{- end -}}
{{- /* Failover clusters (envoy/README.md "Fallbacks"): one per ordered chain of a pool and up
       to policy.routing.max_fallbacks others, named pool~fallback, as the sidecar names them. */ -}}
{{- $depth := int (dig "routing" "max_fallbacks" 1 $v.policy) -}}
{{- if gt $depth 2 -}}{{- fail "policy.routing.max_fallbacks: the chart generates failover clusters for at most 2" -}}{{- end -}}
{{- if ge $depth 1 -}}
{{- range $a := $v.pools -}}{{- range $b := $v.pools -}}{{- if ne $a.name $b.name -}}
{{- $pools = append $pools (printf "  - %s" (include "extproc.failoverCluster" (list $a.name $b.name))) -}}
{{- if ge $depth 2 -}}{{- range $c := $v.pools -}}{{- if and (ne $c.name $a.name) (ne $c.name $b.name) -}}
{{- $pools = append $pools (printf "  - %s" (include "extproc.failoverCluster" (list $a.name $b.name $c.name))) -}}
{{- end -}}{{- end -}}{{- end -}}
{{- end -}}{{- end -}}{{- end -}}
{{- end -}}
{{- $cfg := .Files.Get "files/gateway.yaml" -}}
{{- $cfg = replace "${LISTEN_ADDRESS}" "0.0.0.0" $cfg -}}
{{- $cfg = replace "${EXT_PROC_PORT}" (toString $v.envoy.port) $cfg -}}
{{- $cfg = replace "${EXT_AUTHZ_PORT}" (toString $v.envoy.authzPort) $cfg -}}
{{- $cfg = replace "${ADMIN_PORT}" (toString $v.envoy.adminPort) $cfg -}}
{{- $cfg = replace "${OPS_PORT}" (toString $v.envoy.opsPort) $cfg -}}
{{- $cfg = replace "${BUFFER_LIMIT_BYTES}" (toString (int $v.envoy.bufferLimitBytes)) $cfg -}}
{{- $cfg = replace "${MESSAGE_TIMEOUT}" $v.envoy.messageTimeout $cfg -}}
{{- $cfg = replace "${ROUTE_TIMEOUT}" $v.envoy.routeTimeout $cfg -}}
{{- $cfg = replace "${ACCESS_LOG_PATH}" "/dev/stdout" $cfg -}}
{{- $cfg = replace "${OTLP_HOST}" $v.otel.host $cfg -}}
{{- $cfg = replace "${OTLP_PORT}" (toString (int $v.otel.port)) $cfg -}}
{{- $cfg = replace "${TRACE_SAMPLING_PERCENT}" (toString (ternary $v.envoy.traceSamplingPercent 0 (ne $v.otel.endpoint ""))) $cfg -}}
{{- $cfg = replace "${SIDECAR_ENDPOINTS}" (toJson $endpoints) $cfg -}}
{{- $cfg = replace "${POOL_CLUSTERS}" (join "\n" $pools) $cfg -}}
{{- $cfg = replace "${MAX_FALLBACKS}" (toString (max 1 $depth)) $cfg -}}
{{- $cfg = replace "${REQUEST_TIMEOUT}" $v.envoy.requestTimeout $cfg -}}
{{- /* The auth guard's Lua (envoy/auth_guard.lua), its thresholds first, as one JSON string. */ -}}
{{- $guard := printf "local MAX_FAILS, WINDOW_S = %d, %d\n%s" (int $v.envoy.authGuard.failures) (int $v.envoy.authGuard.windowSeconds) (.Files.Get "files/auth_guard.lua") -}}
{{- $cfg = replace "${AUTH_GUARD_LUA}" (toJson $guard) $cfg -}}
{{- $cfg = replace "${USAGE_LUA}" (toJson (.Files.Get "files/usage.lua")) $cfg -}}
{{- $cfg -}}
{{- end -}}
