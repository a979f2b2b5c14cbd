#!/usr/bin/env bash
# Benchmark suite. The same simulator load (1,000 sensors, QoS 1, JSON) against
#  - Sluice with tansu's in-memory storage (so that what is left is Sluice's own work),
#  - Sluice on the durable default (tansu on SQLite, as scripts/up.sh runs it),
#  - Debian's mosquitto (the MQTT layer only, no Kafka, no database), the reference;
# each at fixed rates (default 1k, 10k, 20k readings/s; Sluice's readings verified in the
# database) and stepped up to its ceiling: the last rate with p99 publish-to-ack at most
# 500 ms, no errors and at least 95% of the offered rate acknowledged. Then SenML packs of
# 10 and 100 records (in-memory storage), stepped up the same way in readings/s. The same
# sensors over HTTP (one keep-alive connection each, 202 after Kafka) run the fixed rates
# on both storages (each on a fresh stack) and the ceiling on in-memory tansu, then once
# more with the mapping acknowledging on receipt.
# Every run also prints the CPU time each process spent per acknowledged publish
# (/proc utime+stime over the run). The report goes to .data/bench/report.md, one chart
# per fixed-rate run to .data/bench/runs/*.png.
#   scripts/bench.sh [--rates "1000 10000 20000"] [--steps "5000 10000 ..."]
#                    [--pack-steps "10000 20000 ..."] [--duration S]
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RATES="1000 10000 20000" STEPS="5000 10000 15000 20000 25000 30000 40000"
PACK_STEPS="10000 20000 40000 80000 160000" DURATION=20
SENSORS="${BENCH_SENSORS:-1000}"
while [ $# -gt 0 ]; do
  case "$1" in
    --rates) RATES="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    --pack-steps) PACK_STEPS="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    *) echo "usage: $0 [--rates LIST] [--steps LIST] [--pack-steps LIST] [--duration S]" >&2; exit 2 ;;
  esac
done

DATA="$ROOT/.data/bench" STACK="$ROOT/.data/bench/stack"
MQTT_PORT=25883 MOSQ_PORT=25884 INGEST_PORT=25080
ensure_deps
command -v mosquitto >/dev/null || {
  log "installing mosquitto (the reference broker)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mosquitto >/dev/null
}
build
rm -rf "$DATA/runs"
mkdir -p "$DATA/runs"
trap 'stop_tansu_install; stop_pidfile "$DATA/mosquitto.pid"; stop_stack "$STACK"' EXIT

# The processes a run's CPU is counted for, "name pid" lines, in $DATA/procs.
cpu_seconds() { # PID: user + system CPU seconds so far
  awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0
}
cpu_snapshot() { # one "name seconds" line per process; postgres is its postmaster and backends
  local name pid total
  while read -r name pid; do
    total=$(cpu_seconds "$pid")
    if [ "$name" = postgres ]; then
      for child in $(ps -o pid= --ppid "$pid"); do
        total=$(awk -v a="$total" -v b="$(cpu_seconds "$child")" 'BEGIN { printf "%.2f", a + b }')
      done
    fi
    echo "$name $total"
  done <"$DATA/procs"
}
# FILE: the CPU the shell's ended children used so far, written by `times` (which must run
# in this shell, not in a pipe; the simulator is the only child that ends during a run).
children_cpu() { tail -1 "$1" | awk '{ gsub(/[ms]/, " "); split($0, t, " "); printf "%.2f", t[1] * 60 + t[2] + t[3] * 60 + t[4] }'; }

# start_sluice STORAGE [VAR=VALUE ...]: a fresh tansu (STORAGE: memory:// or sqlite) and
# PostgreSQL, and sluice with the settings given.
start_sluice() {
  TANSU_STORAGE="$1" fresh_stack "$STACK" 15437 19095
  shift
  trap 'stop_tansu_install; stop_pidfile "$DATA/mosquitto.pid"; stop_stack "$STACK"' EXIT
  "$ROOT/target/release/sluice" --config "$CONFIG" --migrate-only
  SLUICE__INGRESS__LISTEN="127.0.0.1:$MQTT_PORT" SLUICE__HTTP__LISTEN=127.0.0.1:25464 \
  SLUICE__INGRESS__HTTP__LISTEN="127.0.0.1:$INGEST_PORT" \
  SLUICE__BROKER__V4__1__LISTEN=127.0.0.1:25885 SLUICE__BROKER__V5__1__LISTEN=127.0.0.1:25886 \
    env "${LOCAL_FLEET[@]}" "$@" "$ROOT/target/release/sluice" --config "$CONFIG" >"$STACK/sluice.log" 2>&1 &
  echo $! >"$STACK/sluice.pid"
  wait_port 127.0.0.1 "$MQTT_PORT" sluice
  printf 'sluice %s\ntansu %s\npostgres %s\n' "$(cat "$STACK/sluice.pid")" "$(cat "$STACK/kafka/tansu.pid")" \
    "$(head -1 "$STACK/pg/pgdata/postmaster.pid")" >"$DATA/procs"
}

