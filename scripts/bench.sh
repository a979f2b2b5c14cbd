#!/usr/bin/env bash
# Benchmark suite. The same simulator load (1,000 sensors, QoS 1, JSON) against Sluice
# (the whole pipeline, every reading verified in the database) and against Debian's
# mosquitto broker (the MQTT layer only, no Kafka, no database) as the reference:
#  - baseline at fixed rates (default 1k, 10k, 50k readings/s, 20 s each);
#  - ceiling: the rate stepped up until p99 publish-to-ack latency passes 500 ms, errors
#    appear or less than 95% of the offered rate is acknowledged; the last rate that held
#    is the ceiling.
# Prints a markdown report (also in .data/bench/report.md) with Sluice/mosquitto ratios.
#   scripts/bench.sh [--rates "1000 10000 50000"] [--steps "5000 10000 ..."] [--duration S]
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RATES="1000 10000 50000" STEPS="5000 10000 15000 20000 25000 30000 40000 50000" DURATION=20
SENSORS="${BENCH_SENSORS:-1000}"
while [ $# -gt 0 ]; do
  case "$1" in
    --rates) RATES="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    *) echo "usage: $0 [--rates LIST] [--steps LIST] [--duration S]" >&2; exit 2 ;;
  esac
done

DATA="$ROOT/.data/bench"
MQTT_PORT=25883 MOSQ_PORT=25884
ensure_deps
command -v mosquitto >/dev/null || {
  log "installing mosquitto (the reference broker)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mosquitto >/dev/null
}
build
fresh_stack "$DATA" 15437 19095
trap 'stop_pidfile "$DATA/mosquitto.pid"; stop_stack "$DATA"' EXIT
mkdir -p "$DATA/runs"

"$ROOT/target/release/sluice" --config "$ROOT/broker.toml" --migrate-only
SLUICE__INGRESS__LISTEN="127.0.0.1:$MQTT_PORT" SLUICE__HTTP__LISTEN=127.0.0.1:25464 \
SLUICE__BROKER__V4__1__LISTEN=127.0.0.1:25885 SLUICE__BROKER__V5__1__LISTEN=127.0.0.1:25886 \
  env "${LOCAL_FLEET[@]}" "$ROOT/target/release/sluice" --config "$ROOT/broker.toml" >"$DATA/sluice.log" 2>&1 &
echo $! >"$DATA/sluice.pid"
cat >"$DATA/mosquitto.conf" <<EOF
listener $MOSQ_PORT 127.0.0.1
allow_anonymous true
persistence false
max_inflight_messages 100
max_queued_messages 100000
EOF
mosquitto -c "$DATA/mosquitto.conf" >"$DATA/mosquitto.log" 2>&1 &
echo $! >"$DATA/mosquitto.pid"
wait_port 127.0.0.1 "$MQTT_PORT" sluice
wait_port 127.0.0.1 "$MOSQ_PORT" mosquitto

# sim TARGET NAME RATE [extra args]: one simulator run, its report in runs/NAME.json.
sim() {
  local target="$1" name="$2" rate="$3"; shift 3
  local port=$MQTT_PORT; [ "$target" = mosquitto ] && port=$MOSQ_PORT
  "$ROOT/target/release/sluice-sim" --addr "127.0.0.1:$port" --sensors "$SENSORS" \
    --rate "$rate" --duration "$DURATION" --qos 1 --format json --prefix "$name" --connect-rate 2000 \
    --progress 0 --json "$DATA/runs/$name.json" "$@" >"$DATA/runs/$name.out" 2>&1 || true
  tail -n +2 "$DATA/runs/$name.out" | sed "s/^/  [$name] /"
}

held() { # NAME RATE: whether the run kept up (the ceiling test's criterion)
  python3 - "$DATA/runs/$1.json" "$2" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); rate = float(sys.argv[2])
ok = r["ack_latency_ms"]["p99"] <= 500 and r["errors"] == 0 and r["readings_per_second"] >= 0.95 * rate
sys.exit(0 if ok else 1)
PY
}

log "machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB; $SENSORS sensors, QoS 1, JSON, ${DURATION}s per run"
sim sluice warmup 1000 >/dev/null
for target in sluice mosquitto; do
  for rate in $RATES; do
    log "baseline: $target at $rate readings/s"
    if [ "$target" = sluice ]; then
      sim sluice "base-sluice-$rate" "$rate" --verify-db "$DATABASE_URL" --verify-wait 180
    else
      sim mosquitto "base-mosquitto-$rate" "$rate"
    fi
  done
  for rate in $STEPS; do
    log "ceiling: $target at $rate readings/s"
    sim "$target" "step-$target-$rate" "$rate"
    held "step-$target-$rate" "$rate" || break
    echo "$rate" >"$DATA/runs/ceiling-$target"
  done
done

python3 - "$DATA" "$RATES" "$STEPS" "$SENSORS" "$DURATION" <<'PY' | tee "$DATA/report.md"
import json, os, sys
d, rates, steps, sensors, duration = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), sys.argv[4], sys.argv[5]
def load(name):
    p = f"{d}/runs/{name}.json"
    return json.load(open(p)) if os.path.exists(p) else None
def ceiling(t):
    p = f"{d}/runs/ceiling-{t}"
    return int(open(p).read()) if os.path.exists(p) else 0
cores = os.cpu_count()
mem = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
print(f"Machine: {cores} cores, {mem} GiB, everything on it (Sluice with tansu and PostgreSQL, or mosquitto, and the simulator).")
print(f"Load: {sensors} sensors, QoS 1, JSON, {duration} s per run, `scripts/bench.sh`.\n")
print("| offered readings/s | Sluice acked/s | mosquitto acked/s | rate ratio | Sluice p50 / p99 / p99.9 ms | mosquitto p50 / p99 / p99.9 ms | p99 ratio | Sluice publish-to-row p50 / p99 ms | lost / duplicates |")
print("|---|---|---|---|---|---|---|---|---|")
for rate in rates:
    s, m = load(f"base-sluice-{rate}"), load(f"base-mosquitto-{rate}")
    if not s or not m:
        continue
    sl, ml = s["ack_latency_ms"], m["ack_latency_ms"]
    v = s.get("verify") or {}
    row = v.get("publish_to_row_ms", {})
    print(f"| {int(rate):,} | {s['readings_per_second']:,.0f} | {m['readings_per_second']:,.0f} | "
          f"{s['readings_per_second'] / max(m['readings_per_second'], 1):.2f} | "
          f"{sl['p50']:.1f} / {sl['p99']:.1f} / {sl['p999']:.1f} | {ml['p50']:.1f} / {ml['p99']:.1f} / {ml['p999']:.1f} | "
          f"{sl['p99'] / max(ml['p99'], 0.001):.1f} | {row.get('p50', 0):.0f} / {row.get('p99', 0):.0f} | "
          f"{v.get('lost', '?')} / {v.get('duplicates', '?')} |")
cs, cm = ceiling("sluice"), ceiling("mosquitto")
print(f"\nCeiling (highest step with p99 ack <= 500 ms, no errors, >= 95% of the offered rate acknowledged; steps {' '.join(steps)}):")
print(f"Sluice {cs:,} readings/s, mosquitto {cm:,} readings/s, ratio {cs / max(cm, 1):.2f}" +
      (" (mosquitto held every step: its ceiling is above the last step)" if cm and str(cm) == steps[-1] else ""))
PY
