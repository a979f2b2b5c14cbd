#!/usr/bin/env bash
# Drill (d): the writer runs as its own process and is killed with SIGKILL mid-load, then
# restarted; it resumes from the offsets it stored with its rows.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
start_stack() {
  start_sluice ingress ingress
  start_sluice writer writer
}
fault() {
  for at in 15 30; do
    sleep 15
    say "SIGKILL writer ($(rows) rows)"
    kill9 "$DATA/sluice-writer.pid"
    sleep 3
    start_sluice writer writer
    say "writer restarted"
  done
}
drill writer-kill
