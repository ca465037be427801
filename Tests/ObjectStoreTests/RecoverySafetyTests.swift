import Foundation
import XCTest
import ByteCoding
@testable import ObjectStore

/// Findings of the review of issue 14's recovery: recovery never deletes what may be the last good
/// archive, entries name only archive objects, a reader without read-repair takes no stripe lock,
/// and a missing catalog is not mistaken for an empty store while a replica is away.
final class RecoverySafetyTests: XCTestCase {
    private func makeCatalog(_ s: Scratch) throws -> BackupCatalog {
        try LocalObjectStore.create(at: s.path + "/store")
        return try BackupCatalog(store: try LocalObjectStore(root: s.path + "/store", clock: ManualClock()))
    }

    /// Metadata names a rewrapped archive that was lost (a rewrap failed after its metadata
    /// write); the old `archive` is the last good copy: recovery adopts the metadata but keeps
    /// `archive`, and says why.
    func testRecoveryKeepsTheOtherArchivesWhenTheNamedOneIsNotWhole() throws {
        let s = Scratch()
        let c = try makeCatalog(s)
        let entry = try c.add(NewBackup(backupId: "b1", clusterId: "cluster-a", hsmId: "hsm-1", manufacturer: "sim"),
                              archive: BytesSource(pattern(3000, seed: 1))).entry
        var newer = entry
        newer.generation += 1
        newer.objectKey = BackupCatalog.archiveKey("b1", generation: newer.generation)   // never written
        _ = try c.local.put(BackupCatalog.metaKey("b1", newer.generation), bytes: try newer.encodeMeta())
        let actions = try c.recover()
        XCTAssertEqual(actions.map(\.action), [.adoptedMetadata, .skipped])
        XCTAssertTrue(actions.last?.detail.contains(entry.objectKey) ?? false, "\(actions)")
        XCTAssertEqual(try c.local.getAll(entry.objectKey), pattern(3000, seed: 1), "the last good copy stays")
    }

    /// §5.8: an entry's object key is `archive` or `archive-g<n>`, nothing else under the backup.
    func testAnEntryNamingAMetadataObjectAsItsArchiveIsRefused() throws {
        let s = Scratch()
        let c = try makeCatalog(s)
        var e = try c.add(NewBackup(backupId: "b1", clusterId: "cluster-a", hsmId: "hsm-1", manufacturer: "sim"),
                          archive: BytesSource(pattern(100))).entry
        for bad in ["backups/b1/meta-0000000000000005", "backups/b1/archive-g0", "backups/b1/archive-g01", "backups/b1/archivex"] {
            e.objectKey = bad
            XCTAssertThrowsError(try BackupEntry.parseMeta(try e.encodeMeta()), bad)
        }
        e.objectKey = "backups/b1/archive-g12"
        XCTAssertEqual(try BackupEntry.parseMeta(try e.encodeMeta()).objectKey, "backups/b1/archive-g12")
    }

    /// A reader without read-repair takes no stripe lock: it finishes while this process holds
    /// the stripe lock of another key of the same stripe (a writer), and the bad replica waits
    /// for a later repair instead of deadlocking the reader.
    func testAReaderWithoutReadRepairNeedsNoStripeLock() throws {
        let s = Scratch()
        try LocalObjectStore.create(at: s.path + "/store")
        let store = try LocalObjectStore(root: s.path + "/store")
        let a = "backups/x/archive"
        let b = try XCTUnwrap((1...100_000).lazy.map { "backups/x\($0)/archive" }.first { LocalObjectStore.fanOut($0) == LocalObjectStore.fanOut(a) })
        _ = try store.put(a, bytes: pattern(5000, seed: 4))
        var damaged = [UInt8](try Data(contentsOf: URL(fileURLWithPath: store.objectPath(1, a))))
        damaged[10] ^= 0xFF
        try Data(damaged).write(to: URL(fileURLWithPath: store.objectPath(1, a)))
        let writer = try store.makeWriter(b)                       // holds the stripe lock
        let r = try store.get(a, readRepair: false) as! LocalObjectReader
        XCTAssertEqual(try readAll(r), pattern(5000, seed: 4))
        XCTAssertEqual(r.repaired, [])
        writer.abort()
        XCTAssertEqual(store.verifyReplicas(a).map(\.replica), [1], "left for scrub or a repairing read")
    }

