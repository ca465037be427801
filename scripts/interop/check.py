"""Interop check between `hsmbackup envelope` and the official AWS Encryption SDK for Python.

Run by run.sh inside a throwaway venv with `aws-encryption-sdk[mpl]` installed:

    python check.py /path/to/hsmbackup WORKDIR

Direction 1: messages written by `hsmbackup envelope encrypt` (frame lengths 1, 7, 4096,
64 KiB (the CLI default), 1 MiB; empty, exact-multiple and other plaintexts; non-ASCII context;
unsigned 0x0478 and signed 0x0578; two or three EDKs) are decrypted by the SDK with its Raw AES keyring, once per EDK.
Direction 2: messages written by the SDK (framed 128/4096/1 MiB and non-framed, both suites, a
multi-keyring) are decrypted by `hsmbackup envelope decrypt`. The whole-archive vectors of
spec/vectors/archive open with the SDK (ok ones) or are refused by it (envelope failures). Exit
status 0 only if every case passes.
"""
import json
import logging
import os
import subprocess
import sys
import time

import aws_encryption_sdk
from aws_encryption_sdk import CommitmentPolicy
from aws_encryption_sdk.identifiers import Algorithm
from aws_cryptographic_material_providers.mpl import AwsCryptographicMaterialProviders
from aws_cryptographic_material_providers.mpl.config import MaterialProvidersConfig
from aws_cryptographic_material_providers.mpl.models import (
    AesWrappingAlg, CreateMultiKeyringInput, CreateRawAesKeyringInput)

BIN, WORK = sys.argv[1], sys.argv[2]
ENV = dict(os.environ, HSMBACKUP_HOME=os.path.join(WORK, "home"))
KMS_NS = "hsmbackup-local-kms"
RAW_NS, RAW_NAME = "interop-ns", "raw key ключ"
RAW_KEY = bytes(range(32, 64))
RAW_KEY_128 = bytes(range(100, 116))
# Raw keys reach the CLI through the environment, never its command line (spec section 7).
ENV["INTEROP_RAW_KEY"] = RAW_KEY.hex()
ENV["INTEROP_RAW_KEY_128"] = RAW_KEY_128.hex()
CONTEXT = {"tenant": "acme", "purpose": "interop", "été": "ж", "😀 grin": "～ tilde", "Zeta": "z"}

client = aws_encryption_sdk.EncryptionSDKClient(commitment_policy=CommitmentPolicy.REQUIRE_ENCRYPT_REQUIRE_DECRYPT)
mpl = AwsCryptographicMaterialProviders(config=MaterialProvidersConfig())
failures = []
passed = 0


def cli(*args, stdin=None):
    return subprocess.run([BIN, *args], env=ENV, input=stdin, capture_output=True)


def raw_keyring(ns, name, key):
    alg = {16: AesWrappingAlg.ALG_AES128_GCM_IV12_TAG16, 32: AesWrappingAlg.ALG_AES256_GCM_IV12_TAG16}[len(key)]
    return mpl.create_raw_aes_keyring(input=CreateRawAesKeyringInput(
        key_namespace=ns, key_name=name, wrapping_key=key, wrapping_alg=alg))


def check(label, ok, detail=""):
    global passed
    if ok:
        passed += 1
    else:
        failures.append(f"{label}: {detail}")
        print(f"FAIL {label}: {detail}", file=sys.stderr)


def pattern(n, seed):
    return bytes((i * 131 + seed * 7 + (i >> 8)) & 0xFF for i in range(n))


# --- keys: two local KMS keys (exported for the SDK) --------------------------------------------
for name in ("prod", "escrow"):
    r = cli("kms", "create-key", name)
    assert r.returncode == 0, r.stderr
r = cli("kms", "rotate", "prod")
assert r.returncode == 0, r.stderr
exports = {}
for name in ("prod", "escrow"):
    r = cli("kms", "export", name, "--json")
    assert r.returncode == 0, r.stderr
    assert b"WARNING" in r.stderr
    e = json.loads(r.stdout)
    exports[name] = (e["keyName"], bytes.fromhex(e["keyHex"]))
assert exports["prod"][0] == "prod/v2"

sdk_rings = {
    "kms:prod": raw_keyring(KMS_NS, *exports["prod"]),
    "kms:escrow": raw_keyring(KMS_NS, *exports["escrow"]),
    "raw": raw_keyring(RAW_NS, RAW_NAME, RAW_KEY),
}
ctx_args = [a for k, v in CONTEXT.items() for a in ("--context", f"{k}={v}")]

