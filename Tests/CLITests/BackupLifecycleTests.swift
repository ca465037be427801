import Foundation
import XCTest

/// Transcript tests of `backup create|list|delete|undelete|purge|copy|rewrap|tag`, `retention`,
/// and backup id prefixes.
final class BackupLifecycleTests: CLIWorldTestCase {
    func testCreateIntoTheStoreReportsTheBackupAndListShowsIt() throws {
        let r = try w.expect(0, ["backup", "create", "--hsm", w.sourceHSM, "--kms-key", "k1", "--kms-key", "k2", "--signed",
                                 "--tag", "env=prod", "--tag", "team=ops", "--json"])
        let j = try JSON.object(r.stdout)
        let id = try XCTUnwrap(j["backupId"] as? String)
        XCTAssertEqual(id.count, 32)
        XCTAssertTrue(id.allSatisfy(\.isHexDigit))
        XCTAssertEqual(j["state"] as? String, "READY")
        XCTAssertEqual(j["signed"] as? Bool, true)
        XCTAssertEqual(j["location"] as? String, "store:backups/\(id)/archive")
        XCTAssertEqual((j["keys"] as? [String])?.count, 2, "one EDK per --kms-key")
        let meta = try XCTUnwrap(j["metadata"] as? [String: Any])
        XCTAssertEqual(meta["backupID"] as? String, id)
        XCTAssertEqual(meta["clusterID"] as? String, "c1")
        XCTAssertEqual(meta["manufacturer"] as? String, "acme")
        XCTAssertEqual(meta["keyCount"] as? Int, CLIWorld.keyCount)
        XCTAssertEqual(meta["userCount"] as? Int, CLIWorld.userCount)
        XCTAssertEqual((j["replicasFailed"] as? [Any])?.count, 0)

        let e = try w.entry(id)
        XCTAssertEqual(e["state"] as? String, "READY")
        XCTAssertEqual(e["clusterId"] as? String, "c1")
        XCTAssertEqual(e["hsmId"] as? String, "hsm-S1")
        XCTAssertEqual(e["tags"] as? [String: String], ["env": "prod", "team": "ops"])
        XCTAssertEqual(e["size"] as? Int, j["archiveBytes"] as? Int)

        let text = try w.expect(0, ["backup", "list"])
        XCTAssertTrue(text.stdout.contains("\(id)  c1  READY"), text.description)
        XCTAssertTrue(text.stdout.contains("env=prod"), text.description)

        // Plain text create names the backup, the keys and where it went.
        let plain = try w.expect(0, ["backup", "create", "--hsm", w.sourceHSM, "--kms-key", "k1"])
        XCTAssertTrue(plain.stdout.hasPrefix("backup "), plain.description)
        XCTAssertTrue(plain.stdout.contains("\(CLIWorld.keyCount) keys, \(CLIWorld.userCount) users"), plain.description)
        XCTAssertTrue(plain.stdout.contains("(READY)"), plain.description)
    }

    func testCreateToAFile() throws {
        let out = w.path("file") + ".hsmb"
        let r = try w.expect(0, ["backup", "create", "--hsm", w.sourceHSM, "--kms-key", "k1", "--out", out, "--json"])
        let j = try JSON.object(r.stdout)
        XCTAssertEqual(j["location"] as? String, out)
        XCTAssertNil(j["state"] as? String, "a file is not in the store")
        XCTAssertEqual(try Files.size(out), j["archiveBytes"] as? Int)
        let id = try XCTUnwrap(j["backupId"] as? String)
        XCTAssertFalse(try JSON.array(try w.expect(0, ["backup", "list", "--json"]).stdout).contains { $0["backupId"] as? String == id },
                       "--out writes no store entry")
    }

    func testCreateFailures() throws {
        try w.expect(64, ["backup", "create", "--hsm", w.sourceHSM])                        // no key
        try w.expect(66, ["backup", "create", "--hsm", w.sourceHSM, "--kms-key", "nope"])   // unknown key
        try w.expect(66, ["backup", "create", "--hsm", w.path("none"), "--kms-key", "k1"])  // no HSM there
        try w.expect(64, ["backup", "create", "--hsm", w.sourceHSM, "--kms-key", "k1", "--tag", "no-equals-sign"])
        try w.expect(64, ["backup", "create", "--kms-key", "k1"])                           // --hsm missing
    }

