#!/usr/bin/env python3
"""hsmbackup benchmark harness (issue 7, item 3). Run it through `make bench`.

Every row runs ours and the peer alternately on the same input, BENCH_REPS times, and reports the
medians and the ratio (peer time / our time: > 1 means we are faster). Peak RSS comes from the
kernel's rusage of each child (ru_maxrss, the figure `/usr/bin/time -v` prints as "Maximum
resident set size"). Prints a table and writes bench/results.md and bench/results.json.

Environment (all optional):
  BENCH_REPS=3        repetitions per row (alternated ours/peer)
  BENCH_MIB=256       target HSM payload / envelope file size in MiB
  BENCH_BIG_MIB=1000  the larger payload of the RSS row (1 GiB; the format's limit is 2^30 bytes)
  BENCH_FLEET=1000    archives in the fleet row
  BENCH_CATALOG=100000 entries in the catalog-listing row
  BENCH_WORK=DIR      scratch directory (default .build-bench/work, wiped at the start)
  BENCH_RESULTS=DIR   where results.md and results.json go (default bench/)
  BENCH_VENV=DIR      Python venv for aws-encryption-cli and moto (default .build-bench/venv)
  BENCH_ONLY=a,b      run only these rows (kwp,create,verify,restore,envelope,rss,inspect,rewrap,fleet,catalog,scrub,pkcs11,s3)
  BENCH_JOBS=N        the fleet row's parallel pass: `verify --all --jobs N` (and N processes at once) (default: the core count)
  BENCH_P11_KEYS=1000 keys on the SoftHSM2 token of the pkcs11 row (and a tenth of it, for the RSS comparison)
  BENCH_S3_BACKUPS=10000 stored backups in the S3 `backup list` row
  KWP_BENCH=CMD       command that measures our multi-lane KWP (default `.build/release/KWPBench REPS`
                      if present, from branch kwp): its `wrap N lanes <OpenSSL> <lanes>` rows, or a
                      `mb_per_s=<float>` / JSON "mb_per_s" figure
"""
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REL = os.path.join(ROOT, ".build", "release")
BIN = os.path.join(REL, "hsmbackup")
TOOL = os.path.join(REL, "BenchTool")
REPS = int(os.environ.get("BENCH_REPS", "3"))
MIB = int(os.environ.get("BENCH_MIB", "256"))
BIG_MIB = int(os.environ.get("BENCH_BIG_MIB", "1000"))
FLEET = int(os.environ.get("BENCH_FLEET", "1000"))
CATALOG_N = int(os.environ.get("BENCH_CATALOG", "100000"))
JOBS = int(os.environ.get("BENCH_JOBS", str(os.cpu_count() or 2)))
WORK = os.path.abspath(os.environ.get("BENCH_WORK", os.path.join(ROOT, ".build-bench", "work")))
VENV = os.path.abspath(os.environ.get("BENCH_VENV", os.path.join(ROOT, ".build-bench", "venv")))
RESULTS = os.path.abspath(os.environ.get("BENCH_RESULTS", os.path.join(ROOT, "bench")))
ONLY = set(filter(None, os.environ.get("BENCH_ONLY", "").split(",")))
HOME = os.path.join(WORK, "home")
HSM = os.path.join(WORK, "hsm-big")
KMS_KEY = "bench-key"
KMS_KEY2 = "bench-key-2"
RESTIC_ENV = dict(os.environ, RESTIC_PASSWORD="bench-password-not-secret")

rows = []          # the results, in table order
CURRENT = [""]     # the row group being run (kwp, create, ...), recorded in each row
ORDER = ["kwp", "create", "verify", "restore", "rss", "inspect", "rewrap", "envelope", "fleet", "catalog", "scrub", "pkcs11", "s3"]
notes = []         # free-text findings for results.md


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def run(cmd, env=None, stdin=None, stdout=subprocess.PIPE, check=True):
    """Runs cmd; returns (seconds, max RSS in KiB, stdout text). Wall time around fork..wait4."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE)
    out, err = p.communicate()
    t = time.perf_counter() - t0
    # communicate() has reaped the child; its rusage is in RUSAGE_CHILDREN only cumulatively, so
    # measure RSS separately with wait4 when asked (see run_rss).
    if check and p.returncode != 0:
        raise RuntimeError("command failed (%d): %s\n%s" % (p.returncode, " ".join(cmd), (err or b"").decode()[-2000:]))
    return t, None, (out or b"").decode(errors="replace")


def run_rss(cmd, env=None, check=True):
    """Like run(), but with the child's own peak RSS from wait4 (KiB)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # Drain pipes in a simple way: outputs of our commands are small.
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    t = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if check and p.returncode != 0:
        raise RuntimeError("command failed (%d): %s\n%s" % (p.returncode, " ".join(cmd), err.decode()[-2000:]))
    return t, ru.ru_maxrss, out.decode(errors="replace")


def hb(*args):
    return [BIN, "--home", HOME] + list(args)


def med(xs):
    return statistics.median(xs) if xs else None


def add_row(name, ours, peer, goal, meets, unit="s", ours_label="", peer_label="", detail=None, samples=None):
    r = {"key": CURRENT[0], "run_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "row": name, "ours": ours, "peer": peer, "unit": unit, "goal": goal, "meets": meets,
         "ours_label": ours_label, "peer_label": peer_label}
    if detail:
        r["detail"] = detail
    if samples:
        r["samples"] = samples
    rows.append(r)
    log("  -> %s: ours %s, peer %s, goal %s: %s" % (name, fmt(ours, unit), fmt(peer, unit), goal,
                                                  "MEETS" if meets else ("misses" if meets is False else "n/a")))


def fmt(v, unit):
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if unit == "s":
        return "%.3f s" % v if v < 10 else "%.1f s" % v
    if unit == "ms":
        return "%.1f ms" % v
    if unit == "MB/s":
        return "%.1f MB/s" % v
    if unit == "MiB":
        return "%.1f MiB" % v
    return "%s %s" % (v, unit)