start_mosquitto() {
  stop_stack "$STACK"
  cat >"$DATA/mosquitto.conf" <<EOF
listener $MOSQ_PORT 127.0.0.1
allow_anonymous true
persistence false
max_inflight_messages 100
max_queued_messages 100000
EOF
  mosquitto -c "$DATA/mosquitto.conf" >"$DATA/mosquitto.log" 2>&1 &
  echo $! >"$DATA/mosquitto.pid"
  wait_port 127.0.0.1 "$MOSQ_PORT" mosquitto
  printf 'mosquitto %s\n' "$(cat "$DATA/mosquitto.pid")" >"$DATA/procs"
}

# sim TARGET NAME RATE [extra args]: one simulator run (TARGET: sluice, http (Sluice's HTTP
# ingest) or mosquitto); its report in runs/NAME.json, the CPU each process spent during it
# in runs/NAME.cpu.
sim() {
  local target="$1" name="$2" rate="$3" port=$MQTT_PORT; shift 3
  case "$target" in
    mosquitto) port=$MOSQ_PORT ;;
    http) port=$INGEST_PORT; set -- --transport http "$@" ;;
  esac
  cpu_snapshot >"$DATA/runs/$name.cpu-before"
  times >"$DATA/times-before"
  "$ROOT/target/release/sluice-sim" --addr "127.0.0.1:$port" --sensors "$SENSORS" \
    --rate "$rate" --duration "$DURATION" --qos 1 --prefix "$name" --connect-rate 2000 \
    --progress 0 --json "$DATA/runs/$name.json" "$@" >"$DATA/runs/$name.out" 2>&1 || true
  times >"$DATA/times-after"
  echo "simulator $(awk -v a="$(children_cpu "$DATA/times-before")" -v b="$(children_cpu "$DATA/times-after")" 'BEGIN { printf "%.2f", b - a }')" >"$DATA/runs/$name.cpu"
  cpu_snapshot | paste -d' ' - "$DATA/runs/$name.cpu-before" | awk '{ printf "%s %.2f\n", $1, $2 - $4 }' >>"$DATA/runs/$name.cpu"
  if [ -f "$STACK/sluice.pid" ] && [ "$target" != mosquitto ]; then
    echo "sluice_rss_mb $(awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$(cat "$STACK/sluice.pid")/status")" >>"$DATA/runs/$name.cpu"
  fi
  tail -n +2 "$DATA/runs/$name.out" | sed "s/^/  [$name] /"
  python3 - "$DATA/runs/$name" <<'PY'
import json, sys
r = json.load(open(sys.argv[1] + ".json"))
cpu = {l.split()[0]: float(l.split()[1]) for l in open(sys.argv[1] + ".cpu")}
n = max(r["acked"], 1)
print("  CPU per acknowledged publish: " + ", ".join(f"{k} {v * 1e6 / n:.1f} us" for k, v in cpu.items() if k != "sluice_rss_mb"))
PY
}

held() { # NAME RATE: whether the run kept up (the ceiling test's criterion)
  python3 - "$DATA/runs/$1.json" "$2" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); rate = float(sys.argv[2])
ok = r["ack_latency_ms"]["p99"] <= 500 and r["errors"] == 0 and r["readings_per_second"] >= 0.95 * rate
sys.exit(0 if ok else 1)
PY
}

# ceiling TARGET LABEL STEPS [extra args]: steps up until a run does not hold.
ceiling() {
  local target="$1" label="$2" steps="$3" rate; shift 3
  for rate in $steps; do
    log "ceiling: $label at $rate readings/s"
    sim "$target" "step-$label-$rate" "$rate" "$@"
    held "step-$label-$rate" "$rate" || break
    echo "$rate" >"$DATA/runs/ceiling-$label"
  done
}

