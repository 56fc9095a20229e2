#!/usr/bin/env bash
# Writes a plugind.db with the v1 (JSON) schema, as plugind b97b77a stores it.
set -euo pipefail
BIN=$1; STATE=$2
rm -rf "$STATE"; mkdir -p "$STATE"
"$BIN/plugind" --plugin-dir "$BIN/plugins" --state-dir "$STATE" --log-level warn &
PID=$!
S=$STATE/plugind.sock
for i in $(seq 100); do [ -S "$S" ] && break; sleep 0.05; done
G="$BIN/grpcurl -plaintext -unix"
C=plugincontrol.v1.PluginControlService
SUM=$(sha256sum "$BIN/plugins/echo" | cut -d' ' -f1)
$G -d "{\"spec\":{\"name\":\"alpha\",\"binary\":\"echo\",\"args\":[\"--one\",\"two words\"],\"env\":{\"GREETING\":\"hello\",\"LEVEL\":\"3\"},\"sha256\":\"$SUM\",\"config\":\"Y29uZmlnLWFscGhh\",\"start_timeout\":\"7s\",\"health_policy\":{\"panic_threshold\":5,\"panic_window\":\"90s\",\"restart_limit\":4,\"restart_period\":\"120s\",\"backoff_initial\":\"0.2s\",\"backoff_max\":\"5s\",\"unhealthy_action\":\"UNHEALTHY_ACTION_RESTART\"}}}" $S $C/Load >/dev/null
$G -d '{"name":"alpha"}' $S $C/Reload >/dev/null
$G -d '{"name":"alpha","validate_only":true}' $S $C/Reload >/dev/null
$G -d '{"name":"alpha"}' $S $C/Reload >/dev/null
$G -d '{"spec":{"name":"beta","binary":"echo"}}' $S $C/Load >/dev/null
$G -d '{"name":"beta","spec":{"name":"beta","binary":"echo","args":["v2"],"config":"djI="}}' $S $C/Reload >/dev/null
$G -d '{"name":"beta","spec":{"name":"beta","binary":"notready"}}' $S $C/Reload >/dev/null 2>&1 || true
$G -d '{"spec":{"name":"gamma","binary":"echo"}}' $S $C/Load >/dev/null
$G -d '{"name":"gamma"}' $S $C/Unload >/dev/null
$G -d '{"spec":{"name":"delta","binary":"crasher","config":"Y3Jhc2hfYWZ0ZXI9NTBtcw==","health_policy":{"restart_limit":1,"restart_period":"60s","backoff_initial":"0.01s"}}}' $S $C/Load >/dev/null
for i in $(seq 100); do
  if $G -d '{"names":["delta"]}' $S $C/Health | grep -q PLUGIN_STATE_UNHEALTHY; then break; fi; sleep 0.1
done
$G -d '{}' $S $C/ListPlugins > "$STATE/list.json"
$G -d '{"limit":100}' $S $C/ListAudit > "$STATE/audit.json"
$G -d '{}' $S $C/Health > "$STATE/health.json"
kill -TERM $PID; wait $PID
