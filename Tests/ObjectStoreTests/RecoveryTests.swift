import Foundation
import XCTest
import ByteCoding
@testable import ObjectStore

/// Issue 14, part A: what a killed or failed command leaves, and how recovery (`store fsck`)
/// finishes it. Crash states are built directly here (the same files a kill leaves); the
/// kill -9 versions are in ProcessTests.
final class RecoveryTests: XCTestCase {
    func makeCatalog(_ s: Scratch, name: String = "store", clock: ManualClock = ManualClock()) throws -> BackupCatalog {
        try LocalObjectStore.create(at: s.path + "/" + name)
        return try BackupCatalog(store: try LocalObjectStore(root: s.path + "/" + name, clock: clock))
    }

    @discardableResult
    func add(_ c: BackupCatalog, _ id: String, cluster: String = "cluster-a", size: Int = 3000) throws -> BackupEntry {
        try c.add(NewBackup(backupId: id, clusterId: cluster, hsmId: "hsm-1", manufacturer: "sim"),
                  archive: BytesSource(pattern(size, seed: UInt64(id.utf8.count)))).entry
    }

    /// After recovery: a second recovery does nothing, the check is clean, nothing is in progress.
    func assertSettled(_ c: BackupCatalog, file: StaticString = #filePath, line: UInt = #line) throws {
        XCTAssertEqual(try c.recover(), [], "a second recovery has nothing to do", file: file, line: line)
        XCTAssertEqual(try c.check(), [], file: file, line: line)
        XCTAssertEqual(try c.list(CatalogQuery(states: [.createInProgress])), [], "nothing stuck", file: file, line: line)
    }

    // MARK: item 1: abandoned creates

    func testAbandonedCreateWithoutArchiveIsRolledBack() throws {
        let s = Scratch()
        let c = try makeCatalog(s)
        _ = try c.create(NewBackup(backupId: "b1", clusterId: "c", hsmId: "h", manufacturer: "sim"))
        XCTAssertEqual(try c.entry("b1").state, .createInProgress)
        let actions = try c.recover()
        XCTAssertEqual(actions.map(\.action), [.rolledBack])
        XCTAssertEqual(actions.first?.backupId, "b1")
        XCTAssertStoreError(.notFound, try c.entry("b1"))
        XCTAssertEqual(try c.local.list(prefix: "backups/"), [], "no metadata or archive object remains")
        try assertSettled(c)
    }

    func testAbandonedCreateWithWholeArchiveIsFinished() throws {
        let s = Scratch()
        let c = try makeCatalog(s)
        let e = try c.create(NewBackup(backupId: "b1", clusterId: "c", hsmId: "h", manufacturer: "sim"))
        _ = try c.local.put(e.objectKey, bytes: pattern(2_500_000, seed: 3)) // killed after the put, before markReady
        XCTAssertEqual(try c.recover().map(\.action), [.finished])
        let ready = try c.entry("b1")
        XCTAssertEqual(ready.state, .ready)
        XCTAssertEqual(ready.size, 2_500_000)
        try assertSettled(c)
    }

    func testAbandonedCreateWhoseArchiveFailsItsCheckIsRolledBack() throws {
        let s = Scratch()
        let c = try makeCatalog(s)
        let e = try c.create(NewBackup(backupId: "b1", clusterId: "c", hsmId: "h", manufacturer: "sim"))
        _ = try c.local.put(e.objectKey, bytes: pattern(5000, seed: 3))
        for i in 0..<3 { flipByte(c.local.objectPath(i, e.objectKey), at: 100) } // no whole replica
        XCTAssertEqual(try c.recover().map(\.action), [.rolledBack])
        XCTAssertEqual(try c.local.list(prefix: "backups/"), [])
        // The facade's check (structure verification) can refuse what the store accepts.
        let e2 = try c.create(NewBackup(backupId: "b2", clusterId: "c", hsmId: "h", manufacturer: "sim"))
        _ = try c.local.put(e2.objectKey, bytes: pattern(5000, seed: 4))
        let actions = try c.recover { _ in "not an archive" }
        XCTAssertEqual(actions.map(\.action), [.rolledBack])
        XCTAssertTrue(actions[0].detail.contains("not an archive"), actions[0].detail)
        try assertSettled(c)
    }

