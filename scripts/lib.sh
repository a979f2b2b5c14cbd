# Shared by the scripts: installs what is missing and starts/stops the private
# PostgreSQL cluster and tansu (Kafka API) on 127.0.0.1. Source it; do not run it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TANSU_VERSION="0.6.0"
TIMESCALEDB_VERSION="2.28.3"
PG_BIN="/usr/lib/postgresql/15/bin"

# The local scripts' simulated fleets all connect from 127.0.0.1: no cap per address there,
# on MQTT and on HTTP (where each sensor holds a connection and a request at a time).
# Scripts that start sluice for them use `env "${LOCAL_FLEET[@]}" ...`.
LOCAL_FLEET=(SLUICE__INGRESS__MAX_CONNECTIONS_PER_ADDRESS=0 SLUICE__INGRESS__MAX_CONNECTIONS=20000
  SLUICE__INGRESS__HTTP__MAX_CONNECTIONS_PER_ADDRESS=0 SLUICE__INGRESS__HTTP__MAX_REQUESTS_PER_ADDRESS=0
  SLUICE__INGRESS__HTTP__MAX_CONNECTIONS=20000 SLUICE__INGRESS__HTTP__MAX_CONCURRENT_REQUESTS=20000)

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

# Debian packages and tansu, each only when missing.
ensure_deps() { # [--browser]: also Chromium, for the dashboard test
  if ! command -v tansu >/dev/null || [ "$(tansu --version 2>/dev/null)" != "tansu $TANSU_VERSION" ]; then
    # In the background, first, so the packages install and Sluice builds meanwhile: the
    # install is the first run's longest step, and each build leaves a core idle for long
    # stretches (build scripts, the last crates, linking). start_tansu waits for it.
    log "installing tansu $TANSU_VERSION in the background (Kafka-compatible broker; once)"
    mkdir -p "$ROOT/.data"
    cargo install tansu --version "$TANSU_VERSION" --locked --features libsql,dynostore \
      >"$ROOT/.data/tansu-install.log" 2>&1 &
    TANSU_INSTALL_PID=$!
    # A script that fails before start_tansu must not leave it compiling on its own
    # (the traps fresh_stack and the scripts set later stop it too).
    trap stop_tansu_install EXIT
  fi
  local pkgs=()
  [ -x "$PG_BIN/initdb" ] || pkgs+=(postgresql-15)
  command -v mosquitto_pub >/dev/null || pkgs+=(mosquitto-clients)
  # mosquitto_passwd writes the password files Sluice reads; openssl makes test certificates.
  command -v mosquitto_passwd >/dev/null || pkgs+=(mosquitto)
  command -v openssl >/dev/null || pkgs+=(openssl)
  # Tests post readings to the HTTP ingest with curl.
  command -v curl >/dev/null || pkgs+=(curl)
  # Tests drive the device port with Debian's Paho Python client too (/usr/bin/python3).
  /usr/bin/python3 -c 'import paho.mqtt' 2>/dev/null || pkgs+=(python3-paho-mqtt)
  command -v runuser >/dev/null || pkgs+=(util-linux)
  # check_manifests' venv (Debian splits ensurepip out of python3).
  /usr/bin/python3 -c 'import ensurepip' 2>/dev/null || pkgs+=(python3-venv)
  # The dashboard test opens the page in headless Chromium.
  if [ "${1:-}" = --browser ] && ! command -v chromium >/dev/null; then pkgs+=(chromium); fi
  if [ ${#pkgs[@]} -gt 0 ]; then
    log "installing ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
    if [[ " ${pkgs[*]} " == *" mosquitto "* ]]; then
      # Only its mosquitto_passwd is wanted: the broker the package starts would hold 1883.
      { systemctl disable --now mosquitto || service mosquitto stop; } >/dev/null 2>&1 || true
    fi
  fi
}

stop_tansu_install() {
  if [ -n "${TANSU_INSTALL_PID:-}" ]; then
    # cargo's rustc children first: they would finish their crates on their own.
    pkill -P "$TANSU_INSTALL_PID" 2>/dev/null || true
    kill "$TANSU_INSTALL_PID" 2>/dev/null || true
    TANSU_INSTALL_PID=""
  fi
}

# Waits for ensure_deps' tansu install, if one is running; stops the script if it failed.
wait_tansu_install() {
  [ -n "${TANSU_INSTALL_PID:-}" ] || return 0
  log "waiting for the tansu install to finish (.data/tansu-install.log)"
  if ! wait "$TANSU_INSTALL_PID"; then
    tail -20 "$ROOT/.data/tansu-install.log" >&2
    echo "installing tansu failed (.data/tansu-install.log)" >&2
    exit 1
  fi
  TANSU_INSTALL_PID=""
}

# deploy/kubernetes against the Kubernetes API's schema, strictly (an unknown field fails):
# for the oldest version the manifests are meant for and the newest the validator knows.
# bridge/tests/deploy.rs checks them against the code; this, against Kubernetes.
KUBERNETES_VALIDATE_VERSION="1.37.0"
check_manifests() {
  local venv="$ROOT/.data/venv-kubernetes-validate"
  if [ "$("$venv/bin/kubernetes-validate" --version 2>/dev/null)" != "$KUBERNETES_VALIDATE_VERSION" ]; then
    log "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION (a venv under .data, once)"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  fi
  local manifests=()
  for f in "$ROOT"/deploy/kubernetes/*.yaml; do
    # kustomize's own file has no Kubernetes schema.
    [ "$(basename "$f")" = kustomization.yaml ] || manifests+=("$f")
  done
  for version in 1.29 "$KUBERNETES_VALIDATE_VERSION"; do
    "$venv/bin/kubernetes-validate" --strict --quiet -k "$version" "${manifests[@]}"
  done
}

build() {
  log "building sluice (release)"
  # While tansu installs, the first run's longest step, Sluice's build takes the CPU that
  # the install leaves.
  local yield=()
  if [ -n "${TANSU_INSTALL_PID:-}" ]; then yield=(nice -n 10); fi
  (cd "$ROOT" && "${yield[@]}" cargo build --release --workspace --quiet)
}

wait_port() { # host port what
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$3 did not listen on $1:$2" >&2
  return 1
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Whether TimescaleDB's library is installed for PostgreSQL 15 (scripts/timescaledb.sh
# builds it where no package has it).
timescaledb_installed() {
  [ -f "$("$PG_BIN/pg_config" --pkglibdir 2>/dev/null || echo /usr/lib/postgresql/15/lib)/timescaledb.so" ]
}

# start_postgres DATA_DIR PORT: a private cluster run by the postgres user, trust auth
# on 127.0.0.1 only, owner and database `sluice`, TimescaleDB preloaded when it is
# installed (SLUICE_PG_PRELOAD=none leaves it out).
start_postgres() {
  local dir="$1" port="$2"
  mkdir -p "$dir"
  # The postgres user must reach the data dir; a repo under /root is not reachable.
  if ! runuser -u postgres -- test -x "$dir" 2>/dev/null; then
    local alt="/var/tmp/sluice-pg-$(echo "$dir" | md5sum | cut -c1-12)"
    mkdir -p "$alt"
    rm -rf "$dir" && ln -s "$alt" "$dir"
  fi
  local pgdata="$dir/pgdata"
  chown postgres "$(readlink -f "$dir")"
  if [ ! -f "$pgdata/PG_VERSION" ]; then
    log "initialising PostgreSQL cluster in $pgdata"
    runuser -u postgres -- "$PG_BIN/initdb" -D "$pgdata" -U sluice --auth=trust -E UTF8 >/dev/null
  fi
  if ! runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$pgdata" status >/dev/null 2>&1; then
    local opts="-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=/tmp -c max_connections=200 -c fsync=on"
    if [ "${SLUICE_PG_PRELOAD:-auto}" = auto ] && timescaledb_installed; then
      # Readings go to hypertables wherever TimescaleDB is installed. Its jobs (5 per
      # database) and one scheduler per database run as background workers; the tests
      # have a dozen databases at once.
      opts+=" -c shared_preload_libraries=timescaledb -c timescaledb.max_background_workers=32"
      opts+=" -c max_worker_processes=43 -c timescaledb.telemetry_level=off"
      log "starting PostgreSQL with TimescaleDB on 127.0.0.1:$port"
    else
      log "starting PostgreSQL on 127.0.0.1:$port"
    fi
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$pgdata" -l "$pgdata/server.log" -w -t 60 \
      -o "$opts" start >/dev/null
  fi
  psql -h 127.0.0.1 -p "$port" -U sluice -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='sluice'" | grep -q 1 ||
    psql -h 127.0.0.1 -p "$port" -U sluice -d postgres -qc "CREATE DATABASE sluice"
}

stop_postgres() {
  local pgdata="$1/pgdata"
  [ -f "$pgdata/PG_VERSION" ] || return 0
  runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$pgdata" -m fast -w stop >/dev/null 2>&1 || true
}

# start_tansu DATA_DIR PORT: durable sqlite storage (TANSU_STORAGE overrides it, e.g.
# memory://tansu/), advertised as 127.0.0.1 (tansu listens on IPv4 only).
start_tansu() {
  wait_tansu_install
  local dir="$1" port="$2"
  mkdir -p "$dir"
  if running "$dir/tansu.pid"; then return 0; fi
  log "starting tansu on 127.0.0.1:$port"
  # `sqlite://NAME` is relative to the working directory, so run it from the data dir.
  (cd "$dir" && exec nohup tansu broker \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine "${TANSU_STORAGE:-sqlite://tansu.db}" \
    >tansu.log 2>&1) &
  echo $! >"$dir/tansu.pid"
  wait_port 127.0.0.1 "$port" tansu
}

stop_pidfile() { # pidfile
  if running "$1"; then
    local pid; pid="$(cat "$1")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}

# stop_stack DIR: stops every sluice (DIR/sluice*.pid), tansu and PostgreSQL (DIR/pg*)
# under DIR.
stop_stack() {
  local p
  for p in "$1"/sluice*.pid; do [ -e "$p" ] && stop_pidfile "$p"; done
  stop_pidfile "$1/kafka/tansu.pid"
  for p in "$1"/pg*; do
    if [ -e "$p" ]; then stop_postgres "$p"; fi
  done
}

# fresh_stack DIR PG_PORT KAFKA_PORT: empty PostgreSQL and tansu under DIR, stopped when
# the script exits, and DATABASE_URL / KAFKA_BROKERS exported for them. A fresh start
# each time, so no result depends on an earlier run.
fresh_stack() {
  local dir="$1"
  trap "stop_tansu_install; stop_stack '$dir'" EXIT
  stop_stack "$dir"
  local pg
  for pg in "$dir"/pg*; do
    if [ -L "$pg" ]; then rm -rf "$(readlink -f "$pg")"; fi
  done
  rm -rf "$dir"
  mkdir -p "$dir"
  start_postgres "$dir/pg" "$2"
  start_tansu "$dir/kafka" "$3"
  export DATABASE_URL="postgres://sluice@127.0.0.1:$2/sluice" KAFKA_BROKERS="127.0.0.1:$3"
}
