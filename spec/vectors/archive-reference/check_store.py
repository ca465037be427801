# Independent reader of the store layout, spec/FORMAT.md sections 5.1-5.3 and 5.8, checked against
# spec/vectors/store/expected.json: store.conf, REPLICA markers, every replica file's checksum
# record, the catalog and every metadata and policy object. The archives themselves are read by
# check_archive.py's reader (each backup's expected outcome, including the swapped one).
#   python3 spec/vectors/archive-reference/check_store.py spec/vectors/store
import hashlib, json, os, struct, sys

D = sys.argv[1]
X = json.load(open(os.path.join(D, "expected.json")))
R = os.path.join(D, X["root"])

class Reader:
    def __init__(self, b): self.b, self.p = b, 0
    def take(self, n):
        assert self.p + n <= len(self.b), "short"
        r = self.b[self.p:self.p + n]; self.p += n; return r
    def u8(self): return self.take(1)[0]
    def u16(self): return struct.unpack(">H", self.take(2))[0]
    def u32(self): return struct.unpack(">I", self.take(4))[0]
    def u64(self): return struct.unpack(">Q", self.take(8))[0]
    def s16(self): return self.take(self.u16()).decode("utf-8")
    def end(self): assert self.p == len(self.b), "trailing bytes"

# store.conf and the REPLICA markers (5.1)
c = Reader(open(os.path.join(R, "store.conf"), "rb").read())
assert c.take(8) == b"HSMBSTOR" and c.u16() == 1
store_id = c.take(16).hex(); quorum = c.u8(); replicas = [c.s16() for _ in range(c.u8())]; c.end()
assert (store_id, quorum, replicas) == (X["storeId"], X["writeQuorum"], X["replicas"])
for i, rp in enumerate(replicas):
    m = Reader(open(os.path.join(R, rp, "REPLICA"), "rb").read())
    assert m.take(8) == b"HSMBREPL" and m.u16() == 1 and m.take(16).hex() == store_id and m.u8() == i; m.end()

# every replica file: data || record || recordLength u32 || "HSOE" (5.3)
def read_object(path, key):
    f = open(path, "rb").read()
    assert f[-4:] == b"HSOE"
    rl = struct.unpack(">I", f[-8:-4])[0]
    rec = f[len(f) - 8 - rl:len(f) - 8]; data = f[:len(f) - 8 - rl]
    r = Reader(rec)
    assert r.take(4) == b"HSOR" and r.u8() == 1 and r.s16() == key
    size = r.u64(); created = r.u64(); cs = r.u32(); n = r.u32()
    assert size == len(data) and n == (size + cs - 1) // cs
    for i in range(n): assert r.take(32) == hashlib.sha256(data[i * cs:(i + 1) * cs]).digest()
    assert r.take(32) == hashlib.sha256(data).digest()
    assert r.take(32) == hashlib.sha256(rec[:-32]).digest(); r.end()
    return data, created

objects = {}
for o in X["objects"]:
    fan = hashlib.sha256(o["key"].encode()).hexdigest()[:2]
    files = [f"{rp}/objects/{fan}/{o['key'].replace('/', '~')}" for rp in replicas]
    assert files == o["files"], o["key"]
    copies = [read_object(os.path.join(R, f), o["key"]) for f in files]
    assert all(c == copies[0] for c in copies), o["key"]
    data, created = copies[0]
    assert (len(data), hashlib.sha256(data).hexdigest(), created) == (o["size"], o["sha256"], o["created"]), o["key"]
    objects[o["key"]] = data
listed = sorted(f"{rp}/objects/{d}/{n}" for rp in replicas for d in os.listdir(os.path.join(R, rp, "objects"))
                for n in os.listdir(os.path.join(R, rp, "objects", d)))
assert listed == sorted(f for o in X["objects"] for f in o["files"]), "no other object files"

