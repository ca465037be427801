# Independent reader of the archive envelope, spec/FORMAT.md sections 3.2-3.5 and 3.8, checked
# against spec/vectors/archive: every labelled outcome, and every intermediate of the ok vectors
# (data key, EDK IVs, message ID, content key, commitment key, header tag, frames, signature).
# The inner layer is read by ../inner-reference/check_inner.py (its `read` function).
#   python3 spec/vectors/archive-reference/check_archive.py spec/vectors/archive
import base64, datetime, hashlib, json, os, struct, sys
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

D = sys.argv[1]
HERE = os.path.dirname(os.path.abspath(__file__))

# check_inner.py runs over a directory when executed; take only its definitions.
inner_src = open(os.path.join(HERE, "..", "inner-reference", "check_inner.py")).read()
cut = inner_src.find("\nvs = json.load")
inner = {}
if cut > 0:
    saved = sys.argv
    sys.argv = [saved[0], D]
    exec(compile(inner_src[:cut], "check_inner.py", "exec"), inner)
    sys.argv = saved

class E(Exception): pass

def hkdf(dk, mid, info):
    return HKDF(algorithm=hashes.SHA512(), length=32, salt=mid, info=info).derive(dk)

def canonical_context(pairs):
    pairs = sorted(pairs, key=lambda p: p[0])
    if not pairs: return b""
    out = struct.pack(">H", len(pairs))
    for k, v in pairs: out += struct.pack(">H", len(k)) + k + struct.pack(">H", len(v)) + v
    return out

def read_archive(m, keys):
    """Returns (plaintext, intermediates) or raises E(code)."""
    p = 0
    def take(n, code="truncatedHeader"):
        nonlocal p
        if p + n > len(m): raise E(code)
        r = m[p:p + n]; p += n; return r
    if take(1) != b"\x02": raise E("unsupportedVersion")
    suite = take(2)
    if suite not in (b"\x04\x78", b"\x05\x78"): raise E("nonCommittingSuiteRefused")
    mid = take(32)
    aadlen = struct.unpack(">H", take(2))[0]
    ctx = take(aadlen); pairs = []
    if aadlen:
        q = 2; n = struct.unpack(">H", ctx[:2])[0]
        for _ in range(n):
            kl = struct.unpack(">H", ctx[q:q + 2])[0]; k = ctx[q + 2:q + 2 + kl]; q += 2 + kl
            vl = struct.unpack(">H", ctx[q:q + 2])[0]; v = ctx[q + 2:q + 2 + vl]; q += 2 + vl
            pairs.append((k, v))
        if q != aadlen or len({k for k, _ in pairs}) != len(pairs): raise E("invalidEncryptionContext")
    nedk = struct.unpack(">H", take(2))[0]
    if nedk == 0: raise E("noEncryptedDataKeys")
    edks = []
    for _ in range(nedk):
        f = []
        for _ in range(3): f.append(take(struct.unpack(">H", take(2))[0]))
        edks.append(f)
    if take(1) != b"\x02": raise E("invalidContentType")
    flen = struct.unpack(">I", take(4))[0]
    if not 1 <= flen <= 2**31 - 1: raise E("invalidFrameLength")
    commit = take(32)
    body_end = p
    tag = take(16)
    ctxd = dict(pairs)
    signed = suite == b"\x05\x78"
    if signed != (b"aws-crypto-public-key" in ctxd): raise E("reservedContextKey")
    aad = canonical_context(pairs)
    dk = None; used = None
    for prov, info, ct in edks:
        name, iv = info[:-20], info[-12:]
        for k in keys:
            if prov == k["providerID"].encode() and name == k["keyName"].encode():
                try: dk = AESGCM(bytes.fromhex(k["key"])).decrypt(iv, ct, aad); used = iv
                except InvalidTag: pass
            if dk: break
        if dk: break
    if dk is None: raise E("noUsableKey")
    ck = hkdf(dk, mid, suite + b"DERIVEKEY"); cm = hkdf(dk, mid, b"COMMITKEY")
    if cm != commit: raise E("commitmentMismatch")
    try: AESGCM(ck).decrypt(b"\x00" * 12, tag, m[:body_end])
    except InvalidTag: raise E("headerAuthenticationFailed")
    g = AESGCM(ck); seq = 1; out = b""; frames = []
    while True:
        start = p
        if len(m) == p: raise E("missingFinalFrame")
        first = struct.unpack(">I", take(4, "truncatedFrame"))[0]
        final = first == 0xFFFFFFFF
        s = struct.unpack(">I", take(4, "truncatedFrame"))[0] if final else first
        if s != seq: raise E("frameOutOfSequence")
        iv = take(12, "truncatedFrame")
        n = struct.unpack(">I", take(4, "truncatedFrame"))[0] if final else flen
        if n > flen: raise E("finalFrameTooLong")
        c = take(n + 16, "truncatedFrame")
        label = b"AWSKMSEncryptionClient Final Frame" if final else b"AWSKMSEncryptionClient Frame"
        try: out += g.decrypt(iv, c, mid + label + struct.pack(">IQ", seq, n))
        except InvalidTag: raise E("frameAuthenticationFailed")
        frames.append(dict(sequence=seq, final=final, offset=start, iv=iv.hex(), plaintextBytes=n, tag=c[-16:].hex()))
        seq += 1
        if final: break
    sig = None
    if signed:
        footer = p
        n = struct.unpack(">H", take(2, "truncatedFooter"))[0]
        sig = take(n, "truncatedFooter")
        pub = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP384R1(), base64.b64decode(ctxd[b"aws-crypto-public-key"]))
        try: pub.verify(sig, m[:footer], ec.ECDSA(hashes.SHA384()))
        except InvalidSignature: raise E("invalidSignature")
    if p != len(m): raise E("trailingBytes")
    return out, ctxd, dict(dataKey=dk.hex(), messageID=mid.hex(), contentKey=ck.hex(), commitKey=cm.hex(), headerTag=tag.hex(),
                           contextBytes=aad.hex(), frameLength=flen, headerBodyBytes=body_end, frames=frames,
                           signature=sig.hex() if sig else None)

