#!/usr/bin/env bash
# Drill: 500 well-behaved sensors at 2,000 readings/s in total for 5 minutes beside
# misbehaving clients (bad_clients.py: non-readers, slowloris, amplifying SenML packs,
# PUBREL storms, duplicate packet ids, reconnect storms, garbage frames), then the same
# load alone. Passes when the well-behaved sensors lost nothing and got nothing twice and
# Sluice's peak resident memory stayed under RSS_BOUND_MB; prints both runs' ack latency.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
SENSORS="${DRILL_SENSORS:-500}" DURATION="${BAD_NEIGHBOURS_DURATION:-300}"
RSS_BOUND_MB="${RSS_BOUND_MB:-1024}"
SIM_ARGS=(--rate 2000)

ack_latency() { grep -o 'publish-to-ack ms: p50=[0-9.]* p90=[0-9.]* p99=[0-9.]*' "$DATA/sim.out"; }

fault() {
  say "misbehaving clients start"
  /usr/bin/python3 "$ROOT/scripts/drills/bad_clients.py" 127.0.0.1 "$MQTT_PORT" "$DURATION" \
    >"$DATA/bad.out" 2>&1
  cat "$DATA/bad.out"
}
drill bad-neighbours || exit 1
with="$(ack_latency)" with_peak="$PEAK_MB"

fault() { :; }
drill bad-neighbours-baseline || exit 1
alone="$(ack_latency)"

echo "well-behaved sensors, with the bad clients:    $with"
echo "well-behaved sensors, alone:                   $alone"
echo "sluice peak resident memory with the bad clients: ${with_peak} MiB (bound ${RSS_BOUND_MB} MiB)"
if [ "$with_peak" = "?" ] || [ "$with_peak" -gt "$RSS_BOUND_MB" ]; then
  echo "drill bad-neighbours: FAILED (peak memory)"
  exit 1
fi
echo "drill bad-neighbours: passed"