# entries (5.8), from the catalog and from the newest metadata object of each backup
STATES = {1: "CREATE_IN_PROGRESS", 2: "READY", 3: "PENDING_DELETION", 4: "DELETED"}
def entry(r):
    e = dict(backupId=r.s16(), clusterId=r.s16(), hsmId=r.s16(), manufacturer=r.s16(), objectKey=r.s16(), state=STATES[r.u8()])
    flags = r.u8(); assert flags & ~7 == 0
    e.update(created=r.u64(), updated=r.u64(), size=r.u64(), generation=r.u64(), neverExpires=bool(flags & 1))
    if flags & 2: e["deleteRequested"] = r.u64()
    assert not flags & 4, "no copies in this store"
    e["tags"] = {r.s16(): r.s16() for _ in range(r.u8())}
    return e
def same(e, x): return all(x.get(k) == v for k, v in e.items())

cat = open(os.path.join(R, "catalog", "catalog.bin"), "rb").read()
assert hashlib.sha256(cat).hexdigest() == X["catalogSha256"] and cat[-32:] == hashlib.sha256(cat[:-32]).digest()
r = Reader(cat[:-32])
assert r.take(8) == b"HSMBCATL" and r.u16() == 1 and r.u64() == X["catalogWriteCount"]
clusters = [r.s16() for _ in range(r.u32())]; assert clusters == sorted(clusters)
index = [(r.u64(), r.u8(), r.u32(), r.u32()) for _ in range(r.u32())]
entries = []
for created, state, ordinal, length in index:
    start = r.p; e = entry(r); assert r.p - start == length
    assert (created, STATES[state], clusters[ordinal]) == (e["created"], e["state"], e["clusterId"])
    entries.append(e)
policies = [dict(clusterId=r.s16(), days=r.u16(), generation=r.u64()) for _ in range(r.u32())]; r.end()
assert policies == X["policies"]
assert [e["backupId"] for e in entries] == [b["backupId"] for b in X["backups"]]
for e, x in zip(entries, X["backups"]):
    assert same(e, x) and ("deleteRequested" in e) == (x.get("deleteRequested") is not None), e["backupId"]
    m = Reader(objects[f"backups/{e['backupId']}/meta-{e['generation']:016x}"])
    assert m.take(8) == b"HSMBMETA" and m.u16() == 1 and entry(m) == e; m.end()
    assert e["objectKey"] in objects, e["backupId"]
for p in policies:
    m = Reader(objects[f"clusters/{p['clusterId']}/policy-{p['generation']:016x}"])
    assert m.take(8) == b"HSMBPOLC" and m.u16() == 1 and dict(clusterId=m.s16(), days=m.u16(), generation=m.u64()) == p; m.end()

# each backup's archive, read as an envelope and checked against its catalog id (section 7)
sys.argv = [sys.argv[0], os.path.join(D, "..", "archive")]
here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "check_archive.py")
src = open(here).read()
ns = {"__file__": here}
exec(compile(src[:src.find("\nvs = json.load")], "check_archive.py", "exec"), ns)
bad = 0
for x in X["backups"]:
    try:
        plain, ctx, _ = ns["read_archive"](objects[x["objectKey"]], x["openWith"])
        if ctx[b"hsmbackup.backup-id"].decode() != x["backupId"]: raise ns["E"]("metadataMismatch")
        bk = X["backupKeys"]
        ns["inner"]["read"](plain, bk["manufacturerId"], bytes.fromhex(bk["mkbk"]), bytes.fromhex(bk["akbk"]))
        got = "ok"
    except ns["E"] as e:
        got = str(e)
    except ns["inner"]["E"] as e:
        got = str(e)
    bad += got != x["expect"]
    print("PASS" if got == x["expect"] else "FAIL", x["backupId"], x["state"], "expected", x["expect"], "got", got)
print("store layout, records, catalog, metadata and policy objects: as expected.json says; failures:", bad)
sys.exit(1 if bad else 0)