    func testListFilters() throws {
        let other = try w.makeHSM(keys: 3, cluster: "c-list")
        let a = try w.createStoredBackup(hsm: other)
        let b = try w.createStoredBackup()
        let inCluster = try JSON.array(try w.expect(0, ["backup", "list", "--cluster", "c-list", "--json"]).stdout)
        XCTAssertEqual(inCluster.compactMap { $0["backupId"] as? String }, [a])
        XCTAssertEqual(try w.expect(0, ["backup", "list", "--cluster", "no-such-cluster"]).stdout, "no backups\n")
        try w.expect(0, ["backup", "delete", a])
        let pending = try JSON.array(try w.expect(0, ["backup", "list", "--state", "PENDING_DELETION", "--json"]).stdout)
        let pendingIds = pending.compactMap { $0["backupId"] as? String }
        XCTAssertTrue(pendingIds.contains(a), "\(pendingIds)")
        XCTAssertFalse(pendingIds.contains(b), "\(pendingIds)")
        XCTAssertTrue(pending.allSatisfy { $0["state"] as? String == "PENDING_DELETION" })
        let ready = try JSON.array(try w.expect(0, ["backup", "list", "--state", "READY", "--json"]).stdout).compactMap { $0["backupId"] as? String }
        XCTAssertTrue(ready.contains(b))
        XCTAssertFalse(ready.contains(a))
        try w.expect(64, ["backup", "list", "--state", "BOGUS"])
    }

    func testDeleteUndeletePurge() throws {
        let id = try w.createStoredBackup()
        let d = try w.expect(0, ["backup", "delete", id])
        XCTAssertEqual(d.stdout, "deleted \(id): now PENDING_DELETION\n")
        XCTAssertEqual(try w.entry(id)["state"] as? String, "PENDING_DELETION")
        // Within the 7-day recovery window purge removes nothing.
        let purge = try JSON.object(try w.expect(0, ["backup", "purge", "--json"]).stdout)
        XCTAssertEqual(purge["purged"] as? [String], [])
        XCTAssertEqual(try w.entry(id)["state"] as? String, "PENDING_DELETION")
        XCTAssertTrue(try w.expect(0, ["backup", "purge"]).stdout.hasPrefix("purged 0 backup(s)"))

        let u = try JSON.object(try w.expect(0, ["backup", "undelete", id, "--json"]).stdout)
        XCTAssertEqual(u["state"] as? String, "READY")
        XCTAssertEqual(try w.entry(id)["state"] as? String, "READY")
        try w.expect(66, ["backup", "delete", "0123456789abcdef0123456789abcdef"])
        try w.expect(66, ["backup", "undelete", "0123456789abcdef0123456789abcdef"])
    }

    func testLifecycleStateRulesAreUsageErrors() throws {
        let id = try w.createStoredBackup()
        let otherHome = w.path("home-copy")
        XCTAssertEqual(try CLI.run(["store", "init"], home: otherHome).exitCode, 0)
        let notPending = try w.expect(64, ["backup", "undelete", id])           // READY: nothing to undelete
        XCTAssertTrue(notPending.stderr.contains("invalidState"), notPending.description)
        try w.expect(0, ["backup", "delete", id])
        try w.expect(64, ["backup", "delete", id])                               // already pending
        try w.expect(66, ["backup", "rewrap", id, "--kms-key", "k2"])            // only READY backups are rewrapped
        try w.expect(64, ["backup", "copy", id, "--to-store", otherHome + "/store"]) // only READY backups are copied
        XCTAssertEqual(try CLI.run(["backup", "list"], home: otherHome).stdout, "no backups\n")
        let tagged = try w.expect(0, ["backup", "tag", id, "--set", "why=audit"])
        XCTAssertEqual(tagged.stdout, "tagged \(id): now PENDING_DELETION\n")
        try w.expect(0, ["backup", "undelete", id])
        try w.expect(0, ["backup", "copy", id, "--to-store", otherHome + "/store"])
        // Again: the same source backup is already there, whole (a retry after a kill is done, spec 5.8).
        try w.expect(0, ["backup", "copy", id, "--to-store", otherHome + "/store"])
        XCTAssertEqual(try JSON.array(try CLI.run(["backup", "list", "--json"], home: otherHome).stdout).count, 1)
        XCTAssertEqual(try CLI.run(["store", "fsck"], home: otherHome).exitCode, 0)
    }

