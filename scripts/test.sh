#!/usr/bin/env bash
# Runs every test: unit tests, end-to-end tests against a private PostgreSQL and tansu
# that this script starts on their own ports (so a running demo is left alone) and stops,
# then the fault drills (scripts/drills/all.sh; SLUICE_SKIP_DRILLS=1 skips them).
# Arguments go to the test binaries, e.g. `scripts/test.sh mosquitto`.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DATA="$ROOT/.data/test"
PG_PORT="${TEST_PG_PORT:-15433}"
KAFKA_PORT="${TEST_KAFKA_PORT:-19092}"

ensure_deps
fresh_stack "$DATA" "$PG_PORT" "$KAFKA_PORT"

cd "$ROOT"
log "formatting and lints"
cargo fmt --all -- --check
cargo clippy --release --all-targets --quiet -- -D warnings
log "building"
cargo build --release --workspace --all-targets --quiet
./target/release/sluice --config broker.toml --migrate-only
log "tests"
cargo test --release --workspace -- "$@"
stop_stack "$DATA"
if [ "${SLUICE_SKIP_DRILLS:-0}" != 1 ] && [ $# -eq 0 ]; then
  log "fault drills"
  bash "$ROOT/scripts/drills/all.sh"
fi
