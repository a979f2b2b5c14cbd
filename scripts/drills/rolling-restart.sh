#!/usr/bin/env bash
# Drill: sluice is stopped with SIGTERM and started again, twice, under load; sensors at
# QoS 1 and 2 publish on a mapping that acknowledges on receipt, so every acknowledged
# reading was still in Sluice's hands when the signal came: the drain (stop reading, flush
# Kafka, send what is due, close) must get each one into the table. QoS 0 across SIGTERM
# is shown by the end-to-end test sigterm_drains_what_was_received_into_kafka.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
mkdir -p "$ROOT/.data"
CONFIG="$ROOT/.data/rolling-restart.toml"
{
  cat "$ROOT/broker.toml"
  printf '\n[[mappings]]\nfilter = "fast/{device_id}/{metric}"\nkafka_topic = "sensor.readings"\n'
  printf 'key = "{device_id}"\nack = "receipt"\nformat = "auto"\n'
} >"$CONFIG"
QOS="1,2" SIM_ARGS=(--topic-root fast)

restart() {
  local pid; pid="$(cat "$DATA/sluice-main.pid")"
  say "SIGTERM sluice"
  kill -TERM "$pid"
  for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    say "sluice did not stop within 30 s"; return 1
  fi
  say "sluice stopped: $(grep -c 'kafka producer flushed' "$DATA/sluice-main.log") clean stop(s) so far"
  start_sluice main all
  wait_port 127.0.0.1 "$MQTT_PORT" sluice
  say "sluice restarted"
}
fault() {
  sleep 15; restart
  sleep 15; restart
}
drill rolling-restart
