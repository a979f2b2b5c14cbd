#!/usr/bin/env bash
# Benchmark: the same N readings (default 2,000,000) into the same empty `readings` table
# two ways: raw binary `\copy` (the physical limit here) and Sluice's writer consuming
# them from Kafka. Prints both rates and their ratio.
#   scripts/bench-writer.sh [N]
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
N="${1:-2000000}"
DATA="$ROOT/.data/bench-writer"
ensure_deps
build
(cd "$ROOT" && cargo build --release --quiet --example load_kafka)
fresh_stack "$DATA" 15436 19094
"$ROOT/target/release/sluice" --config "$ROOT/broker.toml" --migrate-only
TOPIC="bench.readings"
cp "$ROOT/broker.toml" "$DATA/broker.toml"
sed -i "s/^kafka_topic = \"sensor.readings\"/kafka_topic = \"$TOPIC\"/" "$DATA/broker.toml"
# Create the topic (12 partitions) the way sluice does, by starting an ingress briefly.
SLUICE__INGRESS__LISTEN=127.0.0.1:61883 SLUICE__HTTP__LISTEN=127.0.0.1:61464 \
SLUICE__BROKER__V4__1__LISTEN=127.0.0.1:61884 SLUICE__BROKER__V5__1__LISTEN=127.0.0.1:61885 \
  "$ROOT/target/release/sluice" --config "$DATA/broker.toml" --role ingress >"$DATA/ingress.log" 2>&1 &
echo $! >"$DATA/sluice-ingress.pid"
wait_port 127.0.0.1 61883 sluice
stop_pidfile "$DATA/sluice-ingress.pid"

log "loading $N readings into Kafka and $DATA/readings.copy"
"$ROOT/target/release/examples/load_kafka" "$KAFKA_BROKERS" "$TOPIC" "$N" "$DATA/readings.copy"

q() { psql "$DATABASE_URL" -X -qtAc "$1"; }
now() { date +%s.%N; }
log "raw binary COPY"
t0=$(now)
psql "$DATABASE_URL" -X -qc "\\copy readings (time, device_id, metric, value, received_at) FROM '$DATA/readings.copy' (FORMAT binary)"
t1=$(now)
raw_rows=$(q "SELECT count(*) FROM readings")
q "TRUNCATE readings; TRUNCATE sluice_offsets"

log "sluice writer"
t2=$(now)
SLUICE__HTTP__LISTEN=127.0.0.1:61465 SLUICE__WRITER__GROUP_ID=bench \
  "$ROOT/target/release/sluice" --config "$DATA/broker.toml" --role writer >"$DATA/writer.log" 2>&1 &
echo $! >"$DATA/sluice-writer.pid"
while [ "$(q "SELECT count(*) FROM readings")" -lt "$N" ]; do
  sleep 0.2
  running "$DATA/sluice-writer.pid" || { tail "$DATA/writer.log"; exit 1; }
done
t3=$(now)
writer_rows=$(q "SELECT count(*) FROM readings")
metrics=$(curl -s http://127.0.0.1:61465/metrics)
batches=$(awk '/^sluice_writer_batch_rows_count/ {print $2}' <<<"$metrics")
db_seconds=$(awk '/^sluice_writer_batch_seconds_sum/ {print $2}' <<<"$metrics")
python3 - "$N" "$raw_rows" "$t0" "$t1" "$writer_rows" "$t2" "$t3" "$batches" "$db_seconds" <<'PY'
import sys
n, raw_rows, t0, t1, w_rows, t2, t3, batches, db_s = sys.argv[1:]
raw = int(raw_rows) / (float(t1) - float(t0))
wr = int(w_rows) / (float(t3) - float(t2))
print(f"readings: {n}")
print(f"raw binary COPY: {int(raw_rows)} rows in {float(t1)-float(t0):.1f}s = {raw:,.0f} rows/s")
print(f"sluice writer:   {int(w_rows)} rows in {float(t3)-float(t2):.1f}s = {wr:,.0f} rows/s ({batches} batches, start-up included)")
print(f"  database transactions took {float(db_s):.1f}s of it (fetching and decoding the next batch overlaps them)")
print(f"writer / raw COPY = {wr / raw:.2f}")
PY
