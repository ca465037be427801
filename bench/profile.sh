#!/usr/bin/env bash
# Callgrind profiles of the rows that miss their goal, on reduced inputs (perf's hardware counters
# are not available on this machine: `perf stat -e instructions true` says "not supported").
# Usage: bash bench/profile.sh [OUTDIR]   (after `make bench` built the release products)
# Writes OUTDIR/<row>.callgrind and OUTDIR/<row>.txt (callgrind_annotate, self and inclusive).
set -eu
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="$ROOT/.build/release/hsmbackup"
TOOL="$ROOT/.build/release/BenchTool"
OUT="${1:-$ROOT/.build-bench/profiles}"
MIB="${PROFILE_MIB:-8}"
W="$(mktemp -d -t hsmbackup-profile.XXXXXX)"
trap 'rm -rf "$W"' EXIT
mkdir -p "$OUT"
H=(--home "$W/home")
"$BIN" "${H[@]}" manufacturer create acme >/dev/null
"$BIN" "${H[@]}" operator init >/dev/null
"$BIN" "${H[@]}" kms create-key k >/dev/null
"$BIN" "${H[@]}" store init --replicas 3 >/dev/null
"$BIN" "${H[@]}" hsm create "$W/hsm" --manufacturer acme --model CH-2 --serial P1 --cluster c >/dev/null
"$TOOL" fill-hsm "$W/hsm" $((MIB * 1048576 / 2744)) 800 >/dev/null
"$BIN" "${H[@]}" hsm create "$W/hsm2" --manufacturer acme --model CH-2 --serial P2 --cluster c >/dev/null
head -c $((MIB * 4 * 1048576)) /dev/urandom > "$W/env.in"

cg() { # name, command...
  local name="$1"; shift
  valgrind --tool=callgrind --callgrind-out-file="$OUT/$name.callgrind" "$@" >/dev/null 2>"$OUT/$name.valgrind.log"
  callgrind_annotate "$OUT/$name.callgrind" > "$W/self.txt" 2>/dev/null || true
  callgrind_annotate --inclusive=yes "$OUT/$name.callgrind" > "$W/incl.txt" 2>/dev/null || true
  { echo "== $name: $*"; echo "-- self (exclusive)"; sed -n '/PROGRAM TOTALS/,$p' "$W/self.txt" | head -30
    echo "-- inclusive"; sed -n '/PROGRAM TOTALS/,$p' "$W/incl.txt" | head -40; } > "$OUT/$name.txt"
  echo "profile: $OUT/$name.txt"
}

[ -n "${PROFILE_SKIP_CREATE:-}" ] && "$BIN" "${H[@]}" backup create --hsm "$W/hsm" --kms-key k --out "$W/a.hsmbak" >/dev/null || cg create "$BIN" "${H[@]}" backup create --hsm "$W/hsm" --kms-key k --out "$W/a.hsmbak"
cg verify "$BIN" "${H[@]}" verify "$W/a.hsmbak" --level full --hsm "$W/hsm"
cg restore "$BIN" "${H[@]}" restore "$W/a.hsmbak" --hsm "$W/hsm2"
cg envelope-encrypt "$BIN" "${H[@]}" envelope encrypt --kms-key k "$W/env.in" -o "$W/env.enc"
cg envelope-decrypt "$BIN" "${H[@]}" envelope decrypt --kms-key k "$W/env.enc" -o "$W/env.dec"
cg inspect "$BIN" "${H[@]}" inspect "$W/a.hsmbak"
cg startup "$BIN" --help
"$BIN" --home "$W/cat" store init --replicas 1 >/dev/null
"$TOOL" fill-catalog "$W/cat/store" 2000 >/dev/null
cg catalog-list-2000 "$BIN" --home "$W/cat" backup list
