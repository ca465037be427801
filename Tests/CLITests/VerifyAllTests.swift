import Foundation
import XCTest

/// `verify --all [--cluster C] [--jobs N]`: every READY backup of the store in one process, one
/// line per archive and a summary (or one JSON document), and the exit code rule (0 all passed,
/// 65 any failed, else the first could-not-be-judged archive's code).
final class VerifyAllTests: CLIWorldTestCase {
    /// The fleet: three backups of cluster c1, two of c2; `damaged` (of c2) is damaged in every
    /// replica, so it fails; one backup pending deletion, which --all leaves out.
    nonisolated(unsafe) static var c1: [String] = []
    nonisolated(unsafe) static var c2: [String] = []
    nonisolated(unsafe) static var damaged = ""
    nonisolated(unsafe) static var deleted = ""

    override class func setUp() {
        super.setUp()
        let w = world
        let hsmC2 = try! w.makeHSM(keys: 6, seed: 3, cluster: "c2")
        for i in 0..<5 {
            if i % 2 == 1 { c2.append(try! w.createStoredBackup(hsm: hsmC2)) } else { c1.append(try! w.createStoredBackup()) }
        }
        damaged = c2[0]
        let key = try! w.entry(damaged)["objectKey"] as! String
        // Inside the archive's bytes (every archive is several KiB), so every replica's chunk 0 fails its digest.
        for replica in 0..<3 { try! Files.flipInPlace(try! w.replicaFile(replica: replica, key: key), at: 1000) }
        deleted = try! w.createStoredBackup()
        try! w.expect(0, ["backup", "delete", deleted])
    }

    /// The READY backups in the catalog's order (`backup list`'s).
    func readyInCatalogOrder(cluster: String? = nil) throws -> [String] {
        let list = try JSON.array(try w.expect(0, ["backup", "list", "--state", "READY", "--json"] + (cluster.map { ["--cluster", $0] } ?? [])).stdout)
        return list.compactMap { $0["backupId"] as? String }
    }

    func archives(_ r: CLIRun) throws -> [[String: Any]] {
        try XCTUnwrap(try JSON.object(r.stdout)["archives"] as? [[String: Any]], r.description)
    }

    func summary(_ r: CLIRun) throws -> [String: Any] {
        try XCTUnwrap(try JSON.object(r.stdout)["summary"] as? [String: Any], r.description)
    }

    func testEveryArchiveIsVerifiedAndTheDamagedOneFails() throws {
        let r = try w.expect(65, ["verify", "--all", "--level", "envelope", "--jobs", "2"])
        let lines = r.stdout.split(separator: "\n").map(String.init)
        let heads = lines.filter { !$0.hasPrefix("  ") }
        XCTAssertEqual(heads.count, 6, "five archive lines and the summary: \(r.description)")
        for id in Self.c1 + Self.c2 where id != Self.damaged {
            let cluster = Self.c1.contains(id) ? "c1" : "c2"
            XCTAssertEqual(heads.filter { $0.hasPrefix("PASS \(id)  cluster \(cluster)  0 finding(s)") }.count, 1, "\(id): \(r.description)")
        }
        let fail = try XCTUnwrap(heads.first { $0.hasPrefix("FAIL \(Self.damaged)  cluster c2  ") }, r.description)
        XCTAssertTrue(fail.contains("error(s)"), fail)
        XCTAssertTrue(r.stdout.contains("  error: [store/chunkMismatch] replica 0"), "the failure's findings are under its line: \(r.description)")
        XCTAssertFalse(r.stdout.contains(Self.deleted), "a backup pending deletion is not READY: \(r.description)")
        XCTAssertEqual(heads.last.map { $0.contains("5 archive(s) at level envelope, 2 at a time") && $0.hasSuffix("4 passed, 1 failed, 0 could not be judged") }, true,
                       r.description)
        XCTAssertEqual(r.stderr, "", r.description)
    }

