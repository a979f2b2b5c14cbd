#!/usr/bin/env bash
# Starts the whole local pipeline: PostgreSQL, tansu (Kafka API) and sluice, all on
# 127.0.0.1, installing what is missing. Safe to run twice. Writes .data/env.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DATA="$ROOT/.data"
PG_PORT="${PG_PORT:-15432}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
MQTT_ADDR="${MQTT_ADDR:-127.0.0.1:1883}"
HTTP_ADDR="${HTTP_ADDR:-127.0.0.1:9464}"
INGEST_ADDR="${INGEST_ADDR:-127.0.0.1:8080}"

ensure_deps
build
mkdir -p "$DATA"
start_postgres "$DATA/pg" "$PG_PORT"
start_tansu "$DATA/kafka" "$KAFKA_PORT"

cat >"$DATA/env" <<ENV
DATABASE_URL=postgres://sluice@127.0.0.1:$PG_PORT/sluice
KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT
MQTT_ADDR=$MQTT_ADDR
HTTP_ADDR=$HTTP_ADDR
INGEST_ADDR=$INGEST_ADDR
ENV
set -a; source "$DATA/env"; set +a
export SLUICE__INGRESS__LISTEN="$MQTT_ADDR" SLUICE__HTTP__LISTEN="$HTTP_ADDR" SLUICE__INGRESS__HTTP__LISTEN="$INGEST_ADDR"

if ! running "$DATA/sluice.pid"; then
  log "starting sluice (MQTT on $MQTT_ADDR, HTTP readings on http://$INGEST_ADDR/v1/readings, dashboard on http://$INGEST_ADDR/dashboard/, metrics on http://$HTTP_ADDR/metrics)"
  nohup env "${LOCAL_FLEET[@]}" "$ROOT/target/release/sluice" --config "$ROOT/broker.toml" >"$DATA/sluice.log" 2>&1 &
  echo $! >"$DATA/sluice.pid"
  if ! wait_port "${MQTT_ADDR%:*}" "${MQTT_ADDR##*:}" sluice ||
    ! wait_port "${INGEST_ADDR%:*}" "${INGEST_ADDR##*:}" sluice; then
    tail -20 "$DATA/sluice.log" >&2
    exit 1
  fi
fi
log "up: $(tr '\n' ' ' <"$DATA/env")"
