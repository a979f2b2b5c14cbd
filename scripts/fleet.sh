#!/usr/bin/env bash
# A fleet run: 10,000 sensors (FLEET_SENSORS), one reading a second each (FLEET_RATE in
# all), QoS 1, JSON/CBOR/SenML mixed, for 60 s (FLEET_DURATION), every acknowledged
# reading verified in the database; Sluice's resident memory and connections are printed
# while it runs.
# Sluice holds three sockets per device (the device's, and both ends of its loopback relay
# to the embedded broker), and one process may open `ulimit -n` files, so the fleet is
# spread over as many ingress processes as that takes (each with its own embedded broker
# and port), plus one writer.
#   scripts/fleet.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SENSORS="${FLEET_SENSORS:-10000}" RATE="${FLEET_RATE:-${FLEET_SENSORS:-10000}}"
DURATION="${FLEET_DURATION:-60}"
DATA="$ROOT/.data/fleet"
PER_PROCESS=$(( ($(ulimit -n) - 1000) / 3 ))
INGRESSES=$(( (SENSORS + PER_PROCESS - 1) / PER_PROCESS ))

ensure_deps
build
fresh_stack "$DATA" 15438 19096
"$ROOT/target/release/sluice" --config "$ROOT/broker.toml" --migrate-only
addrs=()
for i in $(seq 1 "$INGRESSES"); do
  base=$((23000 + 10 * i))
  SLUICE__INGRESS__LISTEN="127.0.0.1:$base" SLUICE__HTTP__LISTEN="127.0.0.1:$((base + 1))" \
  SLUICE__BROKER__V4__1__LISTEN="127.0.0.1:$((base + 2))" SLUICE__BROKER__V5__1__LISTEN="127.0.0.1:$((base + 3))" \
    env "${LOCAL_FLEET[@]}" "$ROOT/target/release/sluice" --config "$ROOT/broker.toml" --role ingress >"$DATA/sluice-ingress$i.log" 2>&1 &
  echo $! >"$DATA/sluice-ingress$i.pid"
  wait_port 127.0.0.1 "$base" "sluice ingress $i"
  addrs+=("127.0.0.1:$base")
done
SLUICE__HTTP__LISTEN=127.0.0.1:23001 "$ROOT/target/release/sluice" --config "$ROOT/broker.toml" \
  --role writer >"$DATA/sluice-writer.log" 2>&1 &
echo $! >"$DATA/sluice-writer.pid"

log "fleet: $SENSORS sensors over $INGRESSES ingress process(es) (ulimit -n $(ulimit -n)), $RATE readings/s, ${DURATION}s"
"$ROOT/target/release/sluice-sim" --addr "$(IFS=,; echo "${addrs[*]}")" --sensors "$SENSORS" \
  --rate "$RATE" --duration "$DURATION" --qos 1 --format json,cbor,senml --connect-rate 1000 \
  --prefix fleet --progress 10 --verify-db "$DATABASE_URL" --verify-wait 300 \
  --json "$DATA/report.json" --markdown "$DATA/report.md" --chart "$DATA/report.png" 2>&1 &
SIM=$!
while kill -0 "$SIM" 2>/dev/null; do
  sleep 10
  line="[sluice]"
  for p in "$DATA"/sluice-*.pid; do
    name="$(basename "$p" .pid)"
    rss=$(awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$(cat "$p")/status" 2>/dev/null || echo "?")
    line+=" $name rss=${rss}MB"
  done
  conns=0
  for i in $(seq 1 "$INGRESSES"); do
    c=$(curl -s "http://127.0.0.1:$((23000 + 10 * i + 1))/metrics" | awk '/^sluice_connections / {print $2}')
    c=${c:-0}; conns=$((conns + ${c%.*}))
  done
  echo "$line device connections=$conns"
done
wait "$SIM"
