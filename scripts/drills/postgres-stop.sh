#!/usr/bin/env bash
# Drill (b): PostgreSQL is stopped for 20 s, then started. Ingest goes on (Kafka buffers);
# the writer retries its batch and catches up.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
fault() {
  sleep 15
  say "stopping PostgreSQL ($(rows) rows so far)"
  stop_postgres "$DATA/pg"
  sleep 20
  start_postgres "$DATA/pg" "$PG_PORT"
  say "PostgreSQL started"
}
drill postgres-stop