    func testJSONHasEveryArchiveInCatalogOrderAndTheSummary() throws {
        let r = try w.expect(65, ["verify", "--all", "--level", "structure", "--json"])
        let a = try archives(r)
        XCTAssertEqual(a.compactMap { $0["backupId"] as? String }, try readyInCatalogOrder(), r.description)
        for item in a {
            let id = try XCTUnwrap(item["backupId"] as? String)
            XCTAssertEqual(item["clusterId"] as? String, Self.c1.contains(id) ? "c1" : "c2")
            XCTAssertNotNil(item["seconds"] as? Double, "\(item)")
            let report = try XCTUnwrap(item["report"] as? [String: Any], "\(item)")
            XCTAssertEqual(report["archive"] as? String, id)
            XCTAssertNil(item["error"], "\(item)")
            if id == Self.damaged {
                XCTAssertEqual(item["result"] as? String, "failed", "\(item)")
                XCTAssertEqual(item["errors"] as? Int, 4, "three replicas and the unreadable archive: \(item)")
                let replicas = (report["findings"] as? [[String: Any]] ?? []).compactMap { ($0["location"] as? [String: Any])?["replica"] as? Int }
                XCTAssertEqual(replicas, [0, 1, 2], "\(item)")
            } else {
                XCTAssertEqual(item["result"] as? String, "passed", "\(item)")
                XCTAssertEqual(item["findings"] as? Int, 0, "\(item)")
                XCTAssertEqual(report["levelsChecked"] as? [String], ["structure"], "\(item)")
            }
        }
        let s = try summary(r)
        XCTAssertEqual(s["archives"] as? Int, 5)
        XCTAssertEqual(s["passed"] as? Int, 4)
        XCTAssertEqual(s["failed"] as? Int, 1)
        XCTAssertEqual(s["notJudged"] as? Int, 0)
        XCTAssertEqual(s["level"] as? String, "structure")
        XCTAssertEqual(s["exitCode"] as? Int, 65)
        XCTAssertNotNil(s["jobs"] as? Int)
        XCTAssertNotNil(s["seconds"] as? Double)
    }

    /// One job or three: the same result for every archive (only the times differ).
    func testOneJobAndThreeJobsGiveTheSameResults() throws {
        func results(_ jobs: Int) throws -> [String] {
            let r = try w.expect(65, ["verify", "--all", "--level", "full", "--hsm", w.targetHSM, "--jobs", "\(jobs)", "--json"])
            XCTAssertEqual(try summary(r)["jobs"] as? Int, jobs)
            return try archives(r).map { a in
                let report = a["report"] as? [String: Any] ?? [:]
                let codes = (report["findings"] as? [[String: Any]] ?? []).map { "\($0["layer"] ?? "")/\($0["code"] ?? "")/\($0["severity"] ?? "")" }
                return "\(a["backupId"] ?? "") \(a["result"] ?? "") \(a["findings"] ?? "") \(report["levelsChecked"] ?? "") "
                    + "\(report["objectsChecked"] ?? "") \(report["chunksChecked"] ?? "") \(codes)"
            }
        }
        let one = try results(1), three = try results(3)
        XCTAssertEqual(one, three)
        XCTAssertEqual(one.filter { $0.contains(" passed ") }.count, 4, "\(one)")
        // The full check is a dry run on the one HSM every job shares: it is unchanged.
        XCTAssertEqual(try w.contents(w.targetHSM).keys, [])
    }

