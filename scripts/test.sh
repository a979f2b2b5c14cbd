#!/usr/bin/env bash
# Runs every test: unit tests, end-to-end tests against a private PostgreSQL and tansu
# that this script starts on their own ports (so a running demo is left alone) and stops,
# then the fault drills (scripts/drills/all.sh; SLUICE_SKIP_DRILLS=1 skips them).
# Arguments go to the test binaries, e.g. `scripts/test.sh mosquitto`.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DATA="$ROOT/.data/test"
PG_PORT="${TEST_PG_PORT:-54339}"
KAFKA_PORT="${TEST_KAFKA_PORT:-19092}"

ensure_deps
cleanup() {
  stop_pidfile "$DATA/kafka/tansu.pid"
  stop_postgres "$DATA/pg"
}
trap cleanup EXIT
# Each run starts from empty stores, so results never depend on an earlier run.
cleanup
rm -rf "$DATA" "$(readlink -f "$DATA/pg" 2>/dev/null || true)"
mkdir -p "$DATA"
start_postgres "$DATA/pg" "$PG_PORT"
start_tansu "$DATA/kafka" "$KAFKA_PORT"
export DATABASE_URL="postgres://sluice@127.0.0.1:$PG_PORT/sluice"
export KAFKA_BROKERS="127.0.0.1:$KAFKA_PORT"

cd "$ROOT"
log "formatting and lints"
cargo fmt --all -- --check
cargo clippy --release --all-targets --quiet -- -D warnings
log "building"
cargo build --release --workspace --all-targets --quiet
./target/release/sluice --config broker.toml --migrate-only
log "tests"
cargo test --release --workspace -- "$@"
cleanup
if [ "${SLUICE_SKIP_DRILLS:-0}" != 1 ] && [ $# -eq 0 ]; then
  log "fault drills"
  bash "$ROOT/scripts/drills/all.sh"
fi