    /// A missing catalog while a replica is unavailable is damage, not an empty store, and no
    /// empty catalog is written over the backups that replica may hold.
    func testAMissingCatalogWithAReplicaAwayIsNotAnEmptyStore() throws {
        let s = Scratch()
        let c = try makeCatalog(s)
        try c.add(NewBackup(backupId: "b1", clusterId: "cluster-a", hsmId: "hsm-1", manufacturer: "sim"), archive: BytesSource(pattern(100)))
        try FileManager.default.removeItem(atPath: c.path)
        // Every metadata object lives on replicas 0 and 1 only if replica 2 is away: take 0 and 1's away instead.
        for i in [0, 1] { try FileManager.default.removeItem(atPath: s.path + "/store/replica-\(i)/REPLICA") }
        for i in [2] { try FileManager.default.removeItem(atPath: s.path + "/store/replica-\(i)/objects") }
        let reopened = try BackupCatalog(store: try LocalObjectStore(root: s.path + "/store", clock: ManualClock()))
        XCTAssertThrowsError(try reopened.load()) { XCTAssertEqual(($0 as? StoreError)?.code, .badCatalog) }
        XCTAssertFalse(FileManager.default.fileExists(atPath: c.path), "no empty catalog written")
    }
}

extension RecoverySafetyTests {
    /// A rollback sees every metadata generation of the backup: a newer one that says READY (the
    /// create's READY write landed, its catalog write did not) stops the rollback, since the
    /// metadata is the truth; a newer one still CREATE_IN_PROGRESS is deleted with the rest.
    func testARollbackRespectsAndRemovesNewerMetadata() throws {
        let s = Scratch()
        let c = try makeCatalog(s)
        let a = try c.create(NewBackup(backupId: "b1", clusterId: "cluster-a", hsmId: "hsm-1", manufacturer: "sim"))
        _ = try c.local.put(a.objectKey, bytes: pattern(700, seed: 1))
        var ready = a
        ready.generation += 1
        ready.state = .ready
        ready.size = 700
        _ = try c.local.put(BackupCatalog.metaKey("b1", ready.generation), bytes: try ready.encodeMeta())
        XCTAssertThrowsError(try c.rollBack("b1")) { XCTAssertEqual(($0 as? StoreError)?.code, .invalidState) }
        XCTAssertEqual(try c.local.getAll(a.objectKey), pattern(700, seed: 1), "the backup's archive stays")
        XCTAssertEqual(try c.recover().map(\.action), [.adoptedMetadata])
        XCTAssertEqual(try c.entry("b1").state, .ready)

        let b = try c.create(NewBackup(backupId: "b2", clusterId: "cluster-a", hsmId: "hsm-1", manufacturer: "sim"))
        _ = try c.local.put(b.objectKey, bytes: pattern(300, seed: 2))
        var tagged = b
        tagged.generation += 1
        tagged.tags = ["k": "v"]
        _ = try c.local.put(BackupCatalog.metaKey("b2", tagged.generation), bytes: try tagged.encodeMeta())
        try c.rollBack("b2")
        XCTAssertEqual(try c.local.list(prefix: "backups/b2/"), [], "no metadata generation and no archive left")
        XCTAssertNil(try c.load().entries["b2"])
    }
}

extension RecoverySafetyTests {
    /// A first copy succeeds while a writer of another backup holds the same lock stripe in the
    /// destination (recovery runs only for an id the destination has a trace of).
    func testAFirstCopyIsNotBlockedByAnotherBackupsWriterInTheSameStripe() throws {
        let s = Scratch()
        let source = try makeCatalog(s)
        try source.add(NewBackup(backupId: "b1", clusterId: "cluster-a", hsmId: "hsm-1", manufacturer: "sim"), archive: BytesSource(pattern(500)))
        try LocalObjectStore.create(at: s.path + "/dest")
        let dest = try BackupCatalog(store: try LocalObjectStore(root: s.path + "/dest", clock: ManualClock()))
        let other = try XCTUnwrap((1...100_000).lazy.map { "z\($0)" }.first { LocalObjectStore.fanOut($0) == LocalObjectStore.fanOut("b1") })
        let busy = try dest.writerLock(other)                        // a create of `other` is running
        let copy = try source.copy("b1", to: dest, newBackupId: "b1")
        XCTAssertEqual(copy.state, .ready)
        withExtendedLifetime(busy) {}
    }
}
