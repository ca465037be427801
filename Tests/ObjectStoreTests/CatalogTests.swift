import Foundation
import XCTest
import ByteCoding
@testable import ObjectStore

final class CatalogTests: XCTestCase {
    func makeCatalog(_ s: Scratch, name: String = "store", clock: ManualClock, faults: FaultHook? = nil) throws -> BackupCatalog {
        try LocalObjectStore.create(at: s.path + "/" + name)
        return try BackupCatalog(store: try LocalObjectStore(root: s.path + "/" + name, clock: clock, faults: faults))
    }

    @discardableResult
    func add(_ c: BackupCatalog, _ id: String, cluster: String = "cluster-a", bytes: [UInt8]? = nil,
             tags: [String: String] = [:], neverExpires: Bool = false) throws -> BackupEntry {
        try c.add(NewBackup(backupId: id, clusterId: cluster, hsmId: "hsm-1", manufacturer: "sim", tags: tags, neverExpires: neverExpires),
                  archive: BytesSource(bytes ?? pattern(500, seed: UInt64(id.utf8.count)))).entry
    }

    func testEncodingsAreExactAndRoundTrip() throws {
        var s = CatalogSnapshot()
        s.writeCount = 9
        s.entries["b1"] = BackupEntry(backupId: "b1", clusterId: "c1", hsmId: "h", manufacturer: "m", state: .pendingDeletion,
                                      createdMillis: 5, updatedMillis: 6, size: 7, tags: ["z": "1", "a": "2"], neverExpires: true,
                                      deleteRequestedMillis: 8,
                                      copySource: CopySource(sourceStore: String(repeating: "ab", count: 16), sourceBackupId: "b0", sourceCluster: "c0", copiedMillis: 9),
                                      objectKey: "backups/b1/archive", generation: 3)
        s.entries["b0"] = BackupEntry(backupId: "b0", clusterId: "c2", hsmId: "h", manufacturer: "m", state: .ready,
                                      createdMillis: 1, updatedMillis: 1, objectKey: "backups/b0/archive")
        s.policies["c1"] = RetentionPolicy(clusterId: "c1", days: 30, generation: 2)
        let bytes = try s.encode()
        let parsed = try CatalogSnapshot.parse(bytes)
        XCTAssertEqual(parsed, s)
        XCTAssertEqual(try parsed.encode(), bytes)
        for n in stride(from: 0, to: bytes.count, by: 7) { XCTAssertThrowsError(try CatalogSnapshot.parse(Array(bytes[0..<n]))) }
        var flipped = bytes
        flipped[40] ^= 0xFF
        XCTAssertThrowsError(try CatalogSnapshot.parse(flipped))
        let meta = try s.entries["b1"]!.encodeMeta()
        XCTAssertEqual(try BackupEntry.parseMeta(meta), s.entries["b1"])
        XCTAssertEqual(try BackupEntry.parseMeta(meta).encodeMeta(), meta)
        XCTAssertThrowsError(try BackupEntry.parseMeta(meta + [0])) { XCTAssertEqual(($0 as? ByteCodingError)?.code, .trailingBytes) }
    }