# --- direction 1: hsmbackup encrypts, the SDK decrypts ----------------------------------------
t0 = time.time()
MIB = 1 << 20
cases = []
for fl, sizes in ((1, [0, 1, 37]), (7, [0, 14, 50]), (4096, [0, 4096, 3 * 4096, 10000]),
                  (65536, [0, 65536, 2 * MIB + 12345]), (MIB, [0, MIB, MIB + MIB // 2])):
    for size in sizes:
        for signed in (False, True):
            cases.append((fl, size, signed))
for i, (fl, size, signed) in enumerate(cases):
    label = f"hsmbackup->sdk frame={fl} size={size} signed={signed}"
    pt = pattern(size, i)
    src = os.path.join(WORK, f"pt{i}")
    msg = os.path.join(WORK, f"msg{i}")
    with open(src, "wb") as f:
        f.write(pt)
    three = i % 2 == 0
    args = ["envelope", "encrypt", src, "-o", msg, "--frame-length", str(fl), "--kms-key", "prod",
            "--raw-aes-key", "env:INTEROP_RAW_KEY", "--key-namespace", RAW_NS, "--key-name", RAW_NAME, *ctx_args]
    if three:
        args += ["--kms-key", "escrow"]
    if signed:
        args.append("--signed")
    r = cli(*args)
    if r.returncode != 0:
        check(label, False, f"encrypt failed: {r.stderr!r}")
        continue
    with open(msg, "rb") as f:
        ct = f.read()
    rings = ["kms:prod", "raw"] + (["kms:escrow"] if three else [])
    for ring in rings:
        try:
            out, header = client.decrypt(source=ct, keyring=sdk_rings[ring])
            ok = out == pt and all(header.encryption_context.get(k) == v for k, v in CONTEXT.items())
            suite = header.algorithm.algorithm_id
            ok = ok and suite == (0x0578 if signed else 0x0478) and header.frame_length == fl
            check(f"{label} via {ring}", ok, f"plaintext/context/suite mismatch (suite {suite:#06x})")
        except Exception as e:  # noqa: BLE001 - report every SDK failure
            check(f"{label} via {ring}", False, repr(e))

# Rewrap: the new header opens with the SDK, the body bytes are the same, the old key no longer opens it.
for signed in (False, True):
    label = f"rewrap signed={signed}"
    pt = pattern(20000, 77)
    src, msg = os.path.join(WORK, "rw.pt"), os.path.join(WORK, "rw.msg")
    with open(src, "wb") as f:
        f.write(pt)
    args = ["envelope", "encrypt", src, "-o", msg, "--kms-key", "prod", "--frame-length", "4096", *ctx_args]
    r = cli(*(args + (["--signed"] if signed else [])))
    check(f"{label} encrypt", r.returncode == 0, r.stderr)
    r = cli("envelope", "rewrap", msg, "--to-kms-key", "escrow", "--to-raw-aes-key", "env:INTEROP_RAW_KEY",
            "--to-key-namespace", RAW_NS, "--to-key-name", RAW_NAME)
    check(f"{label} rewrap", r.returncode == 0, r.stderr)
    with open(msg, "rb") as f:
        ct = f.read()
    for ring in ("kms:escrow", "raw"):
        try:
            out, _ = client.decrypt(source=ct, keyring=sdk_rings[ring])
            check(f"{label} via {ring}", out == pt, "plaintext differs")
        except Exception as e:  # noqa: BLE001
            check(f"{label} via {ring}", False, repr(e))
    logging.getLogger("aws_encryption_sdk").setLevel(logging.CRITICAL)  # the SDK logs the expected refusal
    try:
        client.decrypt(source=ct, keyring=sdk_rings["kms:prod"])
        check(f"{label} old key refused", False, "the old key still opens the rewrapped message")
    except Exception:  # noqa: BLE001 - any SDK refusal is the expected outcome
        check(f"{label} old key refused", True)
t1 = time.time()

# --- direction 2: the SDK encrypts, hsmbackup decrypts ----------------------------------------
multi = mpl.create_multi_keyring(CreateMultiKeyringInput(
    generator=sdk_rings["kms:prod"],
    child_keyrings=[sdk_rings["raw"], raw_keyring("interop-128", "short key", RAW_KEY_128)]))
sdk_cases = []
for fl, sizes in ((128, [0, 128, 300]), (4096, [0, 8192, 5000]), (MIB, [MIB, 1234567]), (0, [0, 777])):
    for size in sizes:
        for alg in (Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY, Algorithm.AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384):
            sdk_cases.append((fl, size, alg))
for i, (fl, size, alg) in enumerate(sdk_cases):
    label = f"sdk->hsmbackup frame={fl} size={size} suite={alg.algorithm_id:#06x}"
    pt = pattern(size, 100 + i)
    ct, _ = client.encrypt(source=pt, keyring=multi, encryption_context=CONTEXT, frame_length=fl, algorithm=alg)
    msg = os.path.join(WORK, f"sdk{i}")
    with open(msg, "wb") as f:
        f.write(ct)
    for how, extra in (("local kms", []),
                       ("raw key", ["--raw-aes-key", "env:INTEROP_RAW_KEY", "--key-namespace", RAW_NS, "--key-name", RAW_NAME,
                                    "--kms-dir", os.path.join(WORK, "empty-kms")]),
                       ("128-bit raw key", ["--raw-aes-key", "env:INTEROP_RAW_KEY_128", "--key-namespace", "interop-128",
                                            "--key-name", "short key", "--kms-dir", os.path.join(WORK, "empty-kms")])):
        out = os.path.join(WORK, f"sdkout{i}")
        r = cli("envelope", "decrypt", msg, "-o", out, *extra)
        if r.returncode != 0:
            check(f"{label} via {how}", False, r.stderr.decode(errors="replace"))
            continue
        with open(out, "rb") as f:
            check(f"{label} via {how}", f.read() == pt, "plaintext differs")
        os.remove(out)
    # stdin/stdout path and the keyless inspector
    r = cli("envelope", "decrypt", "-", "-o", "-", stdin=ct)
    check(f"{label} via stdin/stdout", r.returncode == 0 and r.stdout == pt, r.stderr.decode(errors="replace"))
    r = cli("envelope", "inspect", msg, "--json", "--walk")
    if r.returncode == 0:
        info = json.loads(r.stdout)
        ctx = {p["key"]: p["value"] for p in info["context"]}
        ok = all(ctx.get(k) == v for k, v in CONTEXT.items()) and len(info["encryptedDataKeys"]) == 3
        check(f"{label} inspect", ok, "inspect output differs")
    else:
        check(f"{label} inspect", False, r.stderr.decode(errors="replace"))

# A damaged SDK message must fail and leave no output file.
ct, _ = client.encrypt(source=pattern(5000, 9), keyring=multi, encryption_context=CONTEXT, frame_length=1024)
bad = bytearray(ct)
bad[-20] ^= 1
badpath = os.path.join(WORK, "bad")
with open(badpath, "wb") as f:
    f.write(bad)
r = cli("envelope", "decrypt", badpath, "-o", os.path.join(WORK, "bad.out"))
check("damaged SDK message is refused", r.returncode == 65 and not os.path.exists(os.path.join(WORK, "bad.out")),
      f"rc={r.returncode} {r.stderr!r}")
t2 = time.time()

# The whole-archive vectors (spec/vectors/archive, spec section 3.10): each ok archive opens with
# the SDK's Raw AES keyring through each key it lists, to its inner blob; the must-fail archives
# whose failure is in the envelope (not the metadata or the inner layer) fail in the SDK too.
VECTORS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "spec", "vectors", "archive")
# (Not trailingBytes: the SDK stops reading at the end of the message and ignores what follows;
# this format refuses it, spec section 3.10.)
ENVELOPE_FAILURES = {"truncatedFooter", "invalidSignature", "frameAuthenticationFailed", "truncatedFrame",
                     "missingFinalFrame", "noUsableKey"}
for v in json.load(open(os.path.join(VECTORS, "vectors.json")))["vectors"]:
    with open(os.path.join(VECTORS, v["file"]), "rb") as f:
        msg = f.read()
    for k in v["openWith"]:
        ring = raw_keyring(k["providerID"], k["keyName"], bytes.fromhex(k["key"]))
        label = f"archive vector {v['name']} via {k['keyName']}"
        try:
            out, _ = client.decrypt(source=msg, keyring=ring)
            got = "ok"
        except Exception as e:  # the SDK's exception types differ per failure; any refusal counts
            got, out = f"refused ({type(e).__name__})", None
        if v["expect"] == "ok":
            with open(os.path.join(VECTORS, v["inner"]["file"]), "rb") as f:
                check(label, got == "ok" and out == f.read(), got)
        elif v["expect"] in ENVELOPE_FAILURES:
            check(label, got != "ok", f"the SDK accepted a vector that must fail with {v['expect']}")

print(f"interop: {passed} checks passed, {len(failures)} failed "
      f"({len(cases)} hsmbackup-made messages in {t1 - t0:.1f}s, {len(sdk_cases)} SDK-made in {t2 - t1:.1f}s)")
sys.exit(1 if failures else 0)