# The HTTP receipt run routes POST /v1/readings/{device}/{metric} to a mapping that
# acknowledges on receipt.
CONFIG="$DATA/broker.toml"
mkdir -p "$DATA"
cp "$ROOT/broker.toml" "$CONFIG"
cat >>"$CONFIG" <<'TOML'

[[mappings]]
filter = "receipt/{device_id}/{metric}"
kafka_topic = "sensor.readings"
ack = "receipt"
TOML

log "machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB; $SENSORS sensors, QoS 1, ${DURATION}s per run"
for label in memory durable mosquitto; do
  case "$label" in
    memory) storage=memory://tansu/; start_sluice "$storage"; target=sluice ;;
    durable) storage=sqlite://tansu.db; start_sluice "$storage"; target=sluice ;;
    mosquitto) start_mosquitto; target=mosquitto ;;
  esac
  DURATION=5 sim "$target" "warmup-$label" 1000 >/dev/null
  for rate in $RATES; do
    log "fixed rate: $label at $rate readings/s"
    verify=(); [ "$target" = sluice ] && verify=(--verify-db "$DATABASE_URL" --verify-wait 180)
    sim "$target" "base-$label-$rate" "$rate" --format json --chart "$DATA/runs/base-$label-$rate.png" "${verify[@]}"
  done
  ceiling "$target" "$label" "$STEPS" --format json
  if [ "$label" = memory ]; then
    for pack in 10 100; do
      ceiling sluice "pack$pack" "$PACK_STEPS" --format senml --pack "$pack"
    done
  fi
  [ "$target" = sluice ] || continue
  # A fresh stack: the writer's backlog from the steps above would load tansu meanwhile.
  start_sluice "$storage"
  DURATION=5 sim http "warmup-http-$label" 1000 >/dev/null
  for rate in $RATES; do
    log "fixed rate over HTTP: $label at $rate readings/s"
    sim http "http-$label-$rate" "$rate" --format json --verify-db "$DATABASE_URL" --verify-wait 180
  done
  if [ "$label" = memory ]; then
    ceiling http "http-memory" "$STEPS" --format json
    start_sluice memory://tansu/ 'SLUICE__INGRESS__HTTP__METRIC_TOPIC=receipt/{device_id}/{metric}'
    DURATION=5 sim http "warmup-receipt" 1000 >/dev/null
    for rate in $RATES; do
      log "fixed rate over HTTP, ack = \"receipt\": $rate readings/s"
      sim http "receipt-memory-$rate" "$rate" --format json --verify-db "$DATABASE_URL" --verify-wait 180
    done
  fi
done

python3 - "$DATA" "$RATES" "$STEPS" "$PACK_STEPS" "$SENSORS" "$DURATION" <<'PY' | tee "$DATA/report.md"
import json, os, sys
d, rates, steps, pack_steps, sensors, duration = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), sys.argv[4].split(), sys.argv[5], sys.argv[6]
def load(name):
    p = f"{d}/runs/{name}.json"
    if not os.path.exists(p):
        return None
    r = json.load(open(p))
    r["cpu"] = {l.split()[0]: float(l.split()[1]) for l in open(f"{d}/runs/{name}.cpu")}
    return r
def ceiling(label):
    p = f"{d}/runs/ceiling-{label}"
    return int(open(p).read()) if os.path.exists(p) else 0
def us(r, proc):
    return f"{r['cpu'][proc] * 1e6 / max(r['acked'], 1):.1f}" if proc in r["cpu"] else "-"