    func testCreateListAndQueries() throws {
        let s = Scratch()
        let clock = ManualClock()
        let c = try makeCatalog(s, clock: clock)
        let t0 = clock.nowMillis()
        try add(c, "b1")
        clock.advance(days: 1)
        try add(c, "b2", cluster: "cluster-b")
        clock.advance(days: 1)
        let pending = try c.create(NewBackup(backupId: "b3", clusterId: "cluster-a", hsmId: "hsm-2", manufacturer: "sim"))
        XCTAssertEqual(pending.state, .createInProgress)
        XCTAssertEqual(pending.createdMillis, clock.nowMillis())
        let dated = try c.create(NewBackup(backupId: "b4", clusterId: "cluster-c", hsmId: "h", manufacturer: "sim", createdMillis: 12345))
        XCTAssertEqual(dated.createdMillis, 12345)
        try c.delete("b4")
        XCTAssertEqual(try c.entry("b1").state, .ready)
        XCTAssertEqual(try c.entry("b1").size, 500)
        XCTAssertEqual(try c.list().map(\.backupId), ["b4", "b1", "b2", "b3"])
        XCTAssertEqual(try c.list(CatalogQuery(clusterId: "cluster-a")).map(\.backupId), ["b1", "b3"])
        XCTAssertEqual(try c.list(CatalogQuery(clusterId: "nope")).map(\.backupId), [])
        XCTAssertEqual(try c.list(CatalogQuery(states: [.ready])).map(\.backupId), ["b1", "b2"])
        XCTAssertEqual(try c.list(CatalogQuery(createdFromMillis: t0 + Millis.day)).map(\.backupId), ["b2", "b3"])
        XCTAssertEqual(try c.list(CatalogQuery(createdBeforeMillis: t0 + Millis.day)).map(\.backupId), ["b4", "b1"])
        XCTAssertEqual(try c.list(CatalogQuery(limit: 2)).map(\.backupId), ["b4", "b1"])
        XCTAssertStoreError(.alreadyExists, try self.add(c, "b1"))
        XCTAssertStoreError(.invalidKey, try self.add(c, "bad/id"))
        XCTAssertStoreError(.invalidKey, try self.add(c, "ok", cluster: ".hidden"))
        XCTAssertStoreError(.notFound, try c.entry("zzz"))
        XCTAssertStoreError(.invalidState, try c.markReady("b1", size: 1))
        XCTAssertEqual(try c.check(), [])
    }

    func testDeleteRestorePurge() throws {
        let s = Scratch()
        let clock = ManualClock()
        let c = try makeCatalog(s, clock: clock)
        let e = try add(c, "b1")
        try add(c, "b2")
        XCTAssertEqual(try c.delete("b1").state, .pendingDeletion)
        XCTAssertStoreError(.invalidState, try c.delete("b1"))
        XCTAssertEqual(try c.restore("b1").state, .ready)
        XCTAssertStoreError(.invalidState, try c.restore("b1"))
        try c.delete("b1")
        clock.advance(days: 6.9)
        XCTAssertEqual(try c.purge().purged, [], "the recovery window is still open")
        XCTAssertEqual(try c.restore("b1").state, .ready)
        try c.delete("b1")
        try c.delete("b2")
        clock.advance(days: 7)
        XCTAssertStoreError(.invalidState, try c.restore("b1"))
        let report = try c.purge()
        XCTAssertEqual(report.purged, ["b1", "b2"])
        XCTAssertEqual(try c.entry("b1").state, .deleted)
        for i in 0..<3 { XCTAssertFalse(FileManager.default.fileExists(atPath: c.local.objectPath(i, e.objectKey))) }
        XCTAssertEqual(try c.purge().purged, [])
        XCTAssertTrue(try c.check().isEmpty)
    }

    func testPurgeKeepsPendingUntilEveryReplicaIsClean() throws {
        let s = Scratch()
        let clock = ManualClock()
        let faults = FaultSwitch()
        let c = try makeCatalog(s, clock: clock, faults: faults.hook)
        let e = try add(c, "b1")
        try c.delete("b1")
        clock.advance(days: 8)
        faults.set(.remove, replica: 1, errno: EIO)
        let report = try c.purge()
        XCTAssertEqual(report.purged, [])
        XCTAssertEqual(report.failed.map(\.finding.replica), [1])
        XCTAssertEqual(try c.entry("b1").state, .pendingDeletion)
        XCTAssertTrue(FileManager.default.fileExists(atPath: c.local.objectPath(1, e.objectKey)))
        faults.clear()
        XCTAssertEqual(try c.purge().purged, ["b1"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: c.local.objectPath(1, e.objectKey)))
    }