def alternate(ours_cmd, peer_cmd, reps=REPS, ours_prep=None, peer_prep=None, ours_env=None, peer_env=None):
    """Alternates ours and peer reps times (order flipped every rep). Returns sample lists."""
    o, p, orss = [], [], []
    for i in range(reps):
        order = [0, 1] if i % 2 == 0 else [1, 0]
        for which in order:
            if which == 0:
                if ours_prep:
                    ours_prep()
                t, rss, _ = run_rss(ours_cmd() if callable(ours_cmd) else ours_cmd, env=ours_env)
                o.append(t)
                orss.append(rss)
            else:
                if peer_prep:
                    peer_prep()
                t, _, _ = run(peer_cmd() if callable(peer_cmd) else peer_cmd, env=peer_env)
                p.append(t)
    return o, p, orss


def wanted(name):
    return not ONLY or name in ONLY


def rm(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.remove(path)


def dir_bytes(path):
    total = 0
    for dp, _, fs in os.walk(path):
        for f in fs:
            total += os.path.getsize(os.path.join(dp, f))
    return total


# ---------------------------------------------------------------- setup

def setup_home():
    rm(WORK)
    os.makedirs(WORK)
    run(hb("manufacturer", "create", "acme"))
    run(hb("operator", "init"))
    run(hb("kms", "create-key", KMS_KEY))
    run(hb("kms", "create-key", KMS_KEY2))
    run(hb("store", "init", "--replicas", "3"))


def make_big_hsm():
    """An HSM whose backup payload is about BENCH_MIB MiB (see bench/README.md for why BenchTool)."""
    run(hb("hsm", "create", HSM, "--manufacturer", "acme", "--model", "CH-2", "--serial", "B1",
           "--cluster", "cluster-bench"))
    # 800-byte generic secrets (CloudHSM's largest GENERIC_SECRET): hex material makes the payload
    # about 2:1 compressible. 2744 bytes of tar payload per key (measured: JSON + pax/tar headers).
    keys = max(1, int(MIB * 1024 * 1024 / 2744))
    t, _, out = run([TOOL, "fill-hsm", HSM, str(keys), "800"])
    info = json.loads(out)
    log("  big HSM: %d keys, contents.state %.1f MiB (%.1f s)" % (keys, info["contents_state_bytes"] / 2**20, t))
    return info


def restic_repo(path):
    rm(path)
    run(["restic", "init", "--repo", path, "--quiet"], env=RESTIC_ENV)


# ---------------------------------------------------------------- rows

def parse_kwpbench(out):
    """KWPBench (branch kwp) prints rows `wrap   N lanes   <OpenSSL MB/s>   <lanes MB/s>   <ratio>x`
    (and unwrap rows); returns {(op, lanes): (openssl, ours)}. Also accepts `mb_per_s=<x>`."""
    rows_ = {}
    for line in out.splitlines():
        m = re.match(r"\s*(wrap|unwrap)\s+(\d+)\s+lanes?\s+([0-9.]+)\s+([0-9.]+)", line)
        if m:
            rows_[(m.group(1), int(m.group(2)))] = (float(m.group(3)), float(m.group(4)))
    m = re.search(r'"?mb_per_s"?\s*[=:]\s*([0-9.]+)', out)
    if not rows_ and m:
        rows_[("wrap", 0)] = (None, float(m.group(1)))
    return rows_


def row_kwp():
    log("row: payload KWP, one thread, 64 KiB chunks")
    name = "payload KWP wrap, 1 thread, 64 KiB chunks"
    cmd = os.environ.get("KWP_BENCH") or (os.path.join(REL, "KWPBench") if os.access(os.path.join(REL, "KWPBench"), os.X_OK) else None)
    peer = []
    for i in range(REPS):
        _, _, out = run([TOOL, "kwp-openssl", "2", "65536"])
        peer.append(json.loads(out)["mb_per_s"])
    p = med(peer)
    parsed = {}
    if cmd:
        try:
            _, _, out = run(cmd.split() + ([str(REPS)] if "KWP_BENCH" not in os.environ else []))
            parsed = parse_kwpbench(out)
        except RuntimeError as e:
            log("  KWPBench failed: %s" % e)
    wraps = {k: v for k, v in parsed.items() if k[0] == "wrap"}
    if wraps:
        (op, lanes), (openssl, ours) = max(wraps.items(), key=lambda kv: kv[1][1])
        base = openssl if openssl else p
        detail = "KWPBench (ours and OpenSSL alternated in one process): " + "; ".join(
            "%s %d lanes %.1f vs %.1f MB/s" % (k[0], k[1], v[1], v[0] or 0) for k, v in sorted(parsed.items()))
        add_row(name + " (%d lanes)" % lanes, ours, base, ">= 15x OpenSSL", ours / base >= 15, unit="MB/s",
                ours_label="AESKeyWrapLanes", peer_label="OpenSSL EVP id-aes256-wrap-pad",
                detail=detail + "; BenchTool kwp-openssl alone: %.1f MB/s" % p, samples={"peer_benchtool": peer})
    else:
        add_row(name, "pending (kwp branch)", p, ">= 15x OpenSSL", None, unit="MB/s",
                ours_label="pending (kwp branch)", peer_label="OpenSSL EVP id-aes256-wrap-pad", samples={"peer": peer})


state = {}


def row_create():
    log("row: backup create (%d MiB payload) vs restic backup" % MIB)
    repo = os.path.join(WORK, "restic-repo")
    ids = []

    def ours():
        return hb("backup", "create", "--hsm", HSM, "--kms-key", KMS_KEY, "--json")
    o, p, orss = [], [], []
    for i in range(REPS):
        for which in ([0, 1] if i % 2 == 0 else [1, 0]):
            if which == 0:
                t, rss, out = run_rss(ours())
                o.append(t)
                orss.append(rss)
                created = json.loads(out)
                ids.append(created["backupId"])
                state["archive_bytes"] = created.get("archiveBytes")
            else:
                restic_repo(repo)
                t, _, _ = run(["restic", "backup", "--repo", repo, "--quiet", HSM], env=RESTIC_ENV)
                p.append(t)
    state["ids"] = ids
    state["create_rss"] = orss
    _, _, out = run(hb("inspect", ids[-1], "--json"))
    state["inspect_json"] = out
    m = re.search(r'"payload(?:Bytes|Size|_bytes)?"\s*:\s*([0-9]+)', out)
    payload = int(m.group(1)) if m else None
    state["payload_bytes"] = payload
    om, pm = med(o), med(p)
    detail = "payload %s bytes, archive %s bytes, restic repo %d bytes" % (payload, state["archive_bytes"], dir_bytes(repo))
    add_row("backup create, %d MiB HSM payload (store, 3 replicas)" % MIB, om, pm, ">= 2.5x faster than restic backup",
            pm / om >= 2.5, ours_label="hsmbackup backup create", peer_label="restic backup (fresh local repo)",
            detail=detail, samples={"ours": o, "peer": p})
    state["restic_repo"] = repo


def row_verify():
    log("row: verify --level full vs restic check --read-data")
    ident = state["ids"][-1]
    repo = state["restic_repo"]
    o, p, orss = alternate(hb("verify", ident, "--level", "full", "--hsm", HSM),
                           ["restic", "check", "--repo", repo, "--read-data", "--quiet"], peer_env=RESTIC_ENV)
    state["verify_rss"] = orss
    om, pm = med(o), med(p)
    add_row("verify --level full, %d MiB payload" % MIB, om, pm, ">= 1.5x faster than restic check --read-data",
            pm / om >= 1.5, ours_label="hsmbackup verify --level full", peer_label="restic check --read-data",
            samples={"ours": o, "peer": p})


def row_restore():
    """Issue 17: restore of the archive onto a fresh HSM vs `restic restore` of the same HSM
    directory from the repository the create row made (each run onto a new, empty target)."""
    log("row: restore onto a fresh HSM vs restic restore")
    ident = state["ids"][-1]
    repo = state["restic_repo"]
    target = os.path.join(WORK, "hsm-restore-row")
    rdir = os.path.join(WORK, "restic-restore")

    def fresh_hsm():
        rm(target)
        run(hb("hsm", "create", target, "--manufacturer", "acme", "--model", "CH-2", "--serial", "RR",
               "--cluster", "cluster-bench"))
    o, p, orss = alternate(hb("restore", ident, "--hsm", target),
                           ["restic", "restore", "latest", "--repo", repo, "--target", rdir, "--quiet"],
                           ours_prep=fresh_hsm, peer_prep=lambda: rm(rdir), peer_env=RESTIC_ENV)
    # Both restored the same content: restic the HSM's state file, ours the state it decodes to.
    run(["cmp", os.path.join(HSM, "contents.state"), os.path.join(rdir + HSM, "contents.state")])
    om, pm = med(o), med(p)
    add_row("restore onto a fresh HSM, %d MiB payload" % MIB, om, pm, "(figure only; issue 17 sets no goal)", None,
            ours_label="hsmbackup restore", peer_label="restic restore latest (fresh target)",
            detail="peak RSS %.1f MiB; spread ours %.3f-%.3f s, restic %.3f-%.3f s" % (
                max(orss) / 1024.0, min(o), max(o), min(p), max(p)),
            samples={"ours": o, "peer": p})
    rm(target)
    rm(rdir)


def row_rewrap():
    """Rewrap (issue 12) decrypts and re-encrypts every frame under a new data key; goal: at most
    1.5x the time of decrypting the same archive. Its own archive, so the other rows' keys stay."""
    log("row: backup rewrap / envelope rewrap of the %d MiB archive vs envelope decrypt of it" % MIB)
    _, _, out = run(hb("backup", "create", "--hsm", HSM, "--kms-key", KMS_KEY, "--json"))
    ident = json.loads(out)["backupId"]
    archive = os.path.join(WORK, "rewrap.hsmbak")
    plain = os.path.join(WORK, "rewrap.inner")
    rm(archive)
    run(hb("backup", "create", "--hsm", HSM, "--kms-key", KMS_KEY, "--out", archive))
    keys = {"store": [KMS_KEY, KMS_KEY2], "file": [KMS_KEY, KMS_KEY2]}

    def rewrap(kind):
        # Alternates between the two keys, so every run has a key that opens the archive.
        old, new = keys[kind]
        keys[kind] = [new, old]
        if kind == "store":
            return hb("backup", "rewrap", ident, "--from-kms-key", old, "--kms-key", new)
        return hb("envelope", "rewrap", archive, "--kms-key", old, "--to-kms-key", new)

    def decrypt():
        return hb("envelope", "decrypt", "--kms-key", keys["file"][0], archive, "-o", plain)
    clear = lambda: rm(plain)
    for kind, label in (("store", "backup rewrap (store, 3 replicas)"), ("file", "envelope rewrap (file)")):
        o, p, orss = alternate(lambda: rewrap(kind), decrypt, peer_prep=clear)
        om, pm = med(o), med(p)
        add_row("%s, %d MiB archive, vs envelope decrypt of it" % (label, MIB), om, pm,
                "<= 1.5x the decrypt time", om <= 1.5 * pm, ours_label="hsmbackup " + label.split(" (")[0],
                peer_label="hsmbackup envelope decrypt (same archive, to a file)",
                detail="peak RSS %.1f MiB" % (max(orss) / 1024.0), samples={"ours": o, "peer": p})
    run(hb("verify", ident, "--level", "envelope"))
    rm(archive)
    rm(plain)


def start_moto():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    proc = subprocess.Popen([os.path.join(VENV, "bin", "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    env = dict(os.environ, AWS_ENDPOINT_URL="http://127.0.0.1:%d" % port, AWS_ACCESS_KEY_ID="testing",
               AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1", AWS_REGION="us-east-1")
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    code = "import boto3; print(boto3.client('kms').create_key(Description='bench')['KeyMetadata']['Arn'])"
    _, _, out = run([os.path.join(VENV, "bin", "python"), "-c", code], env=env)
    return proc, env, out.strip()


def row_envelope():
    log("row: envelope encrypt/decrypt %d MiB vs age and aws-encryption-cli" % MIB)
    src = os.path.join(WORK, "envelope-in.bin")
    with open("/dev/urandom", "rb") as r, open(src, "wb") as w:
        for _ in range(MIB):
            w.write(r.read(1 << 20))
    ours_ct, ours_pt = os.path.join(WORK, "env.ours.enc"), os.path.join(WORK, "env.ours.dec")
    age_ct, age_pt = os.path.join(WORK, "env.age"), os.path.join(WORK, "env.age.dec")
    aws_ct, aws_pt = os.path.join(WORK, "env.aws.enc"), os.path.join(WORK, "env.aws.dec")
    ident = os.path.join(WORK, "age-identity.txt")
    rm(ident)
    run(["age-keygen", "-o", ident])
    _, _, recip = run(["age-keygen", "-y", ident])
    recip = recip.strip()
    enc_ours = hb("envelope", "encrypt", "--kms-key", KMS_KEY, src, "-o", ours_ct)
    dec_ours = hb("envelope", "decrypt", "--kms-key", KMS_KEY, ours_ct, "-o", ours_pt)

    def clear(*paths):
        return lambda: [rm(x) for x in paths]
    o_e, a_e, _ = alternate(enc_ours, ["age", "-r", recip, "-o", age_ct, src],
                            ours_prep=clear(ours_ct), peer_prep=clear(age_ct))
    o_d, a_d, _ = alternate(dec_ours, ["age", "-d", "-i", ident, "-o", age_pt, age_ct],
                            ours_prep=clear(ours_pt), peer_prep=clear(age_pt))
    for f in (ours_pt, age_pt):
        run(["cmp", src, f])
    moto, env, arn = start_moto()
    try:
        cli = os.path.join(VENV, "bin", "aws-encryption-cli")
        o_e2, w_e, _ = alternate(enc_ours, [cli, "-e", "-i", src, "-o", aws_ct, "-w", "key=" + arn, "-S"],
                                 ours_prep=clear(ours_ct), peer_prep=clear(aws_ct), peer_env=env)
        o_d2, w_d, _ = alternate(dec_ours, [cli, "-d", "-i", aws_ct, "-o", aws_pt, "-w", "key=" + arn, "-S"],
                                 ours_prep=clear(ours_pt), peer_prep=clear(aws_pt), peer_env=env)
        run(["cmp", src, aws_pt])
    finally:
        os.killpg(moto.pid, signal.SIGTERM)
        moto.wait()
    for label, o, p, goal, factor in (
            ("envelope encrypt %d MiB vs age" % MIB, o_e, a_e, "faster than age", 1.0),
            ("envelope decrypt %d MiB vs age" % MIB, o_d, a_d, "faster than age", 1.0),
            ("envelope encrypt %d MiB vs aws-encryption-cli" % MIB, o_e2, w_e, ">= 5x faster than aws-encryption-cli", 5.0),
            ("envelope decrypt %d MiB vs aws-encryption-cli" % MIB, o_d2, w_d, ">= 5x faster than aws-encryption-cli", 5.0)):
        om, pm = med(o), med(p)
        peer = "age 1.1 (X25519 recipient)" if "age" in label.split()[-1] else "aws-encryption-cli (moto KMS key, loopback)"
        add_row(label, om, pm, goal, (pm / om >= factor) if factor > 1 else (pm > om),
                ours_label="hsmbackup envelope", peer_label=peer, samples={"ours": o, "peer": p})
    for f in (src, ours_ct, ours_pt, age_ct, age_pt, aws_ct, aws_pt):
        rm(f)


def row_rss():
    log("row: peak RSS of create, verify, restore at %d MiB and %d MiB" % (MIB, BIG_MIB))
    target = os.path.join(WORK, "hsm-restore")
    rm(target)
    run(hb("hsm", "create", target, "--manufacturer", "acme", "--model", "CH-2", "--serial", "R1", "--cluster", "cluster-bench"))
    ident = state["ids"][-1]
    _, rss, _ = run_rss(hb("restore", ident, "--hsm", target))
    at_mib = (max(state["create_rss"]) / 1024, max(state["verify_rss"]) / 1024, rss / 1024)
    # The same three at about 1 GiB of payload: flat means it does not grow with the payload.
    big = os.path.join(WORK, "hsm-1gib")  # not HSM (hsm-big), which later rows still use
    rm(big)
    run(hb("hsm", "create", big, "--manufacturer", "acme", "--model", "CH-2", "--serial", "G1", "--cluster", "cluster-big"))
    t, _, out = run([TOOL, "fill-hsm", big, str(max(1, int(BIG_MIB * 1024 * 1024 / 2744))), "800"])
    log("  %d MiB HSM filled in %.1f s" % (BIG_MIB, t))
    tc, c_rss, out = run_rss(hb("backup", "create", "--hsm", big, "--kms-key", KMS_KEY, "--json"))
    created = json.loads(out)
    bid = created["backupId"]
    tv, v_rss, _ = run_rss(hb("verify", bid, "--level", "full", "--hsm", big))
    rm(target)
    run(hb("hsm", "create", target, "--manufacturer", "acme", "--model", "CH-2", "--serial", "R2", "--cluster", "cluster-bench"))
    tr, r_rss, _ = run_rss(hb("restore", bid, "--hsm", target))
    at_big = (c_rss / 1024, v_rss / 1024, r_rss / 1024)
    flat = all(b <= 1.25 * q + 8 for b, q in zip(at_big, at_mib))
    add_row("peak RSS create / verify / restore, %d MiB and %d MiB payload" % (MIB, BIG_MIB),
            "%.0f / %.0f / %.0f MiB at %d MiB; %.0f / %.0f / %.0f MiB at %d MiB" % (at_mib + (MIB,) + at_big + (BIG_MIB,)),
            None, "<= 64 MiB and flat", max(at_mib + at_big) <= 64 and flat, unit="MiB",
            ours_label="ru_maxrss", detail="%s; at %d MiB: create %.1f s, verify %.1f s, restore %.1f s (archive %s bytes)" % (
                "flat (within 25% + 8 MiB)" if flat else "not flat: grows with the payload", BIG_MIB, tc, tv, tr,
                created.get("archiveBytes")))
    state["rss"] = {"create_kib": state["create_rss"], "verify_kib": state["verify_rss"], "restore_kib": [rss],
                    "big_mib": BIG_MIB, "big_kib": [c_rss, v_rss, r_rss], "big_seconds": [tc, tv, tr]}
    rm(target)
    rm(big)


def row_inspect():
    log("row: inspect of a 1 GiB archive")
    src = os.path.join(WORK, "big.hsmbak")
    run(hb("store", "get", "backups/%s/archive" % state["ids"][-1], "-o", src), check=True) if False else None
    # Write one archive to a file with --out, then extend it sparse to 1 GiB (see notes).
    rm(src)
    run(hb("backup", "create", "--hsm", HSM, "--kms-key", KMS_KEY, "--out", src))
    real = os.path.getsize(src)
    os.truncate(src, 1 << 30)
    ts, reads, floor = [], [], []
    for _ in range(max(REPS, 5)):
        t, _, _ = run([BIN, "--help"])
        floor.append(t * 1000)
        t, _, out = run(hb("inspect", src))
        ts.append(t * 1000)
        m = re.search(r"read ([0-9]+) bytes", out)
        reads.append(int(m.group(1)) if m else None)
    om = med(ts)
    rd = max(x for x in reads if x is not None) if any(x is not None for x in reads) else None
    add_row("inspect of a 1 GiB archive (process wall, bytes read)", "%.1f ms, %s B read" % (om, rd), None,
            "<= 20 ms and <= 64 KiB read", om <= 20 and rd is not None and rd <= 65536, unit="ms",
            detail="a %d-byte real archive extended sparse to 1 GiB with truncate; process floor (`hsmbackup --help`) %.1f ms"
            % (real, med(floor)), samples={"ours_ms": ts, "help_ms": floor})
    rm(src)


def row_fleet():
    log("row: fleet of %d archives of a 300-key HSM" % FLEET)
    small = os.path.join(WORK, "hsm-300")
    run(hb("hsm", "create", small, "--manufacturer", "acme", "--model", "CH-2", "--serial", "F1", "--cluster", "cluster-fleet"))
    run(hb("hsm", "populate", small, "--keys", "300", "--users", "40", "--seed", "42"))
    cts, vts, ids = [], [], []
    for i in range(FLEET):
        t, _, out = run(hb("backup", "create", "--hsm", small, "--kms-key", KMS_KEY, "--json"))
        cts.append(t * 1000)
        ids.append(json.loads(out)["backupId"])
    for ident in ids:
        t, _, _ = run(hb("verify", ident, "--level", "full", "--hsm", small))
        vts.append(t * 1000)
    # Issue 17: the same verifications with both cores busy, in ONE process: `verify --all
    # --cluster cluster-fleet --jobs JOBS` (the fleet's cluster only: in a full run the store also
    # holds the create row's backups), alternated REPS times with `--jobs 1` (the same process, one
    # archive at a time) and with the old way, JOBS `verify ID` processes at once (what `xargs -P
    # JOBS` over `backup list --json` does). Per archive = the pass's wall time / FLEET; the JSON's
    # own per-archive times (each archive's verification inside the process) are in the detail.
    def verify_all(jobs):
        t, _, out = run(hb("verify", "--all", "--cluster", "cluster-fleet", "--level", "full", "--hsm", small,
                           "--jobs", str(jobs), "--json"))
        doc = json.loads(out)
        if doc["summary"]["passed"] != FLEET:
            raise RuntimeError("verify --all passed %s of %d archives" % (doc["summary"]["passed"], FLEET))
        return t, [a["seconds"] * 1000 for a in doc["archives"]]

    import concurrent.futures
    par, seq, procs, inner_par, inner_seq = [], [], [], [], []
    for _ in range(max(REPS, 1)):
        t, inner = verify_all(JOBS)
        par.append(t)
        inner_par += inner
        t, inner = verify_all(1)
        seq.append(t)
        inner_seq += inner
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(max_workers=JOBS) as pool:
            list(pool.map(lambda ident: run(hb("verify", ident, "--level", "full", "--hsm", small)), ids))
        procs.append(time.perf_counter() - t0)
    lts = []
    for _ in range(max(REPS, 3)):
        t, _, out = run(hb("backup", "list"))
        lts.append(t * 1000)
    add_row("fleet: %d archives of a 300-key HSM, per archive" % FLEET,
            "create %.0f ms, verify %.0f ms, list %.0f ms" % (med(cts), med(vts), med(lts)), None,
            "(figure only)", None, unit="ms",
            detail="medians; totals create %.1f s, verify %.1f s" % (sum(cts) / 1000, sum(vts) / 1000),
            samples={"create_ms_p90": sorted(cts)[int(len(cts) * 0.9)], "verify_ms_p90": sorted(vts)[int(len(vts) * 0.9)], "list_ms": lts})
    add_row("fleet verify --level full, %d archives, `verify --all --jobs %d` (one process, both cores busy), per archive" % (FLEET, JOBS),
            med(par) * 1000 / FLEET, med(procs) * 1000 / FLEET, "(figure only)", None, unit="ms",
            ours_label="hsmbackup verify --all --jobs %d" % JOBS, peer_label="%d `hsmbackup verify ID` processes at once" % JOBS,
            detail="medians of %d alternated passes: --jobs %d %.2f s, --jobs 1 %.2f s (%.2f ms per archive), %d processes %.2f s "
            "for all %d; one process per archive, one at a time: %.1f s; inside the process, per archive (median): "
            "%.1f ms with %d jobs, %.1f ms with 1" % (len(par), JOBS, med(par), med(seq), med(seq) * 1000 / FLEET, JOBS, med(procs),
                                                       FLEET, sum(vts) / 1000, med(inner_par), JOBS, med(inner_seq)),
            samples={"all_jobs_s": par, "all_1_s": seq, "processes_s": procs})


def row_catalog():
    log("row: backup list over a %d-entry catalog" % CATALOG_N)
    home = os.path.join(WORK, "home-catalog")
    rm(home)
    run([BIN, "--home", home, "store", "init", "--replicas", "1"])
    run([TOOL, "fill-catalog", os.path.join(home, "store"), str(CATALOG_N)])
    ts = []
    for _ in range(max(REPS, 5)):
        t, _, out = run([BIN, "--home", home, "backup", "list"], stdout=subprocess.PIPE)
        ts.append(t)
    n = out.count("\n")
    om = med(ts)
    add_row("backup list, %d-entry catalog" % CATALOG_N, om, None, "< 1 s", om < 1.0,
            ours_label="hsmbackup backup list (text, to a pipe)", detail="%d lines printed" % n, samples={"ours": ts})
    rm(home)


def row_scrub():
    log("row: store scrub vs sha256sum of the replica files")
    store = os.path.join(HOME, "store")
    files = []
    for dp, _, fs in os.walk(store):
        if os.sep + "catalog" in dp:
            continue
        for f in fs:
            files.append(os.path.join(dp, f))
    total = sum(os.path.getsize(f) for f in files)
    o, p, _ = alternate(hb("store", "scrub"), ["sha256sum"] + files)
    om, pm = med(o), med(p)
    add_row("store scrub vs sha256sum (%.0f MiB in %d files)" % (total / 2**20, len(files)),
            total / om / 1e6, total / pm / 1e6, ">= 0.7x sha256sum throughput", (total / om) / (total / pm) >= 0.7,
            unit="MB/s", ours_label="hsmbackup store scrub", peer_label="sha256sum of the same files",
            samples={"ours_s": o, "peer_s": p})


# ---------------------------------------------------------------- s3 (issue 16)

S3_BACKUPS = int(os.environ.get("BENCH_S3_BACKUPS", "10000"))
AWS_VENV = os.path.join(ROOT, ".build-aws-venv")


def start_moto_s3():
    """moto_server from the AWS test venv (scripts/aws/venv.sh: moto, awscli), no signature checks."""
    run(["bash", os.path.join(ROOT, "scripts", "aws", "venv.sh")])
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    proc = subprocess.Popen([os.path.join(AWS_VENV, "bin", "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = "http://127.0.0.1:%d" % port
    env = dict(os.environ, AWS_ENDPOINT_URL=url, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_DEFAULT_REGION="us-east-1", AWS_REGION="us-east-1", AWS_CONFIG_FILE="/nonexistent",
               AWS_SHARED_CREDENTIALS_FILE="/nonexistent")
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return proc, env, url


def row_s3():
    """backup create / verify --level envelope through an S3 store on moto vs `aws s3 cp` of the
    same archive up and down; peak RSS; backup list of S3_BACKUPS stored backups."""
    log("row: S3 store on moto: backup create / verify --level envelope vs aws s3 cp up / down")
    proc, env, url = start_moto_s3()
    aws = os.path.join(AWS_VENV, "bin", "aws")
    home = os.path.join(WORK, "home-s3")
    rm(home)
    shutil.copytree(HOME, home, ignore=shutil.ignore_patterns("store"))
    hs = lambda *a: [BIN, "--home", home] + list(a)
    try:
        run(hs("store", "init", "--s3", "s3://bench-ours/hsm", "--endpoint", url), env=env)
        run([aws, "s3", "mb", "s3://bench-peer"], env=env)
        archive = os.path.join(WORK, "s3-archive.hsmbak")
        back = os.path.join(WORK, "s3-archive.down")
        ids = []

        def ours_create():
            return hs("backup", "create", "--hsm", HSM, "--kms-key", KMS_KEY, "--json")
        o, p, orss = [], [], []
        for i in range(REPS):
            for which in ([0, 1] if i % 2 == 0 else [1, 0]):
                if which == 0:
                    t, rss, out = run_rss(ours_create(), env=env)
                    o.append(t)
                    orss.append(rss)
                    ids.append(json.loads(out)["backupId"])
                    if not os.path.exists(archive):
                        run(hs("store", "get", "backups/%s/archive" % ids[-1], "--output", archive), env=env)
                else:
                    if not os.path.exists(archive):
                        continue
                    t, _, _ = run([aws, "s3", "cp", "--only-show-errors", archive, "s3://bench-peer/archive-%d" % i], env=env)
                    p.append(t)
        if len(p) < REPS:  # the first rep ran the peer before an archive existed
            t, _, _ = run([aws, "s3", "cp", "--only-show-errors", archive, "s3://bench-peer/archive-x"], env=env)
            p.append(t)
        size = os.path.getsize(archive)
        # Context: the same backup made into a local file (no store), and its envelope check from
        # that file: what ours does besides moving bytes (compress, encrypt; decrypt, verify).
        local_file = os.path.join(WORK, "s3-local.hsmbak")
        rm(local_file)
        t_local, rss_local, _ = run_rss(hb("backup", "create", "--hsm", HSM, "--kms-key", KMS_KEY, "--out", local_file))
        t_vlocal, _, _ = run_rss(hb("verify", local_file, "--level", "envelope"))
        rm(local_file)
        om, pm = med(o), med(p)
        add_row("backup create through S3 (moto), %.0f MiB archive, 1 location" % (size / 2**20), om, pm,
                "<= 1.2x aws s3 cp up; peak RSS <= 64 MiB", om <= 1.2 * pm and max(orss) / 1024.0 <= 64,
                ours_label="hsmbackup backup create (S3 store)", peer_label="aws s3 cp FILE s3://... (same archive)",
                detail="peak RSS %.1f MiB; the same backup into a local file (no store) takes %.2f s, peak RSS %.1f MiB; "
                       "moto is Python, so both sides are bounded by it"
                       % (max(orss) / 1024.0, t_local, rss_local / 1024.0),
                samples={"ours": o, "peer": p})
        key = "s3://bench-ours/hsm/backups/%s/archive" % ids[-1]
        o, p, orss = alternate(hs("verify", ids[-1], "--level", "envelope"),
                               [aws, "s3", "cp", "--only-show-errors", key, back], ours_env=env, peer_env=env,
                               peer_prep=lambda: rm(back))
        om, pm = med(o), med(p)
        add_row("verify --level envelope through S3 (moto), %.0f MiB archive" % (size / 2**20), om, pm,
                "<= 1.2x aws s3 cp down; peak RSS <= 64 MiB", om <= 1.2 * pm and max(orss) / 1024.0 <= 64,
                ours_label="hsmbackup verify --level envelope (S3 store)", peer_label="aws s3 cp s3://... FILE (download only)",
                detail="peak RSS %.1f MiB; ours also decrypts and checks every frame (verify of the local file: %.2f s)"
                       % (max(orss) / 1024.0, t_vlocal),
                samples={"ours": o, "peer": p})
        rm(back)
        # backup list of S3_BACKUPS backups: a catalog made by BenchTool in a local store, put in
        # place of the S3 store's catalog (identical format, spec 5.8/5.11).
        local = os.path.join(WORK, "home-s3-catalog")
        rm(local)
        run([BIN, "--home", local, "store", "init", "--replicas", "1"])
        run([TOOL, "fill-catalog", os.path.join(local, "store"), str(S3_BACKUPS)])
        run([aws, "s3", "cp", "--only-show-errors", os.path.join(local, "store", "catalog", "catalog.bin"),
             "s3://bench-ours/hsm/.hsmbackup/catalog.bin"], env=env)
        ts = []
        for _ in range(max(REPS, 3)):
            t, _, out = run(hs("backup", "list"), env=env)
            ts.append(t)
        om = med(ts)
        add_row("backup list through S3 (moto), %d backups" % S3_BACKUPS, om, None, "< 1 s (as the local row)", om < 1.0,
                ours_label="hsmbackup backup list (S3 store)", detail="%d lines printed" % out.count("\n"),
                samples={"ours": ts})
        rm(local)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        rm(home)


# ---------------------------------------------------------------- output

P11_KEYS = int(os.environ.get("BENCH_P11_KEYS", "1000"))
SOFTHSM = "/usr/lib/softhsm/libsofthsm2.so"


def row_pkcs11():
    """Back up a SoftHSM2 token of N keys and restore it onto another (issue 15), per key, with
    peak RSS at N and N/10 keys (flat in the number of keys is the goal)."""
    if not (os.path.exists(SOFTHSM) and shutil.which("pkcs11-tool") and shutil.which("softhsm2-util")):
        log("row pkcs11: SoftHSM2 / pkcs11-tool missing, skipped (make deps installs them)")
        return
    base = os.path.join(WORK, "softhsm")
    rm(base)
    os.makedirs(os.path.join(base, "tokens"))
    conf = os.path.join(base, "softhsm2.conf")
    with open(conf, "w") as f:
        f.write("directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n" % base)
    env = dict(os.environ, SOFTHSM2_CONF=conf, HSMBACKUP_PKCS11_SO_PIN="bench-so-pin", HSMBACKUP_PKCS11_PIN="bench-user-pin")
    if not os.path.exists(os.path.join(HOME, "manufacturers", "softhsm")):
        run(hb("manufacturer", "create", "softhsm"))

    def token(label):
        run(["softhsm2-util", "--init-token", "--free", "--label", label, "--so-pin", env["HSMBACKUP_PKCS11_SO_PIN"],
             "--pin", env["HSMBACKUP_PKCS11_PIN"]], env=env)
        run(hb("pkcs11", "provision", "--module", SOFTHSM, "--token", label, "--manufacturer", "softhsm"), env=env)

    def drop(label):
        run(["softhsm2-util", "--delete-token", "--token", label], env=env, check=False)

    p11 = ["pkcs11-tool", "--module", SOFTHSM, "--login", "--pin", env["HSMBACKUP_PKCS11_PIN"]]
    results = {}
    for n in (P11_KEYS // 10, P11_KEYS):
        src = "bench-src-%d" % n
        token(src)
        log("row pkcs11: populating %s with %d keys (9 AES-256 : 1 EC P-256 pair)" % (src, n))
        for i in range(n):
            if i % 10 == 9:
                run(p11 + ["--token-label", src, "--keypairgen", "--key-type", "EC:prime256v1", "--label", "ec-%d" % i,
                           "--id", "%06x" % i, "--extractable"], env=env)
            else:
                run(p11 + ["--token-label", src, "--keygen", "--key-type", "AES:32", "--label", "aes-%d" % i,
                           "--id", "%06x" % i, "--extractable"], env=env)
        objects = n + n // 10  # EC pairs add a public key each
        # The module's own memory grows with the token (SoftHSM keeps every object in the process):
        # `pkcs11 show` (open, log in, find the PBK) is that baseline.
        _, show_rss, _ = run_rss(hb("pkcs11", "show", "--module", SOFTHSM, "--token", src), env=env)
        archive = os.path.join(base, "a-%d.hsmbak" % n)
        bts, brss, rts, rrss, rbase = [], [], [], [], []
        for r in range(REPS):
            rm(archive)
            t, rss, _ = run_rss(hb("backup", "create", "--pkcs11", "--module", SOFTHSM, "--token", src, "--kms-key", KMS_KEY,
                                   "--out", archive), env=env)
            bts.append(t)
            brss.append(rss)
            dst = "bench-dst-%d-%d" % (n, r)
            token(dst)
            t, rss, _ = run_rss(hb("restore", archive, "--pkcs11", "--module", SOFTHSM, "--token", dst), env=env)
            rts.append(t)
            rrss.append(rss)
            # The restore's own baseline: SoftHSM loads every token of its directory, so after a
            # restore the module holds the source's objects and the restored copies.
            _, dshow, _ = run_rss(hb("pkcs11", "show", "--module", SOFTHSM, "--token", dst), env=env)
            rbase.append(dshow)
            drop(dst)
        drop(src)
        results[n] = dict(objects=objects, backup=med(bts), restore=med(rts), brss=max(brss) / 1024, rrss=max(rrss) / 1024,
                          base=show_rss / 1024, rbase=max(rbase) / 1024)
    big, small = results[P11_KEYS], results[P11_KEYS // 10]
    # Flat: what backup and restore hold beyond the module's baseline does not grow with the keys.
    flat = (big["brss"] - big["base"]) <= (small["brss"] - small["base"]) * 1.25 + 4 and \
        (big["rrss"] - big["rbase"]) <= (small["rrss"] - small["rbase"]) * 1.25 + 4
    add_row("PKCS#11 (SoftHSM2): back up / restore a %d-key token (%d objects), per key" % (P11_KEYS, big["objects"]),
            "%.2f / %.2f ms" % (big["backup"] * 1000 / P11_KEYS, big["restore"] * 1000 / P11_KEYS), None, "(figure only)", None, unit="ms",
            detail="totals backup %.2f s, restore %.2f s (restore: session unwrap + check, token unwrap + check, relabel)"
                   % (big["backup"], big["restore"]))
    add_row("PKCS#11 peak RSS backup / restore, %d keys (%d keys)" % (P11_KEYS, P11_KEYS // 10),
            "%.0f / %.0f MiB (%.0f / %.0f MiB)" % (big["brss"], big["rrss"], small["brss"], small["rrss"]), None,
            "flat in the number of keys, beyond the module's own", flat, unit="MiB",
            detail="`pkcs11 show` on the same token (the module holding the token): %.0f MiB at %d keys, %.0f MiB at %d; "
                   "on the restored token (the module holding the source and the restored copy, the restore's baseline): "
                   "%.0f MiB at %d keys, %.0f MiB at %d"
                   % (big["base"], P11_KEYS, small["base"], P11_KEYS // 10, big["rbase"], P11_KEYS, small["rbase"], P11_KEYS // 10))


def machine():
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) // 1024
    return {"nproc": os.cpu_count(), "cpu": model, "memory_mib": mem,
            "kernel": os.uname().release, "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def ratio(r):
    o, p = r["ours"], r["peer"]
    if not isinstance(o, (int, float)) or not isinstance(p, (int, float)) or not o or not p:
        return None
    return o / p if r["unit"] == "MB/s" else p / o


def table():
    lines = ["| row | ours | peer | ratio | goal | meets |", "|---|---|---|---|---|---|"]
    for r in rows:
        rt = ratio(r)
        meets = {True: "yes", False: "**no**", None: "n/a"}[r["meets"]]
        peer = fmt(r["peer"], r["unit"]) + (" (%s)" % r["peer_label"] if r.get("peer_label") and r["peer"] is not None else "")
        lines.append("| %s | %s | %s | %s | %s | %s |" % (r["row"] + ((" (run of %s)" % r.get("run_utc", "an earlier run")) if r.get("from_previous_run") else ""), fmt(r["ours"], r["unit"]), peer,
                                                       "%.2fx" % rt if rt else "-", r["goal"], meets))
    return "\n".join(lines)


def merge_previous():
    """With BENCH_ONLY, keep the previous run's rows of the groups not run this time."""
    path = os.path.join(RESULTS, "results.json")
    if not ONLY or not os.path.exists(path):
        return
    ran = {r["key"] for r in rows}
    old = [r for r in json.load(open(path)).get("rows", []) if r.get("key") not in ran]
    for r in old:
        r["from_previous_run"] = True
    rows[:] = sorted(rows + old, key=lambda r: ORDER.index(r["key"]) if r.get("key") in ORDER else 99)


def write_results(m):
    merge_previous()
    for r in rows:
        r["ratio"] = ratio(r)
    with open(os.path.join(RESULTS, "results.json"), "w") as f:
        json.dump({"machine": m, "reps": REPS, "mib": MIB, "fleet": FLEET, "catalog": CATALOG_N, "rows": rows,
                   "state": {k: v for k, v in state.items() if k in ("payload_bytes", "archive_bytes", "rss", "big_hsm")}},
                  f, indent=2)
    t = table()
    md_path = os.path.join(RESULTS, "results.md")
    # Keep the hand-written analysis (everything from "## Analysis" on) across reruns.
    analysis = ""
    if os.path.exists(md_path):
        old = open(md_path).read()
        i = old.find("## Analysis")
        if i >= 0:
            analysis = old[i:]
    with open(md_path, "w") as f:
        f.write("# Benchmark results\n\n")
        f.write("Made by `make bench` (bench/run.py); %d alternated repetitions per row, medians. Ratio = how many "
                "times faster ours is than the peer (throughput rows: ours / peer).\n\n" % REPS)
        f.write("Machine: %(nproc)s cores, %(cpu)s, %(memory_mib)s MiB RAM, Linux %(kernel)s; run %(date_utc)s.\n\n" % m)
        f.write(t + "\n\n")
        details = [r for r in rows if r.get("detail")]
        if details:
            f.write("Details:\n\n")
            for r in details:
                f.write("- %s: %s\n" % (r["row"], r["detail"]))
            f.write("\n")
        for n in notes:
            f.write("- " + n + "\n")
        if analysis:
            f.write("\n" + analysis)
    return t


def main():
    for exe in (BIN, TOOL):
        if not os.access(exe, os.X_OK):
            sys.exit("bench: %s is missing (make bench builds it)" % exe)
    m = machine()
    log("bench: %s cores, %s; reps %d, %d MiB, work %s" % (m["nproc"], m["cpu"], REPS, MIB, WORK))
    setup_home()
    def go(key, fn):
        CURRENT[0] = key
        fn()
    if wanted("kwp"):
        go("kwp", row_kwp)
    if any(wanted(x) for x in ("create", "verify", "restore", "rss", "inspect", "rewrap", "scrub", "s3")):
        state["big_hsm"] = make_big_hsm()
        if any(wanted(x) for x in ("create", "verify", "restore", "rss", "inspect", "scrub")):
            go("create", row_create)
        if wanted("verify") or wanted("rss"):
            go("verify", row_verify)
        if wanted("restore"):
            go("restore", row_restore)
        if wanted("rss"):
            go("rss", row_rss)
        if wanted("inspect"):
            go("inspect", row_inspect)
        if wanted("rewrap"):
            go("rewrap", row_rewrap)
    if wanted("envelope"):
        go("envelope", row_envelope)
    if wanted("fleet"):
        go("fleet", row_fleet)
    if wanted("catalog"):
        go("catalog", row_catalog)
    if wanted("scrub"):
        go("scrub", row_scrub)
    if wanted("pkcs11"):
        go("pkcs11", row_pkcs11)
    if wanted("s3"):
        go("s3", row_s3)
    t = write_results(m)
    print(t)
    if not os.environ.get("BENCH_KEEP"):
        rm(WORK)


if __name__ == "__main__":
    main()
