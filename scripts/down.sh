#!/usr/bin/env bash
# Stops what scripts/up.sh started, by pid. Data stays in .data/ for the next run.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
DATA="$ROOT/.data"
stop_stack "$DATA"
log "down"
