#!/usr/bin/env bash
# Benchmark: publish-to-PUBACK latency at a fixed rate with acks after Kafka (`ack =
# "kafka"`) and on receipt (`ack = "receipt"`), against one gateway in one run.
#   scripts/bench-acks.sh [--sensors 1000] [--interval-ms 100] [--duration 30]
# (default 1,000 sensors x 10 readings/s = 10,000 readings/s)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SENSORS=1000 INTERVAL_MS=100 DURATION=30
while [ $# -gt 0 ]; do
  case "$1" in
    --sensors) SENSORS="$2"; shift 2 ;;
    --interval-ms) INTERVAL_MS="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    *) echo "usage: $0 [--sensors N] [--interval-ms MS] [--duration S]" >&2; exit 2 ;;
  esac
done

DATA="$ROOT/.data/bench"
PG_PORT=15435 KAFKA_PORT=19093 MQTT_PORT=24883
ensure_deps
build
fresh_stack "$DATA" "$PG_PORT" "$KAFKA_PORT"

# The default mapping acks after Kafka; a second one, on `receipt/...`, acks on receipt.
cp "$ROOT/broker.toml" "$DATA/broker.toml"
cat >>"$DATA/broker.toml" <<'TOML'

[[mappings]]
filter = "receipt/{device_id}/{metric}"
kafka_topic = "sensor.readings"
ack = "receipt"
TOML
SLUICE__INGRESS__LISTEN="127.0.0.1:$MQTT_PORT" SLUICE__HTTP__LISTEN="127.0.0.1:24464" \
SLUICE__INGRESS__HTTP__LISTEN="127.0.0.1:24080" \
SLUICE__BROKER__V4__1__LISTEN="127.0.0.1:24885" SLUICE__BROKER__V5__1__LISTEN="127.0.0.1:24886" \
  env "${LOCAL_FLEET[@]}" "$ROOT/target/release/sluice" --config "$DATA/broker.toml" >"$DATA/sluice.log" 2>&1 &
echo $! >"$DATA/sluice.pid"
wait_port 127.0.0.1 "$MQTT_PORT" sluice

rate=$((SENSORS * 1000 / INTERVAL_MS))
echo "machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB; load: $SENSORS sensors x $((1000 / INTERVAL_MS))/s = $rate readings/s, QoS 1, ${DURATION}s each"
for policy in kafka receipt; do
  root=sensors; [ "$policy" = receipt ] && root=receipt
  # A short warm-up so both runs meet an already-connected, already-producing gateway.
  "$ROOT/target/release/sluice-sim" --addr "127.0.0.1:$MQTT_PORT" --sensors "$SENSORS" \
    --interval-ms "$INTERVAL_MS" --duration 5 --topic-root "$root" --prefix "warm-$policy" --progress 0 >/dev/null
  "$ROOT/target/release/sluice-sim" --addr "127.0.0.1:$MQTT_PORT" --sensors "$SENSORS" \
    --interval-ms "$INTERVAL_MS" --duration "$DURATION" --topic-root "$root" --prefix "$policy" \
    --progress 10 --json "$DATA/$policy.json" >"$DATA/$policy.out"
  echo "--- ack = \"$policy\""
  cat "$DATA/$policy.out"
done
python3 - "$DATA" <<'PY'
import json, sys
d = sys.argv[1]
print("\n| ack policy | acked/s | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|")
for p in ("kafka", "receipt"):
    r = json.load(open(f"{d}/{p}.json")); l = r["ack_latency_ms"]
    print(f"| {p} | {r['acked_per_second']:.0f} | {l['p50']:.2f} | {l['p99']:.2f} | {l['max']:.2f} |")
PY