    func testALiveWritersCreateIsLeftAlone() throws {
        let s = Scratch()
        let c = try makeCatalog(s)
        var writing: BackupCatalog.WriterLock? = try c.writerLock("b1") // this process is the live writer
        _ = try c.create(NewBackup(backupId: "b1", clusterId: "c", hsmId: "h", manufacturer: "sim"))
        // Another process's fsck cannot take the lock: it skips the backup.
        let other = try BackupCatalog(store: try LocalObjectStore(root: c.local.root))
        XCTAssertEqual(try other.recover().map(\.action), [.skipped])
        XCTAssertEqual(try c.entry("b1").state, .createInProgress)
        XCTAssertNotNil(writing)
        writing = nil
        XCTAssertEqual(try other.recover().map(\.action), [.rolledBack], "the writer is gone")
        try assertSettled(other)
    }

    /// A kill between the catalog write and the metadata deletes of a rollback, or the old
    /// in-process failure path, leaves metadata of a CREATE_IN_PROGRESS backup without an entry:
    /// `notInCatalog` on every fsck before; now it is taken, then rolled back.
    func testMetadataWithoutCatalogEntryIsRecovered() throws {
        let s = Scratch()
        let c = try makeCatalog(s)
        _ = try c.create(NewBackup(backupId: "b1", clusterId: "c", hsmId: "h", manufacturer: "sim"))
        try c.mutate { $0.entries["b1"] = nil }
        XCTAssertEqual(try c.check().map(\.problem), [.notInCatalog])
        XCTAssertEqual(try c.recover().map(\.action), [.adoptedMetadata, .rolledBack])
        try assertSettled(c)
        // A READY backup's metadata without an entry (a lost catalog write) comes back READY.
        let e = try add(c, "b2")
        try c.mutate { $0.entries["b2"] = nil }
        XCTAssertEqual(try c.recover().map(\.action), [.adoptedMetadata])
        XCTAssertEqual(try c.entry("b2"), e)
        try assertSettled(c)
    }

    /// `delete` + `undelete` of an abandoned create whose archive was stored: READY with the
    /// archive's size (it said 0 bytes before).
    func testUndeleteOfADeletedCreateTakesTheArchiveSize() throws {
        let s = Scratch()
        let c = try makeCatalog(s)
        let e = try c.create(NewBackup(backupId: "b1", clusterId: "c", hsmId: "h", manufacturer: "sim"))
        _ = try c.local.put(e.objectKey, bytes: pattern(7000, seed: 2))
        try c.delete("b1")
        let back = try c.restore("b1")
        XCTAssertEqual(back.state, .ready)
        XCTAssertEqual(back.size, 7000)
        try assertSettled(c)
    }

    /// With a replica away, a rollback cannot delete everywhere: recovery reports the backup
    /// `skipped` (it does not fail as a whole) and finishes once the replica is back.
    func testRecoveryWithAReplicaAwayIsRetried() throws {
        let s = Scratch()
        let c = try makeCatalog(s)
        try add(c, "b0")
        _ = try c.create(NewBackup(backupId: "b1", clusterId: "c", hsmId: "h", manufacturer: "sim"))
        let marker = c.local.replicaPaths[2] + "/" + ReplicaMarker.fileName
        let bytes = try Data(contentsOf: URL(fileURLWithPath: marker))
        try FileManager.default.removeItem(atPath: marker)
        let first = try c.recover()
        XCTAssertEqual(first.map(\.action), [.skipped])
        XCTAssertEqual(try c.entry("b1").state, .createInProgress)
        try bytes.write(to: URL(fileURLWithPath: marker))
        XCTAssertEqual(try c.recover().map(\.action), [.rolledBack])
        try assertSettled(c)
    }

