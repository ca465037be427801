import Foundation
import XCTest
@testable import ObjectStore

/// Retention decides "keep the newest" under the catalog lock, over each entry as its newest
/// metadata says; a policy change never reuses a generation a killed change left behind.
final class RetentionUnderLockTests: XCTestCase {
    func catalog(_ s: Scratch, clock: ManualClock) throws -> BackupCatalog {
        try LocalObjectStore.create(at: s.path + "/store")
        return try BackupCatalog(store: try LocalObjectStore(root: s.path + "/store", clock: clock))
    }

    func add(_ c: BackupCatalog, _ id: String) throws -> BackupEntry {
        try c.add(NewBackup(backupId: id, clusterId: "c", hsmId: "h", manufacturer: "sim"), archive: BytesSource(pattern(300, seed: 1))).entry
    }

    /// B, the newest READY backup, was deleted by a change whose metadata landed and whose
    /// catalog write did not (or by another process after a snapshot was read): the catalog
    /// still says B is READY. Retention must see B as PENDING_DELETION and so keep A, the
    /// newest READY backup by the metadata.
    func testTheNewestBackupByItsMetadataIsKept() throws {
        let s = Scratch()
        let clock = ManualClock()
        let c = try catalog(s, clock: clock)
        try c.setRetention("c", days: 7)
        _ = try add(c, "a")
        clock.advance(days: 1)
        let b = try add(c, "b")
        clock.advance(days: 30)
        var deleted = b
        deleted.generation += 1
        deleted.state = .pendingDeletion
        deleted.deleteRequestedMillis = clock.nowMillis()
        _ = try c.local.put(BackupCatalog.metaKey("b", deleted.generation), bytes: try deleted.encodeMeta())
        XCTAssertEqual(try c.load().entries["b"]?.state, .ready, "the catalog is a generation behind")

        let report = try c.applyRetention()
        XCTAssertEqual(report.expired, [])
        XCTAssertEqual(try c.entry("a").state, .ready, "a is the cluster's newest READY backup")
        XCTAssertEqual(try c.entry("b").state, .pendingDeletion)
    }

    /// A policy change killed after its object and before the catalog write leaves generation
    /// g+1 stored and unknown to the catalog: the next change writes past it (and removes it).
    func testAPolicyGenerationTheCatalogDoesNotKnowIsNotReused() throws {
        let s = Scratch()
        let clock = ManualClock()
        let c = try catalog(s, clock: clock)
        try c.setRetention("c", days: 30)
        let leftover = RetentionPolicy(clusterId: "c", days: 99, generation: 2)
        _ = try c.local.put(BackupCatalog.policyKey("c", 2), bytes: try leftover.encodeObject())
        try c.setRetention("c", days: 10)
        XCTAssertEqual(try c.retention("c")?.days, 10)
        XCTAssertEqual(try c.load().policies["c"]?.generation, 3)
        XCTAssertFalse(c.local.anyReplicaHolds(BackupCatalog.policyKey("c", 2)))
        try c.removeRetention("c")
        XCTAssertNil(try c.retention("c"))
    }

    /// A retention pass that expires nothing writes nothing: no catalog write (so no quorum is
    /// needed, and a scheduled run does not fail for an unreachable replica it did not need).
    func testARetentionPassThatExpiresNothingDoesNotWriteTheCatalog() throws {
        let s = Scratch()
        let clock = ManualClock()
        let c = try catalog(s, clock: clock)
        try c.setRetention("c", days: 7)
        _ = try add(c, "a")
        let before = try c.load().writeCount
        XCTAssertEqual(try c.applyRetention().expired, [])
        XCTAssertEqual(try c.load().writeCount, before)
    }
}