    func testRetentionNeverTakesTheNewestOrNeverExpires() throws {
        let s = Scratch()
        let clock = ManualClock()
        let c = try makeCatalog(s, clock: clock)
        XCTAssertStoreError(.invalidArgument, try c.setRetention("cluster-a", days: 6))
        XCTAssertStoreError(.invalidArgument, try c.setRetention("cluster-a", days: 380))
        try c.setRetention("cluster-a", days: 7)
        try c.setRetention("cluster-a", days: 10)
        XCTAssertEqual(try c.retention("cluster-a")?.days, 10)
        try add(c, "old1")
        try add(c, "keep", neverExpires: true)
        try add(c, "other", cluster: "cluster-b")
        clock.advance(days: 5)
        try add(c, "old2")
        clock.advance(days: 6) // old1, keep: 11 days; old2: 6 days
        XCTAssertEqual(try c.applyRetention().expired, ["old1"])
        clock.advance(days: 30) // everything is old now; old2 is the newest READY backup of cluster-a
        XCTAssertEqual(try c.applyRetention(clusterId: "cluster-a").expired, [])
        XCTAssertEqual(try c.entry("old1").state, .pendingDeletion)
        XCTAssertEqual(try c.entry("old2").state, .ready)
        XCTAssertEqual(try c.entry("keep").state, .ready)
        XCTAssertEqual(try c.entry("other").state, .ready, "cluster-b has no policy")
        try c.setNeverExpires("keep", false)
        XCTAssertEqual(try c.applyRetention().expired, ["keep"])
        try c.removeRetention("cluster-a")
        XCTAssertNil(try c.retention("cluster-a"))
    }

    /// A backup tagged verification=failed never stands in for the cluster's newest backup: the
    /// newest untagged one is kept instead, and the tagged ones expire by age; with only tagged
    /// backups left, the newest of them is kept.
    func testRetentionKeepsTheNewestBackupThatDidNotFailVerification() throws {
        let s = Scratch()
        let clock = ManualClock()
        let c = try makeCatalog(s, clock: clock)
        try c.setRetention("cluster-a", days: 7)
        try add(c, "verified1")
        clock.advance(days: 1)
        try add(c, "verified2")
        for i in 1...3 {
            clock.advance(days: 1)
            try add(c, "failed\(i)")
            let e = try c.tag("failed\(i)", [BackupEntry.verificationTag: BackupEntry.verificationFailed])
            XCTAssertTrue(e.failedVerification)
        }
        XCTAssertFalse(try c.entry("verified2").failedVerification)
        clock.advance(days: 30) // every backup is past 7 days
        XCTAssertEqual(try c.applyRetention(clusterId: "cluster-a").expired, ["failed1", "failed2", "failed3", "verified1"])
        XCTAssertEqual(try c.entry("verified2").state, .ready, "the newest backup that did not fail its verification")

        let s2 = Scratch()
        let c2 = try makeCatalog(s2, clock: clock)
        try c2.setRetention("cluster-a", days: 7)
        for i in 1...2 {
            try add(c2, "f\(i)")
            try c2.tag("f\(i)", [BackupEntry.verificationTag: BackupEntry.verificationFailed])
            clock.advance(days: 1)
        }
        clock.advance(days: 30)
        XCTAssertEqual(try c2.applyRetention().expired, ["f1"], "only tagged backups: the newest of them is kept")
        XCTAssertEqual(try c2.entry("f2").state, .ready)
    }

    func testTags() throws {
        let s = Scratch()
        let c = try makeCatalog(s, clock: ManualClock())
        try add(c, "b1", tags: ["env": "prod"])
        XCTAssertEqual(try c.tag("b1", ["team": "hsm", "env": "test"]).tags, ["env": "test", "team": "hsm"])
        XCTAssertEqual(try c.untag("b1", ["env"]).tags, ["team": "hsm"])
        var many: [String: String] = [:]
        for i in 0..<50 { many["k\(i)"] = "v" }
        XCTAssertStoreError(.limitExceeded, try c.tag("b1", many))
        XCTAssertStoreError(.invalidArgument, try c.tag("b1", ["": "v"]))
        XCTAssertEqual(try c.entry("b1").tags, ["team": "hsm"])
    }

