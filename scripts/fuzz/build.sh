#!/usr/bin/env bash
# Builds the libFuzzer runner (all targets in one binary, chosen by FUZZ_TARGET) with the fuzzer
# and address sanitizers, into .build-fuzz (separate from the ordinary build).
#   -DFUZZING          drops the replay @main, so libFuzzer's main is the entry point
#   --sanitize=fuzzer  SwiftPM passes -sanitize=fuzzer to compile and link (coverage + libFuzzer)
#   -sanitize=fuzzer,address adds AddressSanitizer
# Every build takes the shared build lock (machine rule).
set -euo pipefail
cd "$(dirname "$0")/../.."
LOCK=${SWIFT_BUILD_LOCK:-/tmp/swiftbuild.lock}
cmd=(swift build --scratch-path .build-fuzz --product FuzzRunner --sanitize=fuzzer
     -Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING)
if command -v flock >/dev/null; then flock "$LOCK" "${cmd[@]}"; else "${cmd[@]}"; fi
echo ".build-fuzz/debug/FuzzRunner"
