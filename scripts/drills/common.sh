# Shared by the fault drills: a private stack (PostgreSQL, tansu, sluice) on its own ports
# under .data/drill, 1,000 simulated sensors publishing QoS 1, and the verify check at the
# end. Each drill script defines `fault` (what to break, and when to mend it) and calls
# `drill`; SIM_ARGS (an array) adds simulator options, SIM_ADDR is where the sensors go
# (default: the MQTT port). Source it; do not run it.
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

DATA="$ROOT/.data/drill"
PG_PORT=15434 KAFKA_PORT=29092 MQTT_PORT=21883 HTTP_PORT=29464
SENSORS="${DRILL_SENSORS:-1000}" DURATION="${DRILL_DURATION:-60}"
SIM_ARGS=() QOS=1 CONFIG="$ROOT/broker.toml" INGEST_PORT=28080
SIM_ADDR="127.0.0.1:$MQTT_PORT"
export SLUICE__INGRESS__LISTEN="127.0.0.1:$MQTT_PORT" SLUICE__INGRESS__HTTP__LISTEN="127.0.0.1:$INGEST_PORT"
export SLUICE__BROKER__V4__1__LISTEN="127.0.0.1:31883" SLUICE__BROKER__V5__1__LISTEN="127.0.0.1:31884"
export SLUICE__WRITER__GROUP_ID="drill-writer"

# start_sluice NAME ROLE [VAR=VALUE ...]: a sluice process whose pid is in sluice-NAME.pid.
start_sluice() {
  local name="$1" role="$2"; shift 2
  local http=$((HTTP_PORT + $(ls "$DATA"/sluice-*.log 2>/dev/null | wc -l)))
  env SLUICE__HTTP__LISTEN="127.0.0.1:$http" "${LOCAL_FLEET[@]}" "$@" \
    "$ROOT/target/release/sluice" --config "$CONFIG" --role "$role" \
    >>"$DATA/sluice-$name.log" 2>&1 &
  echo $! >"$DATA/sluice-$name.pid"
  echo "$http" >"$DATA/sluice-$name.port"
}

kill9() { # pidfile: SIGKILL, as a crash
  kill -9 "$(cat "$1")" 2>/dev/null || true
  rm -f "$1"
}

rss_mb() { # pidfile [VmRSS|VmHWM]: resident memory now, or at its peak
  awk -v k="${2:-VmRSS}:" '$1 == k {printf "%.0f", $2/1024}' "/proc/$(cat "$1")/status" 2>/dev/null || echo "?"
}

rows() {
  psql "$DATABASE_URL" -X -tAc "SELECT count(*) FROM readings WHERE starts_with(device_id, 'drill-')"
}

say() { printf '[drill %5ss] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }

# drill NAME: fresh stack, `start_stack` (default: one sluice with every role), the
# simulator in the background, `fault` meanwhile, then the verdict from the simulator.
drill() {
  local name="$1"
  [ -x "$ROOT/target/release/sluice-sim" ] || build
  fresh_stack "$DATA" "$PG_PORT" "$KAFKA_PORT"
  trap 'stop_tansu_install; [ -n "${SIM_PID:-}" ] && kill "$SIM_PID" 2>/dev/null; stop_stack "$DATA"' EXIT
  "$ROOT/target/release/sluice" --config "$CONFIG" --migrate-only
  if declare -F start_stack >/dev/null; then start_stack; else start_sluice main all; fi
  wait_port 127.0.0.1 "$MQTT_PORT" sluice
  wait_port 127.0.0.1 "$INGEST_PORT" sluice
  log "drill $name: $SENSORS sensors, ${SIM_ARGS[*]:-QoS $QOS}, ${DURATION}s"
  T0=$(date +%s)
  "$ROOT/target/release/sluice-sim" --addr "$SIM_ADDR" --sensors "$SENSORS" \
    --duration "$DURATION" --qos "$QOS" --prefix drill --progress 10 "${SIM_ARGS[@]}" \
    --verify-db "$DATABASE_URL" --verify-wait 240 --json "$DATA/report.json" \
    >"$DATA/sim.out" 2>&1 &
  SIM_PID=$!
  fault
  local status=0
  wait "$SIM_PID" || status=$?
  SIM_PID=""
  cat "$DATA/sim.out"
  if [ -f "$DATA/sluice-main.pid" ]; then
    PEAK_MB="$(rss_mb "$DATA/sluice-main.pid" VmHWM)"
    echo "sluice peak resident memory: ${PEAK_MB} MiB"
  fi
  local pidfile
  for pidfile in "$DATA"/sluice-*.pid; do
    [ "$pidfile" = "$DATA/sluice-main.pid" ] || [ ! -f "$pidfile" ] ||
      echo "$(basename "$pidfile" .pid) peak resident memory: $(rss_mb "$pidfile" VmHWM) MiB"
  done
  if [ "$status" -ne 0 ] || ! grep -q 'lost=0 duplicates=0' "$DATA/sim.out"; then
    echo "drill $name: FAILED (simulator exit $status)"
    tail -30 "$DATA"/sluice-*.log
    return 1
  fi
  echo "drill $name: passed"
}