    func testCopyKeepsCreationTimeAndRecordsSource() throws {
        let s = Scratch()
        let clock = ManualClock()
        let a = try makeCatalog(s, name: "a", clock: clock)
        let b = try makeCatalog(s, name: "b", clock: clock)
        let data = pattern(2 << 20, seed: 11)
        let original = try add(a, "b1", bytes: data, tags: ["env": "prod"])
        clock.advance(days: 3)
        let copy = try a.copy("b1", to: b, destinationCluster: "cluster-z", newBackupId: "b1-copy")
        XCTAssertEqual(copy.state, .ready)
        XCTAssertEqual(copy.createdMillis, original.createdMillis)
        XCTAssertEqual(copy.clusterId, "cluster-z")
        XCTAssertEqual(copy.tags, ["env": "prod"])
        XCTAssertEqual(copy.copySource, CopySource(sourceStore: a.local.config.storeIdHex, sourceBackupId: "b1",
                                                   sourceCluster: "cluster-a", copiedMillis: clock.nowMillis()))
        XCTAssertEqual(try b.local.getAll(copy.objectKey), data)
        XCTAssertEqual(copy.size, UInt64(data.count))
        try a.delete("b1")
        XCTAssertStoreError(.invalidState, try a.copy("b1", to: b))
        // After a reindex the copy fields survive: they live in the metadata object.
        try FileManager.default.removeItem(atPath: b.path)
        try b.reindex()
        XCTAssertEqual(try b.entry("b1-copy"), copy)
    }

    func testReindexRebuildsEverythingFromObjects() throws {
        let s = Scratch()
        let clock = ManualClock()
        let c = try makeCatalog(s, clock: clock)
        for i in 0..<6 { try add(c, "b\(i)", cluster: "cluster-\(i % 2)", tags: ["n": "\(i)"]); clock.advance(days: 1) }
        try c.delete("b1")
        try c.delete("b2")
        clock.advance(days: 8)
        try c.purge()
        try c.tag("b3", ["x": "y"])
        _ = try c.create(NewBackup(backupId: "b9", clusterId: "cluster-0", hsmId: "h", manufacturer: "sim"))
        try c.setRetention("cluster-1", days: 30)
        let before = try c.load()
        // Bit rot in the catalog: refused with its own code, reported by check, fixed by reindex.
        flipByte(c.path, at: 100)
        XCTAssertStoreError(.badCatalog, try c.list())
        XCTAssertStoreError(.badCatalog, try c.load())
        XCTAssertEqual(try c.check().map(\.problem), [.catalogDamaged])
        let report = try c.reindex()
        XCTAssertEqual(report.entries, 7)
        XCTAssertEqual(report.policies, 1)
        var after = try c.load()
        after.writeCount = before.writeCount
        XCTAssertEqual(after, before)
        XCTAssertTrue(try c.check().isEmpty)
        // A lost catalog too: damage (not an empty store), named as such until reindex.
        try FileManager.default.removeItem(atPath: c.path)
        XCTAssertStoreError(.badCatalog, try c.list()) { XCTAssertTrue($0.reason.contains("store reindex"), $0.description) }
        XCTAssertStoreError(.badCatalog, try c.create(NewBackup(backupId: "b10", clusterId: "cluster-0", hsmId: "h", manufacturer: "sim")))
        XCTAssertEqual(try c.check().map(\.problem), [.catalogDamaged])
        try c.reindex()
        XCTAssertEqual(try c.load().entries, before.entries)
        XCTAssertTrue(try c.removeStaleTemps().isEmpty)
    }

