#!/usr/bin/env bash
# The whole pipeline with the simulator: scripts/up.sh, then 1,000 virtual sensors
# publishing QoS 1 for a bounded time, then a summary from the database.
#   scripts/demo.sh [--duration SECONDS] [--sensors N] [--interval-ms MS] [--format json|cbor]
# The stack keeps running afterwards (tail it, query it); scripts/down.sh stops it.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION=60 SENSORS=1000 INTERVAL_MS=1000 FORMAT=json
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION="$2"; shift 2 ;;
    --sensors) SENSORS="$2"; shift 2 ;;
    --interval-ms) INTERVAL_MS="$2"; shift 2 ;;
    --format) FORMAT="$2"; shift 2 ;;
    *) echo "usage: $0 [--duration S] [--sensors N] [--interval-ms MS] [--format json|cbor]" >&2; exit 2 ;;
  esac
done

bash "$ROOT/scripts/up.sh"
set -a; source "$ROOT/.data/env"; set +a
PREFIX="demo$(date +%s)"
log "simulating $SENSORS sensors for ${DURATION}s (QoS 1, $FORMAT, one reading per ${INTERVAL_MS} ms each)"
"$ROOT/target/release/sluice-sim" --addr "$MQTT_ADDR" --sensors "$SENSORS" --duration "$DURATION" \
  --interval-ms "$INTERVAL_MS" --qos 1 --format "$FORMAT" --prefix "$PREFIX" \
  --verify-db "$DATABASE_URL" --json "$ROOT/.data/demo-report.json"

psql_q() { psql "$DATABASE_URL" -X -q "$@"; }
ROWS=$(psql_q -tAc "SELECT count(*) FROM readings WHERE starts_with(device_id, '$PREFIX-')")
ACKED=$(python3 -c "import json;print(json.load(open('$ROOT/.data/demo-report.json'))['acked'])")
log "summary"
echo "acknowledged QoS 1 readings: $ACKED"
echo "rows in readings for this run: $ROWS"
[ "$ROWS" = "$ACKED" ] && echo "every acknowledged reading is in the database, once" || echo "MISMATCH"
echo
echo "Readings per minute for five devices (time_bucket):"
psql_q -c "SELECT time_bucket('1 minute', time) AS minute, device_id, count(*) AS readings,
                  round(avg(value)::numeric, 2) AS avg_value
           FROM readings WHERE device_id IN ('$PREFIX-0','$PREFIX-1','$PREFIX-2','$PREFIX-3','$PREFIX-4')
           GROUP BY minute, device_id ORDER BY device_id, minute"
echo "Still running. Tail live readings:  mosquitto_sub -h ${MQTT_ADDR%:*} -p ${MQTT_ADDR##*:} -t 'sensors/#' -v"
echo "Dashboard:  http://$INGEST_ADDR/dashboard/     Read API:  curl -s http://$INGEST_ADDR/v1/status"
echo "Query:  psql $DATABASE_URL     Metrics: curl -s http://$HTTP_ADDR/metrics     Stop: scripts/down.sh"
[ "$ROWS" = "$ACKED" ]