    func testTagSetRemoveNeverExpires() throws {
        let id = try w.createStoredBackup(["--tag", "a=1"])
        let t = try JSON.object(try w.expect(0, ["backup", "tag", id, "--set", "b=2", "--set", "c=3", "--remove", "a",
                                                  "--never-expires", "true", "--json"]).stdout)
        XCTAssertEqual(t["tags"] as? [String: String], ["b": "2", "c": "3"])
        XCTAssertEqual(t["neverExpires"] as? Bool, true)
        XCTAssertEqual(try w.entry(id)["tags"] as? [String: String], ["b": "2", "c": "3"])
        XCTAssertTrue(try w.expect(0, ["backup", "list"]).stdout.contains("never-expires"))
        let off = try JSON.object(try w.expect(0, ["backup", "tag", id, "--never-expires", "false", "--json"]).stdout)
        XCTAssertEqual(off["neverExpires"] as? Bool, false)
        try w.expect(64, ["backup", "tag", id, "--set", "novalue"])
        try w.expect(64, ["backup", "tag", id, "--never-expires", "maybe"])
    }

    func testRetentionSetAndApply() throws {
        let cluster = "c-ret"
        let hsm = try w.makeHSM(keys: 2, cluster: cluster)
        let id = try w.createStoredBackup(hsm: hsm)
        try w.expect(64, ["retention", "set", "--cluster", cluster, "--days", "6"])
        try w.expect(64, ["retention", "set", "--cluster", cluster, "--days", "380"])
        try w.expect(64, ["retention", "set", "--cluster", cluster, "--days", "-1"])
        try w.expect(64, ["retention", "set", "--cluster", cluster])
        let set = try w.expect(0, ["retention", "set", "--cluster", cluster, "--days", "7"])
        XCTAssertTrue(set.stdout.contains("7 days"), set.description)
        try w.expect(0, ["retention", "set", "--cluster", cluster, "--days", "379"])
        // A fresh backup (and a cluster's newest) is never marked.
        let applied = try JSON.object(try w.expect(0, ["retention", "apply", "--json"]).stdout)
        XCTAssertEqual(applied["expired"] as? [String], [])
        XCTAssertEqual((applied["failed"] as? [Any])?.count, 0)
        XCTAssertEqual(try w.expect(0, ["retention", "apply", "--cluster", cluster]).stdout, "marked 0 backup(s) for deletion\n")
        XCTAssertEqual(try w.entry(id)["state"] as? String, "READY")
    }

    func testCopyToAnotherStore() throws {
        let id = try w.createStoredBackup(["--tag", "env=prod"])
        let otherHome = w.path("home2")
        XCTAssertEqual(try CLI.run(["store", "init"], home: otherHome).exitCode, 0)
        try w.expect(66, ["backup", "copy", id, "--to-store", w.path("no-store")])
        let c = try JSON.object(try w.expect(0, ["backup", "copy", id, "--to-store", otherHome + "/store", "--json"]).stdout)
        XCTAssertEqual(c["backupId"] as? String, id, "a copy keeps its id")
        XCTAssertEqual(c["state"] as? String, "READY")
        let src = try XCTUnwrap(c["copySource"] as? [String: Any])
        XCTAssertEqual(src["sourceBackupId"] as? String, id)
        XCTAssertEqual(src["sourceCluster"] as? String, "c1")
        XCTAssertEqual(c["createdMillis"] as? Int, try w.entry(id)["createdMillis"] as? Int, "a copy keeps its creation time")

        let list = try CLI.run(["backup", "list", "--json"], home: otherHome)
        XCTAssertEqual(try JSON.array(list.stdout).compactMap { $0["backupId"] as? String }, [id], list.description)
        // The copy is a whole archive in the other store: it verifies there (structure needs no key).
        let s = try CLI.run(["verify", id, "--level", "structure"], home: otherHome)
        XCTAssertEqual(s.exitCode, 0, s.description)
        XCTAssertTrue(s.stdout.hasPrefix("PASS"), s.description)
    }

