#!/usr/bin/env bash
# `make demo`: the main job end to end on the embedded defaults, in a fresh home directory.
# Prints what it does in plain words; exits non-zero if any step does not behave as described.
set -euo pipefail
BIN=$(cd "$(dirname "${1:-.build/debug/hsmbackup}")" && pwd)/$(basename "${1:-.build/debug/hsmbackup}")
DEMO=${DEMO_DIR:-$(mktemp -d /tmp/hsmbackup-demo.XXXXXX)}
export HSMBACKUP_HOME="$DEMO/home"
hb() { echo "\$ hsmbackup $*" >&2; "$BIN" "$@"; }
say() { printf '\n== %s\n' "$*"; }
start=$(date +%s)

say "The cryptographic core checks itself against known answers"
hb selftest

say "A manufacturer (its MKBK), a second manufacturer, the operator's key (AKBK), a KMS key, a 3-replica store"
hb manufacturer create acme
hb manufacturer create globex
hb operator init
hb kms create-key backup-key
hb store init --replicas 3

say "An HSM of acme, populated with a few hundred keys and users"
hb hsm create "$DEMO/hsm-prod" --manufacturer acme --model CH-2 --serial A100 --cluster cluster-prod
hb hsm populate "$DEMO/hsm-prod" --keys 300 --users 40 --seed 42

say "Back it up: the HSM seals its contents under a fresh EBK, the envelope goes under the KMS key, the store keeps 3 replicas"
hb backup create --hsm "$DEMO/hsm-prod" --kms-key backup-key
ID=$("$BIN" backup list --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["backupId"])')

say "List and inspect it with no key at all"
hb backup list
hb inspect "$ID"

say "Verify it at all three levels: structure (no key), envelope (KMS key), full (an HSM of the same manufacturer)"
hb verify "$ID" --level structure
hb verify "$ID" --level envelope
hb verify "$ID" --level full --hsm "$DEMO/hsm-prod"

say "Bit rot: flip a byte of the archive in replica 0; the next read notices, reads another replica and repairs it"
REPLICA=$(find "$HSMBACKUP_HOME/store/replica-0/objects" -type f -name "*$ID*archive" | head -1)
python3 - "$REPLICA" <<'PY'
import sys
p = sys.argv[1]
b = bytearray(open(p, 'rb').read())
b[len(b) // 3] ^= 0xFF
open(p, 'wb').write(b)
print(f"flipped byte {len(b) // 3} of {p}")
PY
hb verify "$ID" --level structure
hb store scrub

say "Restore onto a fresh HSM of the same manufacturer; its contents then match the source"
hb hsm create "$DEMO/hsm-new" --manufacturer acme --model CH-2 --serial A200 --cluster cluster-prod
hb restore "$ID" --hsm "$DEMO/hsm-new"
src=$("$BIN" hsm show "$DEMO/hsm-prod" --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps([d["policies"], d["users"], d["keys"]], sort_keys=True))')
dst=$("$BIN" hsm show "$DEMO/hsm-new" --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps([d["policies"], d["users"], d["keys"]], sort_keys=True))')
if [ "$src" = "$dst" ]; then echo "contents match: same policies, users and keys on hsm-new as on hsm-prod"; else echo "contents differ" >&2; exit 1; fi

say "Restore onto an HSM of another manufacturer: refused, and that HSM is untouched"
hb hsm create "$DEMO/hsm-other" --manufacturer globex --model G-1 --serial G300 --cluster cluster-other
hb hsm populate "$DEMO/hsm-other" --keys 5 --users 2 --seed 9
before=$(cd "$DEMO/hsm-other" && sha256sum * | sha256sum)
set +e
"$BIN" restore "$ID" --hsm "$DEMO/hsm-other"
rc=$?
set -e
after=$(cd "$DEMO/hsm-other" && sha256sum * | sha256sum)
if [ "$rc" -eq 68 ] && [ "$before" = "$after" ]; then
  echo "refused with exit code 68 (incompatible HSM); hsm-other's state is byte-identical"
else
  echo "expected exit 68 and an untouched HSM, got exit $rc" >&2; exit 1
fi

SOFTHSM=/usr/lib/softhsm/libsofthsm2.so
if [ -e "$SOFTHSM" ] && command -v softhsm2-util >/dev/null && command -v pkcs11-tool >/dev/null; then
  say "PKCS#11: two SoftHSM2 tokens (throwaway PINs), each provisioned once with the PBK of manufacturer softhsm"
  mkdir -p "$DEMO/softhsm/tokens"
  printf 'directories.tokendir = %s/softhsm/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' "$DEMO" > "$DEMO/softhsm/softhsm2.conf"
  export SOFTHSM2_CONF="$DEMO/softhsm/softhsm2.conf"
  # hsmbackup takes PINs only from the environment or a prompt, never from its arguments.
  export HSMBACKUP_PKCS11_SO_PIN=demo-so-pin HSMBACKUP_PKCS11_PIN=demo-user-pin
  for t in token-A token-B; do
    softhsm2-util --init-token --free --label "$t" --so-pin "$HSMBACKUP_PKCS11_SO_PIN" --pin "$HSMBACKUP_PKCS11_PIN" >/dev/null
  done
  hb manufacturer create softhsm
  hb pkcs11 provision --module "$SOFTHSM" --token token-A --manufacturer softhsm
  hb pkcs11 provision --module "$SOFTHSM" --token token-B --manufacturer softhsm
  p11() { pkcs11-tool --module "$SOFTHSM" --login --pin "$HSMBACKUP_PKCS11_PIN" "$@" >/dev/null 2>&1; }
  p11 --token-label token-A --keypairgen --key-type rsa:2048 --label demo-rsa --id 01 --extractable
  p11 --token-label token-A --keygen --key-type AES:32 --label demo-aes --id 02 --extractable
  echo "token-A holds an RSA-2048 pair and an AES-256 key (made with pkcs11-tool)"

  say "Back up token-A: its keys are wrapped inside the token; the archive goes into the same store"
  hb backup create --pkcs11 --module "$SOFTHSM" --token token-A --cluster softhsm-demo --kms-key backup-key
  PID=$("$BIN" backup list --cluster softhsm-demo --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["backupId"])')
  hb verify "$PID" --level full --pkcs11 --module "$SOFTHSM" --token token-B

  say "Restore it onto token-B; B's copy of the RSA key signs, and OpenSSL verifies with token-A's public key"
  hb restore "$PID" --pkcs11 --module "$SOFTHSM" --token token-B
  echo "signed on token-B" > "$DEMO/softhsm/msg"
  p11 --token-label token-B --sign --mechanism SHA256-RSA-PKCS --id 01 -i "$DEMO/softhsm/msg" -o "$DEMO/softhsm/sig"
  pkcs11-tool --module "$SOFTHSM" --token-label token-A --read-object --type pubkey --id 01 -o "$DEMO/softhsm/pub.der" >/dev/null 2>&1
  openssl pkey -pubin -inform DER -in "$DEMO/softhsm/pub.der" -out "$DEMO/softhsm/pub.pem"
  openssl dgst -sha256 -verify "$DEMO/softhsm/pub.pem" -signature "$DEMO/softhsm/sig" "$DEMO/softhsm/msg"
else
  say "PKCS#11 part skipped: SoftHSM2 / pkcs11-tool not installed (make deps installs them)"
fi

echo
echo "demo finished in $(( $(date +%s) - start )) s; everything is in $DEMO"