    /// A failed create (disk full on the quorum) is rolled back in-process: nothing remains.
    func testDiskFullDuringCreateLeavesNothing() throws {
        let s = Scratch()
        let faults = FaultSwitch()
        try LocalObjectStore.create(at: s.path + "/store")
        let c = try BackupCatalog(store: try LocalObjectStore(root: s.path + "/store", faults: faults.hook))
        faults.set(.write, replica: 0, errno: ENOSPC, pathContains: "archive")
        faults.set(.sync, replica: 1, errno: ENOSPC, pathContains: "archive")
        XCTAssertStoreError(.quorumNotReached, try self.add(c, "b1", size: 2_000_000))
        XCTAssertStoreError(.notFound, try c.entry("b1"))
        XCTAssertEqual(try c.local.list(prefix: "backups/"), [])
        XCTAssertEqual(tempFiles(under: s.path), [])
        faults.clear()
        try assertSettled(c)
    }

    // MARK: item 2: copy

    func testKilledCopyIsRetryableAndATombstoneDoesNotBlockIt() throws {
        let s = Scratch()
        let clock = ManualClock()
        let a = try makeCatalog(s, name: "a", clock: clock)
        let b = try makeCatalog(s, name: "b", clock: clock)
        let source = try add(a, "b1", size: 1_500_000)
        let bytes = try a.local.getAll(source.objectKey)
        // Killed after the archive was published in the destination, before it became READY.
        let stuck = BackupEntry(backupId: "b1", clusterId: "cluster-a", hsmId: "hsm-1", manufacturer: "sim",
                                state: .createInProgress, createdMillis: source.createdMillis, updatedMillis: clock.nowMillis(),
                                copySource: CopySource(sourceStore: a.local.config.storeIdHex, sourceBackupId: "b1",
                                                       sourceCluster: "cluster-a", copiedMillis: clock.nowMillis()),
                                objectKey: BackupCatalog.archiveKey("b1"))
        _ = try b.insert(stuck)
        _ = try b.local.put(stuck.objectKey, bytes: bytes)
        let copy = try a.copy("b1", to: b, newBackupId: "b1")
        XCTAssertEqual(copy.state, .ready)
        XCTAssertEqual(try b.local.getAll(copy.objectKey), bytes)
        XCTAssertEqual(try a.copy("b1", to: b, newBackupId: "b1"), copy, "a retry of a finished copy is done")
        try assertSettled(b)

        // Killed mid-put (no archive object): the retry rolls the attempt back and copies again.
        try b.delete("b1")
        clock.advance(days: 8)
        XCTAssertEqual(try b.purge().purged, ["b1"])
        XCTAssertEqual(try b.entry("b1").state, .deleted)
        let again = try a.copy("b1", to: b, newBackupId: "b1")
        XCTAssertEqual(again.state, .ready, "the tombstone does not block a new copy")
        XCTAssertGreaterThan(again.generation, copy.generation)
        XCTAssertEqual(try b.local.getAll(again.objectKey), bytes)
        try assertSettled(b)

        // Another backup under an id the destination holds is refused (only a retry is done).
        try add(a, "b3")
        try add(b, "b3", size: 10)
        XCTAssertStoreError(.alreadyExists, try a.copy("b3", to: b, newBackupId: "b3"))

        // A copy that fails in-process (the source unreadable) leaves nothing behind.
        _ = try add(a, "b2")
        for i in 0..<3 { flipByte(a.local.objectPath(i, BackupCatalog.archiveKey("b2")), at: 10) }
        XCTAssertStoreError(.unrecoverable, try a.copy("b2", to: b, newBackupId: "b2"))
        XCTAssertStoreError(.notFound, try b.entry("b2"))
        XCTAssertEqual(try b.local.list(prefix: "backups/b2/"), [])
        try assertSettled(b)
    }

    // MARK: items 3 and 4: archive generations

