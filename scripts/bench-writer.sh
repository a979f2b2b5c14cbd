#!/usr/bin/env bash
# Benchmark: the same N readings (default 2,000,000) into the same empty `readings` table
# two ways: raw binary `\copy` (the physical limit here) and Sluice's writer consuming
# them from Kafka, with 1, 2 and 3 writer processes sharing the partitions. Prints the rates
# and their ratios, for plain PostgreSQL and, where TimescaleDB is installed, for a
# hypertable (same rows, same run).
#   scripts/bench-writer.sh [N]
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
N="${1:-2000000}"
# Writer processes of one group, one run each: the writer's ceiling with 1, 2 and 3.
WRITERS="${BENCH_WRITERS:-1 2 3}"
DATA="$ROOT/.data/bench-writer"
ensure_deps
build
(cd "$ROOT" && cargo build --release --quiet --example load_kafka)
fresh_stack "$DATA" 15436 19094
TOPIC="bench.readings"
cp "$ROOT/broker.toml" "$DATA/broker.toml"
sed -i "s/^kafka_topic = \"sensor.readings\"/kafka_topic = \"$TOPIC\"/" "$DATA/broker.toml"
# Create the topic (12 partitions) the way sluice does, by starting an ingress briefly.
SLUICE__INGRESS__LISTEN=127.0.0.1:61883 SLUICE__HTTP__LISTEN=127.0.0.1:61464 \
SLUICE__INGRESS__HTTP__LISTEN=127.0.0.1:61080 \
SLUICE__BROKER__V4__1__LISTEN=127.0.0.1:61884 SLUICE__BROKER__V5__1__LISTEN=127.0.0.1:61885 \
  "$ROOT/target/release/sluice" --config "$DATA/broker.toml" --role ingress >"$DATA/ingress.log" 2>&1 &
echo $! >"$DATA/sluice-ingress.pid"
wait_port 127.0.0.1 61883 sluice
stop_pidfile "$DATA/sluice-ingress.pid"

log "loading $N readings into Kafka and $DATA/readings.copy"
"$ROOT/target/release/examples/load_kafka" "$KAFKA_BROKERS" "$TOPIC" "$N" "$DATA/readings.copy"

SERVER_URL="$DATABASE_URL"
# bench BACKEND: raw COPY, then the writer, into a new database on that storage path.
bench() {
  local backend="$1"
  export DATABASE_URL="${SERVER_URL%/*}/bench_$backend"
  psql "$SERVER_URL" -X -qc "CREATE DATABASE bench_$backend"
  SLUICE__STORAGE__BACKEND="$backend" \
    "$ROOT/target/release/sluice" --config "$DATA/broker.toml" --migrate-only 2>"$DATA/migrate.log" ||
    { tail -3 "$DATA/migrate.log"; exit 1; }
  q() { psql "$DATABASE_URL" -X -qtAc "$1"; }
  now() { date +%s.%N; }
  log "$backend: raw binary COPY"
  local t0 t1 t2 t3 raw_rows writer_rows metrics batches db_seconds
  t0=$(now)
  psql "$DATABASE_URL" -X -qc "\\copy readings (time, device_id, metric, value, received_at) FROM '$DATA/readings.copy' (FORMAT binary)"
  t1=$(now)
  raw_rows=$(q "SELECT count(*) FROM readings")
  # The plain path's rollup trigger marked every copied minute; the writer's run must
  # not refresh them.
  q "TRUNCATE readings; TRUNCATE sluice_offsets"
  [ "$backend" = timescaledb ] || q "TRUNCATE readings_1m_dirty"

  local k
  for k in $WRITERS; do
    log "$backend: $k sluice writer(s)"
    q "TRUNCATE readings; TRUNCATE sluice_offsets; TRUNCATE sluice_writers"
    [ "$backend" = timescaledb ] || q "TRUNCATE readings_1m_dirty"
    t2=$(now)
    # Only the writers' own work is measured: no TimescaleDB job run by them meanwhile.
    for w in $(seq "$k"); do
      SLUICE__HTTP__LISTEN="127.0.0.1:$((61465 + w))" SLUICE__WRITER__GROUP_ID=bench \
      SLUICE__STORAGE__BACKEND="$backend" SLUICE__STORAGE__RUN_OVERDUE_JOBS=false \
        "$ROOT/target/release/sluice" --config "$DATA/broker.toml" --role writer >"$DATA/writer-$backend-$k-$w.log" 2>&1 &
      echo $! >"$DATA/sluice-writer$w.pid"
    done
    while [ "$(q "SELECT count(*) FROM readings")" -lt "$N" ]; do
      sleep 0.2
      for w in $(seq "$k"); do
        running "$DATA/sluice-writer$w.pid" || { tail "$DATA/writer-$backend-$k-$w.log"; exit 1; }
      done
    done
    t3=$(now)
    writer_rows=$(q "SELECT count(*) FROM readings")
    batches=0 db_seconds=0
    for w in $(seq "$k"); do
      metrics=$(curl -s "http://127.0.0.1:$((61465 + w))/metrics")
      batches=$(awk -v t="$batches" '/^sluice_writer_batch_rows_count[ {]/ {t += $NF} END {print t}' <<<"$metrics")
      db_seconds=$(awk -v t="$db_seconds" '/^sluice_writer_batch_seconds_sum[ {]/ {t += $NF} END {print t}' <<<"$metrics")
      stop_pidfile "$DATA/sluice-writer$w.pid"
    done
    python3 - "$backend" "$N" "$raw_rows" "$t0" "$t1" "$writer_rows" "$t2" "$t3" "$batches" "$db_seconds" "$k" <<'PY'
import sys
backend, n, raw_rows, t0, t1, w_rows, t2, t3, batches, db_s, k = sys.argv[1:]
raw = int(raw_rows) / (float(t1) - float(t0))
wr = int(w_rows) / (float(t3) - float(t2))
if k == "1":
    print(f"{backend}: readings: {n}")
    print(f"  raw binary COPY: {int(raw_rows)} rows in {float(t1)-float(t0):.1f}s = {raw:,.0f} rows/s")
print(f"  {k} sluice writer(s): {int(w_rows)} rows in {float(t3)-float(t2):.1f}s = {wr:,.0f} rows/s ({batches} batches, start-up included)")
print(f"    database transactions took {float(db_s):.1f}s of it, all writers together (fetching and decoding the next batch overlaps them)")
print(f"    writers / raw COPY = {wr / raw:.2f}")
PY
  done
}

bench postgres
if timescaledb_installed; then
  bench timescaledb
else
  log "TimescaleDB not installed: hypertable row skipped (scripts/timescaledb.sh installs it)"
fi