    func testRewrapChangesTheKeysNotThePayload() throws {
        let id = try w.createStoredBackup()
        let before = try JSON.object(try w.expect(0, ["inspect", id, "--json"]).stdout)
        XCTAssertEqual(((before["envelope"] as? [String: Any])?["keys"] as? [[String: Any]])?.compactMap { $0["key"] as? String }, ["k1/v1"])
        try w.expect(64, ["backup", "rewrap", id])                                   // no new key
        try w.expect(66, ["backup", "rewrap", id, "--kms-key", "nope"])
        let r = try JSON.object(try w.expect(0, ["backup", "rewrap", id, "--kms-key", "k2", "--json"]).stdout)
        XCTAssertEqual(r["state"] as? String, "READY")
        XCTAssertEqual(r["size"] as? Int, try w.entry(id)["size"] as? Int)
        let after = try JSON.object(try w.expect(0, ["inspect", id, "--json"]).stdout)
        XCTAssertEqual(((after["envelope"] as? [String: Any])?["keys"] as? [[String: Any]])?.compactMap { $0["key"] as? String }, ["k2/v1"])
        XCTAssertEqual((after["metadata"] as? [String: Any])?["backupID"] as? String, id)
        // Opens with k2 now, not with k1; and still restores.
        try w.expect(0, ["verify", id, "--level", "envelope", "--kms-key", "k2"])
        let withOld = try w.run(["verify", id, "--level", "envelope", "--kms-key", "k1"])
        XCTAssertNotEqual(withOld.exitCode, 0, withOld.description)
        let target = try w.makeHSM()
        try w.expect(0, ["restore", id, "--hsm", target])
        XCTAssertEqual(try w.contents(target).keys, try w.contents(w.sourceHSM).keys)
    }

    func testIdPrefixes() throws {
        let id = try w.createStoredBackup()
        XCTAssertTrue(try w.expect(0, ["inspect", String(id.prefix(8))]).stdout.contains("backup \(id)"))
        XCTAssertTrue(try w.expect(0, ["inspect", String(id.prefix(6))]).stdout.contains("backup \(id)"))
        try w.expect(66, ["inspect", String(id.prefix(5))])             // too short for a prefix
        try w.expect(66, ["inspect", "ffffffffffff0000"])              // no such backup
        try w.expect(66, ["verify", "ffffffffffff0000", "--level", "structure"])

        // Two backups sharing a 12-character prefix: store a twin of this backup (same archive,
        // metadata naming the twin id) with `store put`, then `store reindex`.
        // Its 13th character differs from the id's, so the 13-character prefix below is unique.
        let thirteenth = id[id.index(id.startIndex, offsetBy: 12)]
        let twin = String(id.prefix(12)) + (thirteenth == "f" ? "e" : "f") + String(repeating: "0", count: 19)
        XCTAssertNotEqual(twin, id)
        let objects = try JSON.any(try w.expect(0, ["store", "ls", "--objects", "--prefix", "backups/\(id)/", "--json"]).stdout) as? [String] ?? []
        let metaKey = try XCTUnwrap(objects.filter { $0.contains("/meta-") }.max(), "\(objects)")
        let metaFile = w.path("meta"), archiveFile = w.path("archive")
        try w.expect(0, ["store", "get", metaKey, "-o", metaFile])
        try w.expect(0, ["store", "get", "backups/\(id)/archive", "-o", archiveFile])
        var metaBytes = try Files.read(metaFile)
        Files.replaceAll(&metaBytes, Array(id.utf8), Array(twin.utf8))
        try Files.write(metaBytes, metaFile)
        try w.expect(0, ["store", "put", "--allow-reserved", "backups/\(twin)/" + metaKey.split(separator: "/").last!, metaFile])
        try w.expect(0, ["store", "put", "--allow-reserved", "backups/\(twin)/archive", archiveFile])
        try w.expect(0, ["store", "reindex"])
        XCTAssertNoThrow(try w.entry(twin))

        let amb = try w.expect(64, ["inspect", String(id.prefix(12))])
        XCTAssertTrue(amb.stderr.contains("ambiguousBackupID"), amb.description)
        try w.expect(64, ["backup", "delete", String(id.prefix(12))])
        try w.expect(64, ["verify", String(id.prefix(12)), "--level", "structure"])
        // A longer prefix or the full id picks one.
        XCTAssertTrue(try w.expect(0, ["inspect", String(id.prefix(13))]).stdout.contains("backup \(id)"))
        try w.expect(0, ["inspect", id])
        try w.expect(0, ["backup", "delete", twin])
        XCTAssertEqual(try w.entry(twin)["state"] as? String, "PENDING_DELETION")
    }
}
