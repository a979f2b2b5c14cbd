#!/usr/bin/env bash
# Runs every fault drill in turn and prints how many passed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
passed=0 failed=0
for d in kafka-kill "kafka-kill http" postgres-stop sluice-kill writer-kill slow-writer rolling-restart bad-neighbours scale-out; do
  read -r script arg <<<"$d"
  if bash "$script.sh" ${arg:+"$arg"}; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
done
echo "drills: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
