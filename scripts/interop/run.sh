#!/usr/bin/env bash
# Interop check with the official AWS Encryption SDK for Python (spec/FORMAT.md §3.10).
# Usage: scripts/interop/run.sh PATH/TO/hsmbackup
# Creates a throwaway venv, installs aws-encryption-sdk[mpl] from PyPI, runs check.py both ways,
# and removes everything it created. Set INTEROP_VENV=DIR to reuse a venv between runs.
set -euo pipefail
BIN="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
HERE="$(cd "$(dirname "$0")" && pwd)"
[ -x "$BIN" ] || { echo "interop: $BIN is not an executable (build first)" >&2; exit 2; }
WORK="$(mktemp -d -t hsmbackup-interop.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
VENV="${INTEROP_VENV:-$WORK/venv}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check 'aws-encryption-sdk[mpl]'
fi
"$VENV/bin/python" -c 'import aws_encryption_sdk, aws_cryptographic_material_providers; print("interop: aws-encryption-sdk", aws_encryption_sdk.__version__)'
mkdir -p "$WORK/run"
"$VENV/bin/python" "$HERE/check.py" "$BIN" "$WORK/run"