    func testArchiveGenerationsAreKnownToCheckReindexPurgeAndRecovery() throws {
        let s = Scratch()
        let clock = ManualClock()
        let c = try makeCatalog(s, clock: clock)
        let e = try add(c, "b1")
        // A rewrap's switch-over: the entry names archive-g3; the old archive is gone.
        let g = BackupCatalog.archiveKey("b1", generation: e.generation + 1)
        _ = try c.local.put(g, bytes: pattern(4000, seed: 9))
        try c.update("b1") { $0.objectKey = g; $0.size = 4000 }
        _ = try c.local.delete(e.objectKey)
        XCTAssertEqual(try c.check(), [], "a rewrapped backup is healthy")
        let before = try c.load()
        let report = try c.reindex()
        XCTAssertEqual(report.orphanArchives, [])
        XCTAssertEqual(try c.load().entries, before.entries)

        // Killed at the switch-over: the old archive and a stray generation stay; fsck removes them.
        _ = try c.local.put(e.objectKey, bytes: [1])
        _ = try c.local.put(BackupCatalog.archiveKey("b1", generation: 7), bytes: [2])
        XCTAssertEqual(try c.check().map(\.problem), [.orphanArchive, .orphanArchive])
        XCTAssertEqual(try c.recover().map(\.action), [.removedArchive, .removedArchive])
        XCTAssertEqual(try c.local.list(prefix: "backups/b1/archive"), [g])
        try assertSettled(c)

        // Purge removes every generation, whatever the entry names.
        _ = try c.local.put(e.objectKey, bytes: [3])
        try c.delete("b1")
        clock.advance(days: 8)
        XCTAssertEqual(try c.purge().purged, ["b1"])
        XCTAssertEqual(try c.local.list(prefix: "backups/b1/archive"), [])
        try assertSettled(c)

        // Names a writer never makes are not archives (nor metadata).
        for name in ["archive-g0", "archive-g01", "archive-g", "archive-g18446744073709551616", "archivex"] {
            XCTAssertFalse(BackupCatalog.isArchiveName(Substring(name)), name)
        }
        XCTAssertTrue(BackupCatalog.isArchiveName("archive-g18446744073709551615"))
        XCTAssertNil(BackupCatalog.generation("meta-000000000000000A", prefix: "meta-"))
        XCTAssertNil(BackupCatalog.generation("meta-1", prefix: "meta-"))
        XCTAssertEqual(BackupCatalog.generation("meta-00000000000000ff", prefix: "meta-"), 255)
    }

    func testADeletedBackupsLeftoverIsNeverHealedByScrub() throws {
        let s = Scratch()
        let clock = ManualClock()
        let c = try makeCatalog(s, clock: clock)
        let e = try add(c, "b1")
        try c.delete("b1")
        clock.advance(days: 8)
        try c.purge()
        // A replica that was away during the purge comes back holding the archive.
        _ = try c.local.put(e.objectKey, bytes: [9, 9])
        for i in 1..<3 { unlink(c.local.objectPath(i, e.objectKey)) }
        let scrub = try c.scrub(repair: true)
        XCTAssertEqual(scrub.notRepaired, [e.objectKey])
        XCTAssertEqual(scrub.repaired, 0)
        XCTAssertEqual(try c.local.stat(e.objectKey).replicas, [0], "not re-copied")
        XCTAssertEqual(try c.check().map(\.problem), [.archiveNotPurged])
        XCTAssertEqual(try c.recover().map(\.action), [.removedArchive])
        XCTAssertEqual(try c.local.list(prefix: "backups/b1/archive"), [])
        try assertSettled(c)
        // The current archive of a live backup is still healed.
        let f = try add(c, "b2")
        unlink(c.local.objectPath(2, f.objectKey))
        XCTAssertEqual(try c.scrub(repair: true).repaired, 1)
    }

    // MARK: item 5: stale catalog entries

