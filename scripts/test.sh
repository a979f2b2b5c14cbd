#!/usr/bin/env bash
# Runs every test: unit tests, end-to-end tests against a private PostgreSQL (with
# TimescaleDB where it is installed) and tansu that this script starts on their own ports
# (so a running demo is left alone) and stops, then the fault drills
# (scripts/drills/all.sh; SLUICE_SKIP_DRILLS=1 skips them).
# Arguments go to the test binaries, e.g. `scripts/test.sh mosquitto`.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DATA="$ROOT/.data/test"
PG_PORT="${TEST_PG_PORT:-15433}"
KAFKA_PORT="${TEST_KAFKA_PORT:-19092}"

ensure_deps --browser
# Built before the stack starts, while a first tansu install (ensure_deps) runs alongside.
cd "$ROOT"
log "deployment manifests against the Kubernetes schema"
check_manifests
log "formatting and lints"
cargo fmt --all -- --check
cargo clippy --release --all-targets --quiet -- -D warnings
log "building"
cargo build --release --workspace --all-targets --quiet
fresh_stack "$DATA" "$PG_PORT" "$KAFKA_PORT"
# The storage tests run on plain PostgreSQL always, and on TimescaleDB where it is
# installed: then the shared cluster preloads it, and a second one, installed but not
# preloaded, shows what Sluice says about that state.
if timescaledb_installed; then
  export TIMESCALEDB_URL="$DATABASE_URL"
  SLUICE_PG_PRELOAD=none start_postgres "$DATA/pg-unloaded" "$((PG_PORT + 10))"
  export TIMESCALEDB_UNLOADED_URL="postgres://sluice@127.0.0.1:$((PG_PORT + 10))/sluice"
  log "TimescaleDB installed: storage tests run on TimescaleDB and plain PostgreSQL"
else
  log "TimescaleDB not installed: the TimescaleDB half of the storage tests is skipped (README, \"TimescaleDB\")"
fi

./target/release/sluice --config broker.toml --migrate-only
log "tests"
cargo test --release --workspace -- "$@"
stop_stack "$DATA"
if [ "${SLUICE_SKIP_DRILLS:-0}" != 1 ] && [ $# -eq 0 ]; then
  log "fault drills"
  bash "$ROOT/scripts/drills/all.sh"
fi
