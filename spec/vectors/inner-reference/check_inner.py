# Independent reader of spec/FORMAT.md section 4, checked against spec/vectors/inner.
import hashlib, hmac, io, json, struct, subprocess, sys, tarfile
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap, aes_key_unwrap_with_padding, InvalidUnwrap

D = sys.argv[1]
def kdf(k, label, ctx, L=256):
    out = b""; i = 1
    while len(out) < L // 8:
        out += hmac.new(k, struct.pack(">I", i) + label + b"\x00" + ctx + struct.pack(">I", L), hashlib.sha256).digest(); i += 1
    return out[:L // 8]

class E(Exception): pass

def declared_size(d):
    """The content size a zstd frame header declares (RFC 8878 3.1.1.1), or None."""
    if len(d) < 5 or d[:4] != b"\x28\xb5\x2f\xfd": return None
    fhd = d[4]; fcs_flag = fhd >> 6; single = (fhd >> 5) & 1; did = [0, 1, 2, 4][fhd & 3]
    size = [1 if single else 0, 2, 4, 8][fcs_flag]
    at = 5 + (0 if single else 1) + did
    if size == 0 or len(d) < at + size: return None
    v = int.from_bytes(d[at:at + size], "little")
    return v + 256 if size == 2 else v

def unzstd(d, piece):
    """One chunk's data: one standard zstd frame declaring exactly `piece` bytes, nothing after."""
    if declared_size(d) != piece: raise E("payloadMalformed")
    r = subprocess.run(["zstd", "-dc"], input=d, capture_output=True)
    if r.returncode != 0 or len(r.stdout) != piece: raise E("payloadMalformed")
    # nothing after the frame: the same frame without its last byte must not decode
    if subprocess.run(["zstd", "-dc"], input=d[:-1], capture_output=True).returncode == 0: raise E("payloadMalformed")
    return r.stdout

def read(blob, mfr, mkbk, akbk):
    if len(blob) < 8 or blob[:8] != b"HSMBINNR":
        if blob[:8] != b"HSMBINNR"[:len(blob[:8])]: raise E("badMagic")
        raise E("truncated")
    if len(blob) < 14: raise E("truncated")
    if blob[8] != 2: raise E("unsupportedVersion")
    minor = blob[9]
    blen = struct.unpack(">I", blob[10:14])[0]
    if blen > 16384: raise E("limitExceeded")
    hl = 14 + blen + 32
    if len(blob) < hl: raise E("truncated")
    body = blob[14:14 + blen]; p = 0
    def take(n):
        nonlocal p
        if p + n > len(body): raise E("truncated")
        r = body[p:p + n]; p += n; return r
    strs = []
    for lim in [128, 256, 256, 256, 256, 256]:
        n = struct.unpack(">H", take(2))[0]
        if n > lim: raise E("limitExceeded")
        s = take(n)
        try: strs.append(s.decode("utf-8"))
        except UnicodeDecodeError: raise E("malformedHeader")
    bid = take(16); created = take(8)
    if take(1) != b"\x01": raise E("malformedHeader")
    fp = take(32)
    if take(1) != b"\x01": raise E("malformedHeader")
    wrapped = take(40)
    if take(3) != b"\x01\x02\x01": raise E("malformedHeader")
    cs = struct.unpack(">I", take(4))[0]
    if not 256 <= cs <= 4194304: raise E("limitExceeded")
    psize = struct.unpack(">Q", take(8))[0]
    if psize == 0: raise E("malformedHeader")
    if psize > 1 << 30: raise E("limitExceeded")
    counts = struct.unpack(">III", take(12))
    if minor == 0 and p != len(body): raise E("malformedHeader")
    seal = blob[14 + blen:hl]
    if strs[0] != mfr: raise E("wrongManufacturer")
    cm = struct.pack(">H", len(mfr.encode())) + mfr.encode()
    pbk = kdf(mkbk + akbk, b"hsmbackup/v1 PBK", cm)
    if kdf(pbk, b"hsmbackup/v1 PBK fingerprint", cm) != fp: raise E("pbkMismatch")
    try: ebk = aes_key_unwrap(pbk, wrapped)
    except InvalidUnwrap: raise E("ebkUnwrapFailed")
    ks = kdf(ebk, b"hsmbackup/v1 inner header seal", bid)
    if not hmac.compare_digest(hmac.new(ks, blob[:14 + blen], hashlib.sha256).digest(), seal): raise E("headerSealMismatch")
    hd = hashlib.sha256(blob[:hl]).digest()
    nchunks = (psize + cs - 1) // cs
    ctlen = lambda d: 8 + 8 * ((37 + d + 7) // 8)
    pos = hl; i = 0; tar = b""; final = False
    while pos < len(blob):
        if final: raise E("dataAfterFinalChunk")
        if len(blob) - pos < 5: raise E("truncated")
        t = blob[pos]; n = struct.unpack(">I", blob[pos + 1:pos + 5])[0]
        if t not in (1, 2): raise E("malformedFrame")
        fin = t == 2
        if fin != (i == nchunks - 1): raise E("malformedFrame")
        piece = psize - cs * i if fin else cs
        if not (ctlen(1) <= n <= ctlen(piece + piece // 256 + 64) and n % 8 == 0): raise E("malformedFrame")
        if len(blob) - pos - 5 < n: raise E("truncated")
        try: pt = aes_key_unwrap_with_padding(ebk, blob[pos + 5:pos + 5 + n])
        except InvalidUnwrap: raise E("chunkAuthenticationFailed")
        if pt[:37] != hd + struct.pack(">I", i) + (b"\x01" if fin else b"\x00"): raise E("chunkBindingMismatch")
        tar += unzstd(pt[37:], piece)
        pos += 5 + n; i += 1; final = fin
    if not final: raise E("missingFinalChunk" if pos == len(blob) else "truncated")
    tf = tarfile.open(fileobj=io.BytesIO(tar), mode="r:")
    members = tf.getmembers()
    if not members or members[0].name != "manifest.json": raise E("manifestMalformed")
    mbytes = tf.extractfile(members[0]).read()
    man = json.loads(mbytes)
    if json.dumps(man, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() != mbytes: raise E("manifestMalformed")
    if [o["path"] for o in man["objects"]] != [m.name for m in members[1:]]: raise E("manifestMalformed")
    for o, m in zip(man["objects"], members[1:]):
        b = tf.extractfile(m).read()
        if len(b) != o["size"] or hashlib.sha256(b).hexdigest() != o["sha256"]: raise E("objectDigestMismatch")
    kinds = [o["kind"] for o in man["objects"]]
    if (kinds.count("user"), kinds.count("key"), kinds.count("policy")) != counts: raise E("objectCountMismatch")
    return dict(pbk=pbk.hex(), ebk=ebk.hex(), fp=fp.hex(), hd=hd.hex(), chunks=i, sealKey=ks.hex(), tar=tar)

vs = json.load(open(D + "/vectors.json"))
bad = 0
for v in vs["vectors"]:
    w = v["verifyWith"]
    blob = open(D + "/" + v["file"], "rb").read()
    try:
        r = read(blob, w["manufacturerId"], bytes.fromhex(w["mkbk"]), bytes.fromhex(w["akbk"]))
        got = "ok"
        e = v["expected"]
        if e:
            assert r["pbk"] == e["pbk"] and r["ebk"] == e["ebk"] and r["fp"] == e["pbkFingerprint"] and r["hd"] == e["headerDigest"] and r["chunks"] == e["chunks"] and r["sealKey"] == e["sealKey"], v["name"]
            assert r["tar"] == open(D + "/" + e["payloadFile"], "rb").read()
    except E as x:
        got = str(x)
    ok = got == v["expect"]
    bad += not ok
    print(("PASS" if ok else "FAIL"), v["name"], "expected", v["expect"], "got", got)
print("failures:", bad)
