#!/usr/bin/env bash
# Drill (a): the Kafka broker is killed with SIGKILL for 20 s, then restarted. Acks stop,
# devices' inflight windows fill, memory stays bounded, nothing acknowledged is lost.
# `kafka-kill.sh http`: the sensors POST over HTTP instead; they get 503 with Retry-After,
# keep their readings and send them again, and nothing that got a 202 is lost.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
NAME=kafka-kill
case "${1:-}" in
  "") ;;
  http) NAME=kafka-kill-http SIM_ADDR="127.0.0.1:$INGEST_PORT" SIM_ARGS=(--transport http) ;;
  *) echo "usage: $0 [http]" >&2; exit 2 ;;
esac
fault() {
  sleep 15
  say "SIGKILL tansu; sluice RSS $(rss_mb "$DATA/sluice-main.pid") MB"
  kill9 "$DATA/kafka/tansu.pid"
  for i in 1 2 3 4; do
    sleep 5
    say "kafka down $((i * 5))s; sluice RSS $(rss_mb "$DATA/sluice-main.pid") MB"
  done
  start_tansu "$DATA/kafka" "$KAFKA_PORT"
  say "tansu restarted"
  sleep 15
  say "sluice RSS $(rss_mb "$DATA/sluice-main.pid") MB"
}
drill "$NAME"
