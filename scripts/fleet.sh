#!/usr/bin/env bash
# A fleet run: 10,000 sensors (FLEET_SENSORS), one reading a second each (FLEET_RATE in
# all), QoS 1, JSON/CBOR/SenML mixed, for 60 s (FLEET_DURATION), every acknowledged
# reading verified in the database, all on one gateway process (embedded broker, ingress
# and writer). Every 10 s it prints that process's resident memory, open files, device
# connections and relays to the embedded broker (a sensor that only publishes, with no
# subscriber for its readings, has none: one socket per device), then the peaks.
#   scripts/fleet.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SENSORS="${FLEET_SENSORS:-10000}" RATE="${FLEET_RATE:-${FLEET_SENSORS:-10000}}"
DURATION="${FLEET_DURATION:-60}"
DATA="$ROOT/.data/fleet"
MQTT_PORT=23010 HTTP_PORT=23011

# One socket per sensor, and then some: a shell's default soft limit (often 1,024) is far
# too low, so take the hard limit.
ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -gt $((SENSORS + 1000)) ] || echo "warning: ulimit -n $(ulimit -n) is close to $SENSORS sensors" >&2
ensure_deps
build
fresh_stack "$DATA" 15438 19096
"$ROOT/target/release/sluice" --config "$ROOT/broker.toml" --migrate-only
SLUICE__INGRESS__LISTEN="127.0.0.1:$MQTT_PORT" SLUICE__HTTP__LISTEN="127.0.0.1:$HTTP_PORT" \
SLUICE__INGRESS__HTTP__LISTEN=127.0.0.1:23080 \
SLUICE__BROKER__V4__1__LISTEN=127.0.0.1:23012 SLUICE__BROKER__V5__1__LISTEN=127.0.0.1:23013 \
  env "${LOCAL_FLEET[@]}" "$ROOT/target/release/sluice" --config "$ROOT/broker.toml" >"$DATA/sluice.log" 2>&1 &
echo $! >"$DATA/sluice.pid"
PID=$(cat "$DATA/sluice.pid")
wait_port 127.0.0.1 "$MQTT_PORT" sluice

log "fleet: $SENSORS sensors on one gateway process (ulimit -n $(ulimit -n)), $RATE readings/s, ${DURATION}s"
"$ROOT/target/release/sluice-sim" --addr "127.0.0.1:$MQTT_PORT" --sensors "$SENSORS" \
  --rate "$RATE" --duration "$DURATION" --qos 1 --format json,cbor,senml --connect-rate 1000 \
  --prefix fleet --progress 10 --verify-db "$DATABASE_URL" --verify-wait 300 \
  --json "$DATA/report.json" --markdown "$DATA/report.md" --chart "$DATA/report.png" 2>&1 &
SIM=$!
# A metric's value by name, whatever its labels (every metric carries the process's role).
metric() { curl -s "http://127.0.0.1:$HTTP_PORT/metrics" | awk -v m="$1" '{ n = $1; sub(/\{.*/, "", n) } n == m { v = $2 } END { printf "%.0f", v }'; }
max_files=0
while kill -0 "$SIM" 2>/dev/null; do
  sleep 10
  kill -0 "$PID" 2>/dev/null || { echo "sluice exited: see $DATA/sluice.log"; break; }
  rss=$(awk '/VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/$PID/status")
  files=$(ls "/proc/$PID/fd" | wc -l)
  [ "$files" -gt "$max_files" ] && max_files=$files
  echo "[sluice] rss=${rss}MB open_files=$files device_connections=$(metric sluice_connections) relays=$(metric sluice_broker_relays)"
done
wait "$SIM"
echo "[sluice] peak: rss=$(awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$PID/status")MB open_files=$max_files (limit $(ulimit -n))"