    func testCheckFindsDisagreements() throws {
        let s = Scratch()
        let c = try makeCatalog(s, clock: ManualClock())
        let e = try add(c, "b1")
        try add(c, "b2")
        _ = try c.local.delete(e.objectKey)
        _ = try c.local.put("backups/stray/archive", bytes: [1])
        var stale = try c.entry("b2")
        stale.generation += 1
        stale.tags = ["sneaky": "1"]
        _ = try c.local.put(BackupCatalog.metaKey("b2", stale.generation), bytes: try stale.encodeMeta())
        let findings = try c.check()
        XCTAssertEqual(findings.map(\.problem), [.archiveMissing, .staleEntry, .orphanArchive])
        XCTAssertEqual(findings.map(\.backupId), ["b1", "b2", "stray"])
        let report = try c.reindex()
        XCTAssertEqual(report.orphanArchives, ["stray"])
        XCTAssertEqual(try c.entry("b2").tags, ["sneaky": "1"], "the highest metadata generation wins")
    }

    func testListing100kEntries() throws {
        let s = Scratch()
        let c = try makeCatalog(s, clock: ManualClock())
        var snap = CatalogSnapshot()
        for i in 0..<100_000 {
            let id = "backup-" + String(i)
            snap.entries[id] = BackupEntry(backupId: id, clusterId: "cluster-" + String(i % 100), hsmId: "hsm", manufacturer: "sim",
                                           state: i % 10 == 0 ? .pendingDeletion : .ready, createdMillis: UInt64(i) * 1000,
                                           updatedMillis: 0, size: 1, objectKey: BackupCatalog.archiveKey(id))
        }
        try c.mutate { $0 = snap }
        let t0 = Date()
        let byCluster = try c.list(CatalogQuery(clusterId: "cluster-7"))
        let t1 = Date()
        let all = try c.list()
        let t2 = Date()
        XCTAssertEqual(byCluster.count, 1000)
        XCTAssertEqual(byCluster.first?.backupId, "backup-7")
        XCTAssertEqual(all.count, 100_000)
        XCTAssertEqual(all.last?.backupId, "backup-99999")
        XCTAssertEqual(try c.list(CatalogQuery(states: [.pendingDeletion], createdFromMillis: 50_000_000)).count, 5000)
        // A measurement for the report, not an assertion (debug build; see the report for release).
        print("catalog 100k (debug): by cluster \(Int(t1.timeIntervalSince(t0) * 1000)) ms, all \(Int(t2.timeIntervalSince(t1) * 1000)) ms")
    }

    func testFailedArchivePutLeavesNoReadyEntry() throws {
        let s = Scratch()
        let clock = ManualClock()
        let faults = FaultSwitch()
        let c = try makeCatalog(s, clock: clock, faults: faults.hook)
        let e = try c.create(NewBackup(backupId: "b0", clusterId: "c", hsmId: "h", manufacturer: "sim"))
        XCTAssertStoreError(.notFound, try c.markReady(e.backupId)) // no archive yet
        _ = try c.local.put(e.objectKey, bytes: [1, 2, 3])
        XCTAssertStoreError(.invalidState, try c.markReady(e.backupId, size: 4))
        XCTAssertEqual(try c.markReady(e.backupId).size, 3)

        faults.set(.write, replica: 0, errno: ENOSPC, pathContains: "archive")
        faults.set(.write, replica: 1, errno: ENOSPC, pathContains: "archive")
        XCTAssertStoreError(.quorumNotReached, try self.add(c, "b1"))
        // Rolled back: no entry, no archive, no metadata object (nothing for purge to wait for).
        XCTAssertStoreError(.notFound, try c.entry("b1"))
        XCTAssertEqual(try c.local.list(prefix: "backups/b1/"), [])
        faults.clear()
        XCTAssertEqual(try c.check(), [])
        XCTAssertEqual(try self.add(c, "b1").state, .ready, "the id can be used again")
    }
}