    func testNewerMetadataWinsOverAStaleCatalogEntry() throws {
        let s = Scratch()
        let clock = ManualClock()
        let c = try makeCatalog(s, clock: clock)
        try add(c, "b1")
        try add(c, "b2")
        // `retention apply` killed after writing b1's metadata, before the catalog write.
        var newer = try c.entry("b1")
        newer.generation += 1
        newer.state = .pendingDeletion
        newer.deleteRequestedMillis = clock.nowMillis()
        _ = try c.local.put(BackupCatalog.metaKey("b1", newer.generation), bytes: try newer.encodeMeta())
        XCTAssertEqual(try c.check().map(\.problem), [.staleEntry])
        // Readers show what the metadata says (a listing said READY before).
        XCTAssertEqual(try c.entry("b1").state, .pendingDeletion)
        XCTAssertEqual(try c.listCurrent().map(\.state), [.pendingDeletion, .ready])
        XCTAssertEqual(try c.listCurrent(CatalogQuery(states: [.ready])).map(\.backupId), ["b2"])
        XCTAssertEqual(try c.list(CatalogQuery(states: [.ready])).map(\.backupId), ["b1", "b2"], "the index itself is behind")
        // The next change of b1 takes the newer metadata first (it failed `alreadyExists` before).
        let tagged = try c.tag("b1", ["k": "v"])
        XCTAssertEqual(tagged.state, .pendingDeletion)
        XCTAssertEqual(tagged.tags, ["k": "v"])
        XCTAssertEqual(tagged.generation, newer.generation + 1)
        XCTAssertEqual(try c.check(), [])
        // fsck takes it too.
        var newer2 = try c.entry("b2")
        newer2.generation += 1
        newer2.tags = ["from": "metadata"]
        _ = try c.local.put(BackupCatalog.metaKey("b2", newer2.generation), bytes: try newer2.encodeMeta())
        XCTAssertEqual(try c.recover().map(\.action), [.adoptedMetadata])
        XCTAssertEqual(try c.entry("b2"), newer2)
        try assertSettled(c)
    }

    func testRetentionSkipsAndReportsOneBadEntry() throws {
        let s = Scratch()
        let clock = ManualClock()
        let c = try makeCatalog(s, clock: clock)
        for id in ["a1", "a2", "a3", "a4"] { try add(c, id); clock.advance(days: 1) }
        try c.setRetention("cluster-a", days: 7)
        clock.advance(days: 30)
        // a2's newer metadata generation is there but does not read.
        let a2 = try c.entry("a2")
        _ = try c.local.put(BackupCatalog.metaKey("a2", a2.generation + 1), bytes: [0x48, 0x53])
        let report = try c.applyRetention()
        XCTAssertEqual(report.expired, ["a1", "a3"])
        XCTAssertEqual(report.failed.map(\.backupId), ["a2"])
        XCTAssertEqual(report.failed.first?.code, .badCatalog)
        XCTAssertTrue(report.failed.first?.message.contains("store reindex") == true, report.failed.first?.message ?? "")
        XCTAssertEqual(try c.entry("a1").state, .pendingDeletion)
        XCTAssertEqual(try c.entry("a4").state, .ready, "the newest stays")
    }

    // MARK: item 8: scrub while committed changes run

    func testScrubDoesNotReportObjectsDeletedOrReplacedWhileItRuns() throws {
        let s = Scratch()
        let c = try makeCatalog(s)
        for i in 0..<6 { try add(c, "b\(i)") }
        let keys = try c.local.list(prefix: "")
        // After each object, delete the next one (as a tag's replaced metadata generation is).
        var deleted: [String] = []
        let report = try c.local.scrub(repair: true, progress: { done, _ in
            guard done < keys.count, done % 2 == 1 else { return }
            _ = try? c.local.delete(keys[done])
            deleted.append(keys[done])
        })
        XCTAssertFalse(deleted.isEmpty)
        XCTAssertEqual(report.missing, 0, "\(report.findings)")
        XCTAssertEqual(report.unrecoverable, 0)
        XCTAssertEqual(report.corrupt, 0)
        XCTAssertEqual(report.objects, keys.count - deleted.count)
        XCTAssertEqual(try c.local.list(prefix: "").filter { deleted.contains($0) }, [], "nothing resurrected")
        // Real damage is still found under the lock.
        let victim = try c.local.list(prefix: "backups/").first { $0.hasSuffix("/archive") }!
        unlink(c.local.objectPath(1, victim))
        let damaged = try c.local.scrub()
        XCTAssertEqual(damaged.missing, 1)
    }

