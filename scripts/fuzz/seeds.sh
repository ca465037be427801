#!/usr/bin/env bash
# Regenerates the committed seed corpus fuzz/corpus/<target>/seed-* with the ordinary (non-
# fuzzing) build of FuzzRunner: valid samples from spec/vectors/inner, samples/,
# Tests/EnvelopeTests/Vectors and messages/blobs/records built with the fixed fuzz keys, plus
# damaged variants. Regression inputs (fuzz/corpus/<target>/regress-*) are kept.
set -euo pipefail
cd "$(dirname "$0")/../.."
flock "${SWIFT_BUILD_LOCK:-/tmp/swiftbuild.lock}" swift build --product FuzzRunner
find fuzz/corpus -name 'seed-*' -delete 2>/dev/null || true
.build/debug/FuzzRunner seeds . fuzz/corpus
