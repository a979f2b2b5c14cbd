#!/usr/bin/env bash
# Runs every fault drill in turn; stops at the first that fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
for d in kafka-kill postgres-stop sluice-kill writer-kill slow-writer; do
  bash "$d.sh"
done
