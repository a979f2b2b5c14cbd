#!/usr/bin/env bash
# Drill (e): the writer is throttled to a fraction of the load, so the Kafka backlog grows;
# the throttle is lifted (writer restarted without it) and the backlog drains.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
start_stack() {
  start_sluice ingress ingress
  start_sluice writer writer SLUICE__WRITER__MAX_ROWS_PER_SECOND=250
}
fault() {
  for _ in 1 2 3 4; do
    sleep 10
    say "throttled to 250 rows/s: $(rows) rows written"
  done
  stop_pidfile "$DATA/sluice-writer.pid"
  start_sluice writer writer
  say "throttle lifted"
  for _ in 1 2 3 4 5 6; do
    sleep 5
    say "$(rows) rows written"
  done
}
drill slow-writer
