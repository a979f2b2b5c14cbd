#!/usr/bin/env bash
# Drill (i): several processes. Two ingress processes share the MQTT port (SO_REUSEPORT)
# and three writers share the partitions through their lease in the database. A writer is
# SIGKILLed at 20 s, an ingress at 40 s (its sensors reconnect through the same port and
# reach the other), a writer is added at 60 s. Besides the verdict it prints the takeover
# as the rows saw it and what each writer wrote.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
DURATION="${DRILL_DURATION:-90}"
LEASE_MS=5000
export SLUICE__INGRESS__REUSE_PORT=true SLUICE__WRITER__LEASE_MS=$LEASE_MS

# ingress N: an ingress process with embedded-broker ports of its own.
ingress() {
  start_sluice "ingress$1" ingress \
    SLUICE__BROKER__V4__1__LISTEN="127.0.0.1:$((31883 + 10 * $1))" \
    SLUICE__BROKER__V5__1__LISTEN="127.0.0.1:$((31884 + 10 * $1))"
}
writer() { start_sluice "writer$1" writer; date +%s.%N >"$DATA/writer$1.started"; }
start_stack() {
  ingress 1
  ingress 2
  for w in 1 2 3; do writer "$w"; done
}
# written N: rows writer N has written, from its /metrics (any labels).
written() {
  curl -s "http://127.0.0.1:$(cat "$DATA/sluice-writer$1.port")/metrics" |
    awk '/^sluice_writer_rows_total[ {]/ {print $NF; found=1} END {if (!found) print 0}'
}
fault() {
  sleep 20
  written 1 >"$DATA/writer1.rows"
  date +%s.%N | tee "$DATA/writer1.ended" >"$DATA/writer-killed-at"
  say "SIGKILL writer1 ($(rows) rows)"
  kill9 "$DATA/sluice-writer1.pid"
  sleep 20
  say "SIGKILL ingress1 ($(rows) rows); its sensors reconnect to ingress2"
  kill9 "$DATA/sluice-ingress1.pid"
  sleep 20
  writer 4
  say "writer4 added ($(rows) rows)"
}
drill scale-out || exit 1

# What each writer wrote, while it was alive and the load ran.
load_end=$(( T0 + DURATION ))
for w in 1 2 3 4; do
  [ -f "$DATA/writer$w.ended" ] || { written "$w" >"$DATA/writer$w.rows"; echo "$load_end" >"$DATA/writer$w.ended"; }
  python3 - "$w" "$(cat "$DATA/writer$w.rows")" "$(cat "$DATA/writer$w.started")" "$(cat "$DATA/writer$w.ended")" "$load_end" <<'PY'
import sys
w, rows, start, end, load_end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
alive = max(min(end, load_end) - start, 1)
print(f"writer{w}: {rows:,.0f} rows, {rows / alive:,.0f} readings/s over its {alive:.0f} s of the load")
PY
done
# The takeover as the rows saw it, between the writer's SIGKILL and the ingress's (20 s
# later): the longest a device's rows stopped arriving (its readings, one a second, all go
# to one partition), and the longest a reading waited between the ingress and its row.
killed=$(cat "$DATA/writer-killed-at")
psql "$DATABASE_URL" -X -qtA -F ' ' -c "
  WITH r AS (SELECT device_id, received_at, ingested_at,
                    ingested_at - lag(ingested_at) OVER (PARTITION BY device_id ORDER BY ingested_at) AS gap
             FROM readings WHERE starts_with(device_id, 'drill-')
               AND received_at BETWEEN to_timestamp($killed) - interval '2 s'
                                   AND to_timestamp($killed) + interval '15 s')
  SELECT round(extract(epoch FROM max(gap))::numeric, 2),
         round(extract(epoch FROM max(ingested_at - received_at))::numeric, 2)
  FROM r" | while read -r gap wait; do
  echo "takeover after the writer's SIGKILL (lease ${LEASE_MS} ms): the longest gap in a device's rows ${gap} s; readings waited up to ${wait} s for their row"
done