    // MARK: item 13: generations

    func testGenerationsAtTheLimitAreRefusedWithoutOverflow() throws {
        let s = Scratch()
        let c = try makeCatalog(s)
        var e = try add(c, "b1")
        let generation = e.generation
        // A metadata object with generation 2^64 − 1 (valid checksum record) is refused by readers.
        e.generation = UInt64.max
        let bytes = try e.encodeMeta()
        XCTAssertThrowsError(try BackupEntry.parseMeta(bytes))
        _ = try c.local.put(BackupCatalog.metaKey("b1", UInt64.max), bytes: bytes)
        let report = try c.reindex()
        XCTAssertEqual(report.unreadable, [BackupCatalog.metaKey("b1", UInt64.max)])
        XCTAssertEqual(try c.entry("b1").generation, generation)
        _ = try c.local.delete(BackupCatalog.metaKey("b1", UInt64.max))

        // A key generation that differs from the object's own field is refused.
        var wrong = try c.entry("b1")
        wrong.generation = 5
        wrong.tags = ["forged": "1"]
        _ = try c.local.put(BackupCatalog.metaKey("b1", 9), bytes: try wrong.encodeMeta())
        let r2 = try c.reindex()
        XCTAssertEqual(r2.unreadable, [BackupCatalog.metaKey("b1", 9)])
        XCTAssertEqual(try c.entry("b1").tags, [:])
        XCTAssertEqual(try c.check().map(\.problem), [.staleEntry])
        _ = try c.local.delete(BackupCatalog.metaKey("b1", 9))

        // The last generation a writer makes: every change is refused, none traps.
        var last = try c.entry("b1")
        last.generation = BackupEntry.maxGeneration
        try c.mutate { $0.entries["b1"] = last }
        XCTAssertStoreError(.limitExceeded, try c.tag("b1", ["k": "v"]))
        XCTAssertStoreError(.limitExceeded, try c.delete("b1"))
        XCTAssertEqual(try c.applyRetention().failed, [])
        XCTAssertEqual(BackupCatalog.archiveKey("b1", generation: last.generation + 1), "backups/b1/archive-g18446744073709551615")

        // Policies likewise; and a catalog whose write count has no successor.
        let policy = RetentionPolicy(clusterId: "cluster-a", days: 30, generation: UInt64.max)
        XCTAssertThrowsError(try RetentionPolicy.parseObject(try policy.encodeObject()))
        _ = try c.local.put(BackupCatalog.policyKey("cluster-a", 3), bytes: try RetentionPolicy(clusterId: "cluster-a", days: 30, generation: 4).encodeObject())
        XCTAssertEqual(try c.reindex().unreadable, [BackupCatalog.policyKey("cluster-a", 3)])
        var snapshot = try c.load()
        snapshot.writeCount = UInt64.max
        XCTAssertThrowsError(try CatalogSnapshot.parse(try snapshot.encode()))
        snapshot.writeCount = UInt64.max - 1
        XCTAssertEqual(try CatalogSnapshot.parse(try snapshot.encode()).writeCount, UInt64.max - 1)
    }

    // MARK: item 7: init

    func testInitOverAStoreIsAlreadyInitialized() throws {
        let s = Scratch()
        try LocalObjectStore.create(at: s.path + "/store")
        XCTAssertStoreError(.alreadyInitialized, try LocalObjectStore.create(at: s.path + "/store"))
    }
}
