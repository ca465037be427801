#!/usr/bin/env bash
# The main job end to end on the embedded defaults. Grows with the CLI; today it checks the
# cryptographic core against known answers.
set -euo pipefail
BIN=${1:-.build/debug/hsmbackup}
echo "== hsmbackup selftest: every primitive against a known answer"
"$BIN" selftest