def inner_metadata(blob):
    """The public metadata section 3.8.1 derives from an inner header."""
    q = 14; strs = []
    for _ in range(6):
        n = struct.unpack(">H", blob[q:q + 2])[0]; strs.append(blob[q + 2:q + 2 + n]); q += 2 + n
    bid = blob[q:q + 16]; created = struct.unpack(">Q", blob[q + 16:q + 24])[0]
    q += 16 + 8 + 1 + 32 + 1 + 40 + 3 + 4
    psize = struct.unpack(">Q", blob[q:q + 8])[0]; users, keys, policies = struct.unpack(">III", blob[q + 8:q + 20])
    t = datetime.datetime.fromtimestamp(created, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {b"hsmbackup.backup-id": bid.hex().encode(), b"hsmbackup.cluster-id": strs[5], b"hsmbackup.hsm-id": strs[4],
            b"hsmbackup.manufacturer": strs[0], b"hsmbackup.model": strs[1], b"hsmbackup.firmware": strs[2],
            b"hsmbackup.created": t.encode(), b"hsmbackup.payload-bytes": str(psize).encode(),
            b"hsmbackup.user-count": str(users).encode(), b"hsmbackup.key-count": str(keys).encode(),
            b"hsmbackup.object-count": str(users + keys + policies).encode()}

vs = json.load(open(D + "/vectors.json"))
bad = 0
for v in vs["vectors"]:
    m = open(D + "/" + v["file"], "rb").read()
    try:
        plain, ctxd, got_i = read_archive(m, v["openWith"])
        for k, val in inner_metadata(plain).items():
            if k in ctxd and ctxd[k] != val: raise E("metadataMismatch")
        if "read" in inner:
            bk = v["backupKeys"]
            try: inner["read"](plain, bk["manufacturerId"], bytes.fromhex(bk["mkbk"]), bytes.fromhex(bk["akbk"]))
            except inner["E"] as x: raise E(str(x))
        got = "ok"
        env = v.get("envelope")
        if env:
            for f in ["dataKey", "messageID", "contentKey", "commitKey", "headerTag", "contextBytes", "frameLength", "headerBodyBytes", "frames"]:
                assert got_i[f] == env[f], (v["name"], f)
            assert got_i["signature"] == env.get("signature"), v["name"]
            for k in v["openWith"]:  # each key alone opens it, to the same data key
                assert read_archive(m, [k])[2]["dataKey"] == env["dataKey"], (v["name"], k["keyName"])
            assert [e["iv"] for e in env["edks"]] == [e["providerInfo"][-24:] for e in env["edks"]], v["name"]
            assert hashlib.sha256(plain).hexdigest() == v["inner"]["sha256"] == hashlib.sha256(open(D + "/" + v["inner"]["file"], "rb").read()).hexdigest(), v["name"]
    except E as x:
        got = str(x)
    ok = got == v["expect"]
    bad += not ok
    print(("PASS" if ok else "FAIL"), v["name"], "expected", v["expect"], "got", got)
print("failures:", bad)
sys.exit(1 if bad else 0)
