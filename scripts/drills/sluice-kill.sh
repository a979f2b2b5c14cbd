#!/usr/bin/env bash
# Drill (c): the sluice process is killed with SIGKILL mid-load and restarted; sensors
# reconnect and send again what was never acknowledged.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
fault() {
  sleep 20
  say "SIGKILL sluice"
  kill9 "$DATA/sluice-main.pid"
  sleep 2
  start_sluice main all
  wait_port 127.0.0.1 "$MQTT_PORT" sluice
  say "sluice restarted"
}
drill sluice-kill
