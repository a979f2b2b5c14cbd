#!/usr/bin/env bash
# Benchmark: the cost of TLS on the device port, in one run on one gateway. TLS handshakes
# per second with a client certificate (`openssl s_time`, new session each time), then
# publish-to-PUBACK latency at a fixed rate over plain TCP and over TLS with client
# certificates (every simulated sensor presents the one certificate of a gateway identity
# that the ACL lets publish for its child devices).
#   scripts/bench-tls.sh [--sensors 500] [--rate 5000] [--duration 60]
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SENSORS=500 RATE=5000 DURATION=60
while [ $# -gt 0 ]; do
  case "$1" in
    --sensors) SENSORS="$2"; shift 2 ;;
    --rate) RATE="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    *) echo "usage: $0 [--sensors N] [--rate READINGS_PER_S] [--duration S]" >&2; exit 2 ;;
  esac
done

DATA="$ROOT/.data/bench-tls"
PG_PORT=15436 KAFKA_PORT=19094 MQTT_PORT=25883 TLS_PORT=25884
ensure_deps
build
fresh_stack "$DATA" "$PG_PORT" "$KAFKA_PORT"

CERTS="$DATA/certs"
bash "$ROOT/scripts/certs.sh" "$CERTS" bench-gateway
# Anonymous clients (the plain run, on loopback) publish on sensors/#; the TLS identity,
# a gateway for its child devices, on tls/#.
printf 'topic write sensors/#\nuser bench-gateway\ntopic write tls/#\n' >"$DATA/acl"
cp "$ROOT/broker.toml" "$DATA/broker.toml"
cat >>"$DATA/broker.toml" <<TOML

[[mappings]]
filter = "tls/{device_id}/{metric}"
kafka_topic = "sensor.readings"

[ingress.tls]
listen = "127.0.0.1:$TLS_PORT"
certfile = "$CERTS/server.pem"
keyfile = "$CERTS/server.key"
cafile = "$CERTS/ca.pem"
require_certificate = true
TOML
SLUICE__INGRESS__LISTEN="127.0.0.1:$MQTT_PORT" SLUICE__HTTP__LISTEN="127.0.0.1:25464" \
SLUICE__INGRESS__HTTP__LISTEN="127.0.0.1:25081" \
SLUICE__BROKER__V4__1__LISTEN="127.0.0.1:25885" SLUICE__BROKER__V5__1__LISTEN="127.0.0.1:25886" \
SLUICE__AUTH__ACL_FILE="$DATA/acl" \
  env "${LOCAL_FLEET[@]}" "$ROOT/target/release/sluice" --config "$DATA/broker.toml" >"$DATA/sluice.log" 2>&1 &
echo $! >"$DATA/sluice.pid"
wait_port 127.0.0.1 "$MQTT_PORT" sluice
wait_port 127.0.0.1 "$TLS_PORT" "sluice (TLS)"

echo "machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB, $(openssl version)"
log "TLS handshakes (openssl s_time, client certificate, 10 s)"
openssl s_time -connect "127.0.0.1:$TLS_PORT" -new -time 10 \
  -CAfile "$CERTS/ca.pem" -cert "$CERTS/bench-gateway.pem" -key "$CERTS/bench-gateway.key" 2>&1 |
  tee "$DATA/handshakes.out" | grep -E "connections in|connections/user sec" || true

# CPU seconds sluice has used so far (user + system), from /proc.
sluice_cpu() {
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$(cat "$DATA/sluice.pid")/stat"
}

echo "load: $SENSORS sensors, $RATE readings/s in all, QoS 1, ${DURATION}s each"
for transport in plain tls; do
  args=(--addr "127.0.0.1:$MQTT_PORT" --topic-root sensors)
  if [ "$transport" = tls ]; then
    args=(--addr "127.0.0.1:$TLS_PORT" --topic-root tls --cafile "$CERTS/ca.pem"
      --cert "$CERTS/bench-gateway.pem" --key "$CERTS/bench-gateway.key")
  fi
  # A short warm-up so both runs meet an already-connected, already-producing gateway.
  "$ROOT/target/release/sluice-sim" "${args[@]}" --sensors "$SENSORS" --rate "$RATE" \
    --duration 5 --prefix "warm-$transport" --progress 0 >/dev/null
  before=$(sluice_cpu)
  "$ROOT/target/release/sluice-sim" "${args[@]}" --sensors "$SENSORS" --rate "$RATE" \
    --duration "$DURATION" --prefix "$transport" --progress 10 \
    --json "$DATA/$transport.json" >"$DATA/$transport.out"
  echo "$before $(sluice_cpu)" >"$DATA/$transport.cpu"
  echo "--- $transport"
  cat "$DATA/$transport.out"
done
python3 - "$DATA" <<'PY'
import json, re, sys
d = sys.argv[1]
text = open(f"{d}/handshakes.out").read()
# s_time's "N connections in T real seconds": the wall clock, client and server on one machine.
m = re.search(r"(\d+) connections in (\d+) real seconds", text)
if m:
    print(f"\nTLS handshakes with a client certificate (new sessions, openssl s_time on the same machine): {int(m.group(1)) / float(m.group(2)):.0f}/s")
print("\n| transport | acked/s | p50 ms | p99 ms | max ms | sluice CPU ms per 1,000 publishes |\n|---|---|---|---|---|---|")
for t in ("plain", "tls"):
    r = json.load(open(f"{d}/{t}.json")); l = r["ack_latency_ms"]
    before, after = map(float, open(f"{d}/{t}.cpu").read().split())
    cpu = (after - before) * 1000 / (r["acked"] / 1000)
    print(f"| {t} | {r['acked_per_second']:.0f} | {l['p50']:.2f} | {l['p99']:.2f} | {l['max']:.2f} | {cpu:.1f} |")
PY
