#!/usr/bin/env bash
# Runs a command with a moto server up (scripts/aws/moto.sh documents the variables exported),
# and stops the server when the command ends, whatever its exit. Exits with the command's status.
# Usage: scripts/aws/with-moto.sh CMD [ARGS...]
# If moto cannot be started, the command still runs without the variables: the AWS tests then
# skip, or fail when HSMBACKUP_REQUIRE_EXTERNAL=1 (as `make test` sets).
set -uo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
DIR="$(mktemp -d -t hsmbackup-moto.XXXXXX)"
trap 'bash "$HERE/moto.sh" stop "$DIR"; rm -rf "$DIR"' EXIT
if bash "$HERE/moto.sh" start "$DIR"; then
  # shellcheck disable=SC1091
  . "$DIR/moto.env"
else
  echo "with-moto: moto could not be started; AWS tests will skip (or fail under HSMBACKUP_REQUIRE_EXTERNAL=1)" >&2
fi
"$@"
