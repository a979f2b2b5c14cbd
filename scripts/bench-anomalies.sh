#!/usr/bin/env bash
# Anomaly detection, measured: (1) the detector alone, N readings of 10,000 noisy series in
# the writer's batches, as readings/s on one core; (2) a labelled simulator run (sensors
# with noisy signals of their own and injected spikes, stuck values, drifts and dropouts)
# through a real sluice, tansu and PostgreSQL, then the detector's precision and recall per
# kind against the labels, and the share of the writer's time the detector took.
#   scripts/bench-anomalies.sh [--sensors 200] [--interval-ms 100] [--duration 120] [--fraction 0.01]
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SENSORS=200 INTERVAL_MS=100 DURATION=120 FRACTION=0.01
while [ $# -gt 0 ]; do
  case "$1" in
    --sensors) SENSORS="$2"; shift 2 ;;
    --interval-ms) INTERVAL_MS="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --fraction) FRACTION="$2"; shift 2 ;;
    *) echo "usage: $0 [--sensors N] [--interval-ms MS] [--duration S] [--fraction F]" >&2; exit 2 ;;
  esac
done
DATA="$ROOT/.data/bench-anomalies"
ensure_deps
build
(cd "$ROOT" && cargo build --release --quiet --example detector)

log "the detector alone"
"$ROOT/target/release/examples/detector"

fresh_stack "$DATA" 25543 29202
MQTT_PORT=25893 HTTP_PORT=25894
env "${LOCAL_FLEET[@]}" SLUICE__INGRESS__LISTEN=127.0.0.1:$MQTT_PORT SLUICE__HTTP__LISTEN=127.0.0.1:$HTTP_PORT \
  SLUICE__INGRESS__HTTP__LISTEN=127.0.0.1:25895 \
  SLUICE__BROKER__V4__1__LISTEN=127.0.0.1:25896 SLUICE__BROKER__V5__1__LISTEN=127.0.0.1:25897 \
  "$ROOT/target/release/sluice" --config "$ROOT/broker.toml" >"$DATA/sluice.log" 2>&1 &
echo $! >"$DATA/sluice.pid"
wait_port 127.0.0.1 "$MQTT_PORT" sluice

log "labelled run: $SENSORS sensors, a reading every $INTERVAL_MS ms each, $DURATION s, anomalies $FRACTION"
"$ROOT/target/release/sluice-sim" --addr "127.0.0.1:$MQTT_PORT" --sensors "$SENSORS" \
  --interval-ms "$INTERVAL_MS" --duration "$DURATION" --anomalies "$FRACTION" \
  --labels "$DATA/labels.jsonl" --verify-db "$DATABASE_URL" --progress 30
metrics=$(curl -s "http://127.0.0.1:$HTTP_PORT/metrics")
stop_pidfile "$DATA/sluice.pid"
python3 - <<PY
import re
m = """$metrics"""
def v(name):
    # Any labels (every metric carries the process's role).
    x = re.search(r"^" + re.escape(name) + r"(\{[^}]*\})? (\S+)$", m, re.M)
    return float(x.group(2)) if x else 0.0
rows, det, batch = v("sluice_writer_rows_total"), v("sluice_detector_seconds_sum"), v("sluice_writer_batch_seconds_sum")
print(f"writer: {rows:.0f} rows; detector {det:.3f} s in all = {rows / det if det else 0:,.0f} readings/s, "
      f"{100 * det / batch if batch else 0:.1f}% of the time in database transactions ({batch:.1f} s)")
PY