    func testClusterFilter() throws {
        let r1 = try w.expect(0, ["verify", "--all", "--cluster", "c1", "--json"])
        XCTAssertEqual(try archives(r1).compactMap { $0["backupId"] as? String }, try readyInCatalogOrder(cluster: "c1"))
        XCTAssertEqual(Set(try archives(r1).compactMap { $0["backupId"] as? String }), Set(Self.c1))
        XCTAssertEqual(try summary(r1)["passed"] as? Int, 3)
        let r2 = try w.expect(65, ["verify", "--all", "--cluster", "c2"])
        XCTAssertTrue(r2.stdout.contains("2 archive(s)") && r2.stdout.contains("1 passed, 1 failed"), r2.description)
        let none = try w.expect(0, ["verify", "--all", "--cluster", "no-such-cluster"])
        XCTAssertTrue(none.stdout.hasPrefix("0 archive(s) at level envelope"), none.description)
    }

    /// Archives that cannot be judged: the code of the first, unless one failed (65 wins).
    func testNotJudgedArchivesAndTheExitCodeRule() throws {
        // An HSM of another manufacturer cannot judge at level full: 68 for c1 (all whole).
        let foreign = try w.expect(68, ["verify", "--all", "--cluster", "c1", "--level", "full", "--hsm", w.foreignHSM, "--json"])
        for a in try archives(foreign) {
            XCTAssertEqual(a["result"] as? String, "notJudged", "\(a)")
            XCTAssertNil(a["report"], "\(a)")
            let e = try XCTUnwrap(a["error"] as? [String: Any], "\(a)")
            XCTAssertEqual(e["exitCode"] as? Int, 68)
            XCTAssertTrue((e["message"] as? String ?? "").contains("incompatibleHSM"), "\(e)")
        }
        XCTAssertEqual(try summary(foreign)["notJudged"] as? Int, 3)
        let text = try w.expect(68, ["verify", "--all", "--cluster", "c1", "--level", "full", "--hsm", w.foreignHSM])
        XCTAssertEqual(text.stdout.split(separator: "\n").filter { $0.hasPrefix("ERROR ") && $0.contains("not judged (exit 68)") }.count, 3, text.description)
        // With the damaged archive in the run, its failure decides: 65.
        try w.expect(65, ["verify", "--all", "--level", "full", "--hsm", w.foreignHSM])

        // A key that opens none of them: 67.
        try w.expect(0, ["kms", "create-key", "stranger"])
        let r = try w.expect(67, ["verify", "--all", "--cluster", "c1", "--kms-key", "stranger", "--json"])
        XCTAssertEqual(try archives(r).compactMap { ($0["error"] as? [String: Any])?["exitCode"] as? Int }, [67, 67, 67], r.description)
    }

    func testUsageErrors() throws {
        let id = Self.c1[0]
        let file = try w.createArchiveFile()
        for (args, text) in [
            (["verify", "--all", id], "give no archive or backup id with it"),
            (["verify", "--all", file], "give no archive or backup id with it"),
            (["verify"], "or --all"),
            (["verify", id, "--jobs", "2"], "--jobs goes with --all"),
            (["verify", id, "--cluster", "c1"], "--cluster selects the backups of --all"),
            (["verify", "--all", "--jobs", "0"], "--jobs must be 1...64, got 0"),
            (["verify", "--all", "--jobs", "65"], "--jobs must be 1...64, got 65"),
            (["verify", "--all", "--level", "full"], "--level full needs --hsm"),
        ] {
            let r = try w.run(args)
            XCTAssertEqual(r.exitCode, 64, r.description)
            XCTAssertTrue(r.stderr.contains(text), "\(text): \(r.description)")
            XCTAssertEqual(r.stdout, "", r.description)
        }
        try w.expect(64, ["verify", "--all", "--jobs", "many"])
        try w.expect(66, ["verify", "--all", "--kms-key", "no-such-key"])
    }

    /// Standard output that cannot be written (a full disk): 74 and a message, text or JSON.
    func testStdoutFailureIs74() throws {
        for extra in [[], ["--json"]] {
            let r = try w.run(["verify", "--all", "--cluster", "c1", "--level", "structure"] + extra, stdoutPath: "/dev/full")
            XCTAssertEqual(r.exitCode, 74, r.description)
            XCTAssertTrue(r.stderr.contains("cannot write to standard output"), r.description)
        }
    }

