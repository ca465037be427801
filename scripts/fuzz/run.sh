#!/usr/bin/env bash
# Runs fuzz targets one after another with libFuzzer, each for SECONDS (one process, one core).
#   scripts/fuzz/run.sh SECONDS [target...]     (default: every target)
# New inputs go to .build-fuzz/corpus/<target> (the committed fuzz/corpus/<target> is read as
# seeds, never written); a crash is saved as .build-fuzz/artifacts/<target>-crash-<sha1> and
# the script exits non-zero after the remaining targets ran. Reproduce a crash with
#   FUZZ_TARGET=<target> .build-fuzz/debug/FuzzRunner <crash-file>
# and turn it into a regression test by copying it to fuzz/corpus/<target>/regress-<name>
# (the XCTest replay runs every corpus file).
set -uo pipefail
cd "$(dirname "$0")/../.."
SECONDS_EACH=${1:?usage: run.sh SECONDS [target...]}
shift
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  TARGETS=(envelope-header envelope-frames inner-header inner-chunks payload store-record catalog keystore
           catalog-query backup-meta retention-policy)
fi
BIN=${FUZZ_BIN:-.build-fuzz/debug/FuzzRunner}
[ -x "$BIN" ] || bash scripts/fuzz/build.sh >/dev/null
mkdir -p .build-fuzz/artifacts .build-fuzz/logs
failed=()
for t in "${TARGETS[@]}"; do
  mkdir -p ".build-fuzz/corpus/$t"
  log=".build-fuzz/logs/$t.log"
  start=$(date +%s)
  FUZZ_TARGET="$t" SWIFT_BACKTRACE=enable=no "$BIN" -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 \
    -max_len=65536 -print_final_stats=1 -artifact_prefix=".build-fuzz/artifacts/$t-" \
    ".build-fuzz/corpus/$t" "fuzz/corpus/$t" >"$log" 2>&1
  rc=$?
  runs=$(grep -E "^stat::number_of_executed_units" "$log" | awk '{print $2}')
  cov=$(grep -E "^#[0-9]+.*(DONE|cov:)" "$log" | tail -1 | sed -E 's/.*cov: ([0-9]+).*/\1/')
  echo "$t: rc=$rc, $(( $(date +%s) - start )) s, ${runs:-?} runs, cov ${cov:-?} (log $log)"
  [ $rc -eq 0 ] || failed+=("$t")
done
if [ ${#failed[@]} -gt 0 ]; then echo "FINDINGS in: ${failed[*]} (see .build-fuzz/artifacts)"; exit 1; fi