cores = os.cpu_count()
mem = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
print(f"Machine: {cores} cores, {mem} GiB, everything on it (Sluice with tansu and PostgreSQL, or mosquitto, and the simulator).")
print(f"Load: {sensors} sensors, QoS 1, JSON, {duration} s per run, `scripts/bench.sh`. CPU: microseconds of each process's")
print("CPU time (user + system) over the run per acknowledged publish.\n")
print("| storage | offered/s | acked/s | ack p50 / p99 ms | publish-to-row p50 / p99 ms | lost / duplicates | sluice CPU us | tansu CPU us | PostgreSQL CPU us | simulator CPU us | sluice peak RSS MB |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for label in ("memory", "durable"):
    for rate in rates:
        r = load(f"base-{label}-{rate}")
        if not r:
            continue
        l, v = r["ack_latency_ms"], r.get("verify") or {}
        row = v.get("publish_to_row_ms", {})
        print(f"| {label} | {int(rate):,} | {r['acked_per_second']:,.0f} | {l['p50']:.1f} / {l['p99']:.1f} | "
              f"{row.get('p50', 0):.0f} / {row.get('p99', 0):.0f} | {v.get('lost', '?')} / {v.get('duplicates', '?')} | "
              f"{us(r, 'sluice')} | {us(r, 'tansu')} | {us(r, 'postgres')} | {us(r, 'simulator')} | {r['cpu'].get('sluice_rss_mb', 0):.0f} |")
print("\n| mosquitto | offered/s | acked/s | ack p50 / p99 ms | mosquitto CPU us | simulator CPU us |")
print("|---|---|---|---|---|---|")
for rate in rates:
    r = load(f"base-mosquitto-{rate}")
    if r:
        l = r["ack_latency_ms"]
        print(f"| | {int(rate):,} | {r['acked_per_second']:,.0f} | {l['p50']:.1f} / {l['p99']:.1f} | {us(r, 'mosquitto')} | {us(r, 'simulator')} |")
cm = ceiling("mosquitto")
print(f"\nCeilings (highest step with p99 ack <= 500 ms, no errors, >= 95% of the offered rate acknowledged; steps {' '.join(steps)}):\n")
print("| | ceiling readings/s | ratio to mosquitto |\n|---|---|---|")
for label, name in (("memory", "Sluice, in-memory tansu"), ("durable", "Sluice, durable default"), ("mosquitto", "mosquitto")):
    c = ceiling(label)
    top = " (held every step)" if str(c) == steps[-1] else ""
    print(f"| {name} | {c:,}{top} | {c / max(cm, 1):.2f} |")
print("\nOver HTTP (the same sensors, each on one keep-alive HTTP/1.1 connection posting one reading per request and waiting for")
print("its answer; 'kafka': 202 once Kafka has the record, 'receipt': the mapping acknowledges on receipt; in-memory or durable tansu):\n")
print("| storage, ack | offered/s | requests acked/s | request-to-202 p50 / p99 ms | publish-to-row p50 / p99 ms | lost / duplicates | sluice CPU us | tansu CPU us | simulator CPU us |")
print("|---|---|---|---|---|---|---|---|---|")
for label, name in (("http-memory", "memory, kafka"), ("http-durable", "durable, kafka"), ("receipt-memory", "memory, receipt")):
    for rate in rates:
        r = load(f"{label}-{rate}")
        if not r:
            continue
        l, v = r["ack_latency_ms"], r.get("verify") or {}
        row = v.get("publish_to_row_ms", {})
        print(f"| {name} | {int(rate):,} | {r['acked_per_second']:,.0f} | {l['p50']:.1f} / {l['p99']:.1f} | "
              f"{row.get('p50', 0):.0f} / {row.get('p99', 0):.0f} | {v.get('lost', '?')} / {v.get('duplicates', '?')} | "
              f"{us(r, 'sluice')} | {us(r, 'tansu')} | {us(r, 'simulator')} |")
ch = ceiling("http-memory")
print(f"\nHTTP ceiling (in-memory tansu, 202 after Kafka): {ch:,} requests/s, {ch / max(ceiling('memory'), 1):.2f} of MQTT's on the same storage.")
print(f"\nSenML packs (in-memory tansu; steps in readings/s: {' '.join(pack_steps)}; CPU at the ceiling step):\n")
print("| records per publish | ceiling readings/s | publishes/s there | sluice CPU us per reading | times single readings |")
print("|---|---|---|---|---|")
single = ceiling("memory")
for pack, label in ((1, "memory"), (10, "pack10"), (100, "pack100")):
    c = ceiling(label)
    r = load(f"step-{label}-{c}") if c else None
    cpu = f"{r['cpu']['sluice'] * 1e6 / max(r['acked_readings'], 1):.1f}" if r else "-"
    print(f"| {pack} | {c:,} | {c // pack:,} | {cpu} | {c / max(single, 1):.1f} |")
PY
log "charts: $DATA/runs/base-*.png"
