#!/usr/bin/env bash
# Creates (once) the Python venv the AWS tests use: moto's server, the AWS Encryption SDK CLI and
# the AWS CLI, pinned. Usage: scripts/aws/venv.sh  (prints the venv path). AWS_TEST_VENV=DIR
# overrides the location (default: .build-aws-venv/ at the repository root).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${AWS_TEST_VENV:-$ROOT/.build-aws-venv}"
REQS=("moto[server]==5.2.5" "aws-encryption-sdk-cli==4.3.0" "awscli==1.46.2")
STAMP="$VENV/.pinned"
if [ -x "$VENV/bin/moto_server" ] && [ -x "$VENV/bin/aws-encryption-cli" ] && [ -x "$VENV/bin/aws" ] \
   && [ "$(cat "$STAMP" 2>/dev/null)" = "${REQS[*]}" ]; then
  echo "$VENV"; exit 0
fi
if ! python3 -c 'import ensurepip' 2>/dev/null; then
  echo "aws venv: installing python3-venv" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
fi
echo "aws venv: installing ${REQS[*]} into $VENV" >&2
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "${REQS[@]}" >&2
echo "${REQS[*]}" > "$STAMP"
echo "$VENV"
