#!/usr/bin/env bash
# A moto server for the AWS tests (issue 16): loopback only, a free port, SigV4 signature checks on.
#
#   scripts/aws/moto.sh start [DIR]   start it; writes DIR/moto.env (default DIR: .build-aws-venv/run)
#   scripts/aws/moto.sh stop  [DIR]   stop the server started with DIR
#   scripts/aws/with-moto.sh CMD ...  start, run CMD with the variables below exported, stop (trap)
#
# DIR/moto.env exports (what the Swift tests read):
#   HSMBACKUP_TEST_AWS_ENDPOINT           http://127.0.0.1:PORT (one endpoint for S3, KMS, IAM, STS)
#   HSMBACKUP_TEST_AWS_REGION             us-east-1
#   HSMBACKUP_TEST_AWS_ACCOUNT            123456789012 (moto's default account; key ARNs use it)
#   HSMBACKUP_TEST_AWS_ACCESS_KEY_ID      an IAM user's key with an allow-all policy; moto checks
#   HSMBACKUP_TEST_AWS_SECRET_ACCESS_KEY  every request's signature against it
#   HSMBACKUP_TEST_AWS_VENV               the venv: bin/aws, bin/aws-encryption-cli, bin/python
# Nothing is exported as AWS_* here, so no test talks to AWS by accident; the tests pass these to
# the processes they start as AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_REGION.
# The server's log is DIR/moto.log.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
HERE="$ROOT/scripts/aws"
cmd="${1:-}"
DIR="${2:-$ROOT/.build-aws-venv/run}"
case "$cmd" in
start)
  VENV="$(bash "$HERE/venv.sh")"
  mkdir -p "$DIR"
  if [ -f "$DIR/moto.pid" ] && kill -0 "$(cat "$DIR/moto.pid")" 2>/dev/null; then
    echo "moto: already running (pid $(cat "$DIR/moto.pid")); stop it first" >&2; exit 1
  fi
  PORT="$("$VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')"
  "$VENV/bin/moto_server" -H 127.0.0.1 -p "$PORT" >"$DIR/moto.log" 2>&1 &
  echo $! > "$DIR/moto.pid"
  ENDPOINT="http://127.0.0.1:$PORT"
  for _ in $(seq 1 100); do
    if "$VENV/bin/python" -c "import urllib.request,sys; urllib.request.urlopen('$ENDPOINT/moto-api/data.json', timeout=1)" 2>/dev/null; then break; fi
    kill -0 "$(cat "$DIR/moto.pid")" 2>/dev/null || { echo "moto: the server exited; log:" >&2; cat "$DIR/moto.log" >&2; exit 1; }
    sleep 0.1
  done
  "$VENV/bin/python" "$HERE/moto_auth.py" "$ENDPOINT" > "$DIR/moto.keys"
  read -r AKID SECRET < "$DIR/moto.keys"
  rm -f "$DIR/moto.keys"
  umask 077
  cat > "$DIR/moto.env" <<ENV
export HSMBACKUP_TEST_AWS_ENDPOINT=$ENDPOINT
export HSMBACKUP_TEST_AWS_REGION=us-east-1
export HSMBACKUP_TEST_AWS_ACCOUNT=123456789012
export HSMBACKUP_TEST_AWS_ACCESS_KEY_ID=$AKID
export HSMBACKUP_TEST_AWS_SECRET_ACCESS_KEY=$SECRET
export HSMBACKUP_TEST_AWS_VENV=$VENV
ENV
  echo "moto: $ENDPOINT (pid $(cat "$DIR/moto.pid")), signature checks on; env in $DIR/moto.env" >&2
  ;;
stop)
  if [ -f "$DIR/moto.pid" ]; then
    pid="$(cat "$DIR/moto.pid")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$DIR/moto.pid" "$DIR/moto.env"
  fi
  ;;
*)
  echo "usage: $0 start|stop [DIR]" >&2; exit 2 ;;
esac
