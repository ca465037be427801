# Independent reader of spec/FORMAT.md section 4, checked against spec/vectors/inner.
# Written from the spec alone: every step of section 4.6 in its order, the first failure wins.
import hashlib, hmac, json, re, struct, subprocess, sys
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap, aes_key_unwrap_with_padding, InvalidUnwrap

D = sys.argv[1]
MAX_CREATED = 253402300799          # 9999-12-31T23:59:59Z (4.3)
MAX_OBJECTS = 1 << 20

def kdf(k, label, ctx, L=256):
    out = b""; i = 1
    while len(out) < L // 8:
        out += hmac.new(k, struct.pack(">I", i) + label + b"\x00" + ctx + struct.pack(">I", L), hashlib.sha256).digest(); i += 1
    return out[:L // 8]

class E(Exception): pass

def zstd_header(d, piece):
    """The frame header rules of 4.7 (RFC 8878 3.1.1.1): magic, content size declared and equal to
    the piece, no dictionary id, single segment or a window no larger than the piece."""
    if len(d) < 6 or d[:4] != b"\x28\xb5\x2f\xfd": raise E("payloadMalformed")
    fhd = d[4]; fcs_flag = fhd >> 6; single = (fhd >> 5) & 1; did = [0, 1, 2, 4][fhd & 3]
    size = [1 if single else 0, 2, 4, 8][fcs_flag]
    at = 5 + (0 if single else 1) + did
    if size == 0 or len(d) < at + size: raise E("payloadMalformed")
    v = int.from_bytes(d[at:at + size], "little") + (256 if size == 2 else 0)
    if v != piece: raise E("payloadMalformed")
    if fhd & 3: raise E("payloadMalformed")                      # a dictionary id, even 0
    if not single:
        base = 1 << (10 + (d[5] >> 3))
        if base + (base // 8) * (d[5] & 7) > piece: raise E("payloadMalformed")

def unzstd(d, piece):
    """One chunk's data: one zstd frame decoding to exactly `piece` bytes, nothing after."""
    zstd_header(d, piece)
    r = subprocess.run(["zstd", "-dc"], input=d, capture_output=True)
    if r.returncode != 0 or len(r.stdout) != piece: raise E("payloadMalformed")
    # nothing after the frame: the same frame without its last byte must not decode
    if subprocess.run(["zstd", "-dc"], input=d[:-1], capture_output=True).returncode == 0: raise E("payloadMalformed")
    return r.stdout

# ---- the payload (4.7): a strict pax tar, checked entry by entry against the manifest ----

PAX_KEYS = {"path", "size", "mtime", "atime", "ctime", "uid", "gid", "uname", "gname", "comment"}
PATH_CHARS = re.compile(rb"^[A-Za-z0-9._/-]+$")
DIRS = {"policy": "policies/", "user": "users/", "key": "keys/"}

def octal(b):
    """Leading spaces, at least one octal digit, then only NUL or space to the field's end."""
    m = re.fullmatch(rb" *([0-7]+)[ \x00]*", b)
    if not m: raise E("tarMalformed")
    return int(m.group(1), 8)

def check_path(p):
    b = p.encode()
    if not b or len(b) > 1024 or b.startswith(b"/") or b"\x00" in b or b"\\" in b: raise E("tarMalformed")
    if any(c in ("", ".", "..") for c in p.split("/")): raise E("tarMalformed")

def manifest_records(m):
    """The manifest's grammar: exactly these keys, canonical JSON."""
    try: j = json.loads(m.decode("utf-8"))
    except (UnicodeDecodeError, ValueError): raise E("manifestMalformed")
    if not isinstance(j, dict) or set(j) != {"format", "objects", "version"}: raise E("manifestMalformed")
    if j["format"] != "hsmbackup-payload" or type(j["version"]) is not int or j["version"] != 1: raise E("manifestMalformed")
    if not isinstance(j["objects"], list): raise E("manifestMalformed")
    order = {"policy": 0, "user": 1, "key": 2}; last = 0; seen = set()
    for o in j["objects"]:
        if not isinstance(o, dict) or set(o) != {"kind", "path", "sha256", "size"}: raise E("manifestMalformed")
        k, p, h, n = o["kind"], o["path"], o["sha256"], o["size"]
        if k not in order or order[k] < last: raise E("manifestMalformed")
        last = order[k]
        if not isinstance(p, str) or not PATH_CHARS.match(p.encode()) or len(p.encode()) > 1024: raise E("manifestMalformed")
        if not p.startswith(DIRS[k]) or not p.endswith(".json") or len(p) <= len(DIRS[k]) + 5 or p in seen: raise E("manifestMalformed")
        seen.add(p)
        if not isinstance(h, str) or not re.fullmatch(r"[0-9a-f]{64}", h): raise E("manifestMalformed")
        if type(n) is not int or n < 0 or n > 64 << 20: raise E("manifestMalformed")
    if json.dumps(j, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() != m: raise E("manifestMalformed")
    return j["objects"]

def read_payload(tar, counts):
    """Steps 9 of 4.6, in the tar's order. counts = (users, keys, policies) from the header."""
    pos = 0; index = 0; pax = None; records = None; paths = []
    def block():
        nonlocal pos
        if pos + 512 > len(tar): raise E("tarMalformed")
        b = tar[pos:pos + 512]; pos += 512; return b
    def data(n):
        nonlocal pos
        if pos + n > len(tar): raise E("tarMalformed")
        d = tar[pos:pos + n]; pos += n; return d
    def padding(n):
        if any(data((512 - n % 512) % 512)): raise E("tarMalformed")
    while True:
        h = block()
        if not any(h):
            if pax is not None or any(block()) or any(tar[pos:]): raise E("tarMalformed")
            break
        if h[257:263] != b"ustar\x00" or h[263:265] != b"00": raise E("tarMalformed")
        if octal(h[148:156]) != sum(h[:148]) + 32 * 8 + sum(h[156:]): raise E("tarMalformed")
        size = octal(h[124:136]); t = h[156:157]
        if t == b"x":
            if pax is not None or size > 65536: raise E("tarMalformed")
            recs = data(size); padding(size); pax = {}
            while recs:
                m = re.match(rb"([1-9][0-9]{0,6}) ", recs)
                if not m: raise E("tarMalformed")
                n = int(m.group(1))
                if n > len(recs) or n <= len(m.group(0)) or recs[n - 1:n] != b"\n" or b"=" not in recs[len(m.group(0)):n - 1]: raise E("tarMalformed")
                key, _, val = recs[len(m.group(0)):n - 1].partition(b"=")
                try: key, val = key.decode(), val.decode()
                except UnicodeDecodeError: raise E("tarMalformed")
                if key not in PAX_KEYS or (key in ("path", "size") and key in pax): raise E("tarMalformed")
                if key == "size" and not re.fullmatch(r"0|[1-9][0-9]*", val): raise E("tarMalformed")
                if key in ("path", "size"): pax[key] = val
                recs = recs[n:]
            continue
        if t not in (b"0", b"\x00"): raise E("tarMalformed")        # regular files only
        if index >= 3 * MAX_OBJECTS + 1: raise E("tarMalformed")
        if pax and "path" in pax: path = pax["path"]
        else:
            try:
                name = h[0:100].split(b"\x00")[0].decode(); prefix = h[345:500].split(b"\x00")[0].decode()
            except UnicodeDecodeError: raise E("tarMalformed")
            path = prefix + "/" + name if prefix else name
        if pax and "size" in pax: size = int(pax["size"])
        pax = None
        check_path(path)
        if size > 64 << 20: raise E("tarMalformed")
        if index == 0:
            if path != "manifest.json": raise E("manifestMalformed")
            records = manifest_records(data(size))
            kinds = [o["kind"] for o in records]
            if (kinds.count("user"), kinds.count("key"), kinds.count("policy")) != counts: raise E("objectCountMismatch")
        else:
            if index > len(records): raise E("manifestMalformed")          # an entry the manifest does not list
            r = records[index - 1]; body = data(size)
            if path != r["path"] or size != r["size"] or hashlib.sha256(body).hexdigest() != r["sha256"]: raise E("objectDigestMismatch")
            paths.append(path)
        padding(size)
        index += 1
    if index == 0: raise E("manifestMalformed")
    if index - 1 != len(records): raise E("manifestMalformed")              # a listed object missing
    return index

# ---- the blob (4.3 - 4.6) ----

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
        if p + n > len(body): raise E("malformedHeader")     # a field past bodyLength
        r = body[p:p + n]; p += n; return r
    strs = []
    for lim in [128, 256, 256, 256, 256, 256]:
        n = struct.unpack(">H", take(2))[0]
        if n > lim: raise E("limitExceeded")
        s = take(n)
        try: strs.append(s.decode("utf-8"))
        except UnicodeDecodeError: raise E("malformedHeader")
        if len(strs) == 1 and not s: raise E("malformedHeader")
    bid = take(16); created = struct.unpack(">Q", take(8))[0]
    if created > MAX_CREATED: raise E("malformedHeader")
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
    counts = []
    for _ in range(3):
        c = struct.unpack(">I", take(4))[0]
        if c > MAX_OBJECTS: raise E("limitExceeded")
        counts.append(c)
    if minor == 0 and p != len(body): raise E("malformedHeader")   # a higher minor's appended fields are skipped
    seal = blob[14 + blen:hl]
    if strs[0] != mfr: raise E("wrongManufacturer")
    cm = struct.pack(">H", len(mfr.encode())) + mfr.encode()
    pbk = kdf(mkbk + akbk, b"hsmbackup/v1 PBK", cm)
    if kdf(pbk, b"hsmbackup/v1 PBK fingerprint", cm) != fp: raise E("pbkMismatch")
    try: ebk = aes_key_unwrap(pbk, wrapped)
    except InvalidUnwrap: raise E("ebkUnwrapFailed")
    ks = kdf(ebk, b"hsmbackup/v1 inner header seal", bid)       # context: the 16 raw bytes
    if not hmac.compare_digest(hmac.new(ks, blob[:14 + blen], hashlib.sha256).digest(), seal): raise E("headerSealMismatch")
    hd = hashlib.sha256(blob[:hl]).digest()
    nchunks = (psize + cs - 1) // cs
    ctlen = lambda d: 8 + 8 * ((37 + d + 7) // 8)
    pos = hl; i = 0; tar = b""; final = False; chunks = []
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
        binding = hd + struct.pack(">I", i) + (b"\x01" if fin else b"\x00")
        if pt[:37] != binding: raise E("chunkBindingMismatch")
        out = unzstd(pt[37:], piece)
        chunks.append(dict(index=i, type=t, offset=pos, ciphertextBytes=n, binding=binding.hex(), dataBytes=len(pt) - 37,
                           dataSha256=hashlib.sha256(pt[37:]).hexdigest(), pieceBytes=piece,
                           pieceSha256=hashlib.sha256(out).hexdigest()))
        tar += out
        pos += 5 + n; i += 1; final = fin
    if not final: raise E("missingFinalChunk" if pos == len(blob) else "truncated")
    read_payload(tar, tuple(counts))
    return dict(pbk=pbk.hex(), ebk=ebk.hex(), fp=fp.hex(), hd=hd.hex(), chunks=chunks, sealKey=ks.hex(), seal=seal.hex(),
                tar=tar, version="%d.%d" % (blob[8], minor), backupId=bid.hex(), created=created)

vs = json.load(open(D + "/vectors.json"))
bad = 0
for v in vs["vectors"]:
    w = v["verifyWith"]
    blob = open(D + "/" + v["file"], "rb").read()
    try:
        r = read(blob, w["manufacturerId"], bytes.fromhex(w["mkbk"]), bytes.fromhex(w["akbk"]))
        got = "ok"
        e = v.get("expected")
        if e:
            for mine, theirs in [("pbk", "pbk"), ("ebk", "ebk"), ("fp", "pbkFingerprint"), ("hd", "headerDigest"), ("sealKey", "sealKey"),
                                 ("seal", "headerSeal"), ("version", "innerVersion"), ("backupId", "backupId"), ("created", "createdAt")]:
                assert r[mine] == e[theirs], (v["name"], theirs)
            assert len(r["chunks"]) == e["chunks"] and r["chunks"] == e["chunkList"], (v["name"], "chunkList")
            assert r["tar"] == open(D + "/" + e["payloadFile"], "rb").read(), (v["name"], "payload")
            assert hashlib.sha256(r["tar"]).hexdigest() == e["payloadSha256"], (v["name"], "payloadSha256")
    except E as x:
        got = str(x)
    ok = got == v["expect"]
    bad += not ok
    print(("PASS" if ok else "FAIL"), v["name"], "expected", v["expect"], "got", got)
print("failures:", bad)
sys.exit(1 if bad else 0)