    /// An empty store: nothing to verify is success; no store at all is 66.
    func testEmptyStoreAndNoStore() throws {
        let home = try CLI.makeHome()
        defer { try? FileManager.default.removeItem(atPath: home) }
        var r = try CLI.run(["verify", "--all", "--level", "structure"], home: home)
        XCTAssertEqual(r.exitCode, 66, r.description)
        XCTAssertEqual(r.stdout, "", r.description)
        XCTAssertEqual(try CLI.run(["store", "init"], home: home).exitCode, 0)
        r = try CLI.run(["verify", "--all", "--level", "structure"], home: home)
        XCTAssertEqual(r.exitCode, 0, r.description)
        XCTAssertEqual(r.stdout.split(separator: "\n").count, 1, r.description)
        XCTAssertTrue(r.stdout.hasPrefix("0 archive(s) at level structure"), r.description)
        XCTAssertTrue(r.stdout.hasSuffix("0 passed, 0 failed, 0 could not be judged\n"), r.description)
        r = try CLI.run(["verify", "--all", "--level", "structure", "--json"], home: home)
        XCTAssertEqual(r.exitCode, 0, r.description)
        XCTAssertEqual(try archives(r).count, 0)
        XCTAssertEqual(try summary(r)["archives"] as? Int, 0)
        XCTAssertEqual(try summary(r)["exitCode"] as? Int, 0)
    }

    /// An archive the store cannot serve (gone from every replica) is that archive's failure; the
    /// run goes on to the others.
    func testAnArchiveGoneFromEveryReplicaFailsAndTheRunGoesOn() throws {
        let own = try CLIWorld()
        defer { own.tearDown() }
        let ids = try (0..<4).map { _ in try own.createStoredBackup() }
        // ids[1]: gone from every replica; ids[2]: every replica cut short (no checksum record left).
        let gone = try XCTUnwrap(try own.entry(ids[1])["objectKey"] as? String)
        for replica in 0..<3 { try FileManager.default.removeItem(atPath: try own.replicaFile(replica: replica, key: gone)) }
        let cut = try XCTUnwrap(try own.entry(ids[2])["objectKey"] as? String)
        for replica in 0..<3 {
            let file = try own.replicaFile(replica: replica, key: cut)
            try Files.write(Array(try Files.read(file).prefix(500)), file)
        }
        let r = try own.expect(65, ["verify", "--all", "--jobs", "3", "--json"])
        let a = try archives(r)
        XCTAssertEqual(a.compactMap { $0["backupId"] as? String }.sorted(), ids.sorted())
        for item in a {
            let id = item["backupId"] as? String
            guard id == ids[1] || id == ids[2] else {
                XCTAssertEqual(item["result"] as? String, "passed", "\(item)")
                continue
            }
            XCTAssertEqual(item["result"] as? String, "failed", "\(item)")
            let findings = try XCTUnwrap((item["report"] as? [String: Any])?["findings"] as? [[String: Any]], "\(item)")
            XCTAssertTrue(findings.allSatisfy { $0["layer"] as? String == "store" && $0["severity"] as? String == "error" }, "\(item)")
            XCTAssertEqual(findings.compactMap { ($0["location"] as? [String: Any])?["replica"] as? Int }, [0, 1, 2], "one finding per replica: \(item)")
            XCTAssertEqual(Set(findings.compactMap { ($0["location"] as? [String: Any])?["object"] as? String }), [id == ids[1] ? gone : cut])
            XCTAssertEqual(findings.dropLast().map { $0["code"] as? String }, Array(repeating: id == ids[1] ? "missing" : "badRecord", count: 3), "\(item)")
            XCTAssertEqual(findings.last?["code"] as? String, id == ids[1] ? "notFound" : "unrecoverable", "\(item)")
        }
    }
}
