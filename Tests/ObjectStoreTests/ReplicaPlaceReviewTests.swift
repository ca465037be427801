#if canImport(Glibc)
import Glibc
#endif
import Foundation
import XCTest
@testable import ObjectStore

/// Review findings on the local store: a directory or a symbolic link in a replica file's place
/// (findings 1 and 5), a put whose directory fsync fails after its link (finding 2), two
/// spellings of one replica directory at init (finding 6).
final class ReplicaPlaceReviewTests: XCTestCase {
    private func makeStore(_ s: Scratch, faults: FaultHook? = nil) throws -> LocalObjectStore {
        try LocalObjectStore.create(at: s.path + "/store")
        return try LocalObjectStore(root: s.path + "/store", faults: faults)
    }

    private func makeCatalog(_ s: Scratch, root: String? = nil, clock: ManualClock = ManualClock(),
                             faults: FaultHook? = nil) throws -> BackupCatalog {
        let root = root ?? s.path + "/store"
        try LocalObjectStore.create(at: root)
        return try BackupCatalog(store: try LocalObjectStore(root: root, clock: clock, faults: faults))
    }

    private func add(_ c: BackupCatalog, _ id: String) throws -> BackupEntry {
        try c.add(NewBackup(backupId: id, clusterId: "cluster-a", hsmId: "hsm-1", manufacturer: "sim"),
                  archive: BytesSource(pattern(3000, seed: 4))).entry
    }

    /// Replaces a replica file with a non-empty directory tree (a file, a subdirectory, and a
    /// link to a file outside, which the cleanup must not follow).
    private func plantDirectory(_ path: String, outside: String) throws {
        try FileManager.default.removeItem(atPath: path)
        try FileManager.default.createDirectory(atPath: path + "/sub/deeper", withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: path + "/sub/deeper/f", contents: Data([1, 2, 3]))
        FileManager.default.createFile(atPath: outside, contents: Data([9]))
        XCTAssertEqual(symlink(outside, path + "/sub/link"), 0)
    }

    private func isRegularFile(_ path: String) -> Bool {
        var st = Glibc.stat()
        return lstat(path, &st) == 0 && st.st_mode & S_IFMT == S_IFREG
    }

    // MARK: finding 1: a directory in a replica file's place

    func testScrubRepairReplacesADirectoryInAReplicasPlaceAndFsckRemovesTheTree() throws {
        let s = Scratch()
        let store = try makeStore(s)
        let data = pattern(5000, seed: 1)
        _ = try store.put("obj", bytes: data)
        let outside = s.path + "/outside"
        try plantDirectory(store.objectPath(0, "obj"), outside: outside)
        XCTAssertEqual(store.verifyReplicas("obj").map(\.replica), [0])
        let repaired = try store.scrub(repair: true)
        XCTAssertEqual(repaired.repaired, 1, "\(repaired)")
        XCTAssertTrue(repaired.repairFailures.isEmpty, "\(repaired.repairFailures)")
        XCTAssertTrue(isRegularFile(store.objectPath(0, "obj")))
        XCTAssertTrue(try store.scrub().isClean)
        // The directory went aside into tmp/ under a temp name; fsck removes the whole tree.
        let tmp = store.tempDir(0)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: tmp).count, 1)
        let fsck = store.fsck()
        XCTAssertTrue(fsck.tempsNotRemoved.isEmpty, "\(fsck.tempsNotRemoved)")
        XCTAssertEqual(fsck.tempsRemoved.filter { $0.hasPrefix(tmp + "/") }.count, 1, "\(fsck.tempsRemoved)")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: tmp), [])
        XCTAssertEqual(FileManager.default.contents(atPath: outside), Data([9]), "a link inside is removed, not followed")
        XCTAssertEqual(try store.getAll("obj"), data)
    }

    func testAnUndeletableTreeMovedAsideIsReportedByFsck() throws {
        let s = Scratch()
        let store = try makeStore(s)
        _ = try store.put("obj", bytes: pattern(100))
        try plantDirectory(store.objectPath(0, "obj"), outside: s.path + "/outside")
        // Deeper than the sweep goes: reported, never silently left.
        var deep = store.objectPath(0, "obj")
        for _ in 0...LocalObjectStore.maxTreeDepth { deep += "/d" }
        try FileManager.default.createDirectory(atPath: deep, withIntermediateDirectories: true)
        XCTAssertEqual(try store.scrub(repair: true).repaired, 1)
        let fsck = store.fsck()
        XCTAssertEqual(fsck.tempsNotRemoved.map(\.replica), [0])
        XCTAssertTrue(fsck.tempsNotRemoved.first?.path.hasPrefix(store.tempDir(0) + "/") ?? false)
        XCTAssertTrue(fsck.tempsNotRemoved.first?.detail.contains("deep") ?? false, "\(fsck.tempsNotRemoved)")
    }

    func testDeleteMovesADirectoryInAReplicasPlaceAside() throws {
        let s = Scratch()
        let store = try makeStore(s)
        _ = try store.put("obj", bytes: pattern(100))
        try plantDirectory(store.objectPath(1, "obj"), outside: s.path + "/outside")
        let report = try store.delete("obj")
        XCTAssertEqual(report.removed, [0, 1, 2])
        XCTAssertTrue(report.failed.isEmpty, "\(report.failed)")
        XCTAssertFalse(store.anyReplicaHolds("obj"))
        XCTAssertEqual(try store.list(), [])
        XCTAssertTrue(store.fsck().tempsNotRemoved.isEmpty)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: store.tempDir(1)), [])
    }

    func testPurgeAndRollbackGetPastADirectoryInAReplicasPlace() throws {
        let s = Scratch()
        let clock = ManualClock()
        let c = try makeCatalog(s, clock: clock)
        let e = try add(c, "b1")
        try plantDirectory(c.local.objectPath(1, e.objectKey), outside: s.path + "/outside")
        try c.delete("b1")
        clock.advance(days: 8)
        let purge = try c.purge()
        XCTAssertEqual(purge.purged, ["b1"])
        XCTAssertTrue(purge.failed.isEmpty, "\(purge.failed)")
        XCTAssertEqual(try c.entry("b1").state, .deleted)
        XCTAssertFalse(c.local.anyReplicaHolds(e.objectKey))
        // A killed create whose archive has a directory in one replica's place is rolled back.
        let created = try c.create(NewBackup(backupId: "b2", clusterId: "cluster-a", hsmId: "hsm-1", manufacturer: "sim"))
        _ = try c.store.put(created.objectKey, bytes: pattern(700, seed: 2))
        try plantDirectory(c.local.objectPath(2, created.objectKey), outside: s.path + "/outside2")
        let actions = try c.recover { _ in "not a whole archive" }
        XCTAssertEqual(actions.map(\.action), [.rolledBack], "\(actions)")
        XCTAssertNil(try c.load().entries["b2"])
        XCTAssertTrue(try c.check().isEmpty)
    }

    // MARK: finding 1: exit codes of `store fsck` and `backup purge`

    private func cli(_ home: String, _ args: String...) throws -> (status: Int32, stdout: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: StoreCLITests.binary)
        p.arguments = ["--home", home] + args
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: o, as: UTF8.self))
    }

    func testPurgeExitsZeroPastADirectoryAnd74WhenAReplicaRefuses() throws {
        let s = Scratch()
        let home = s.path + "/home"
        // Deleted ten days ago, so the real clock of the CLI finds the recovery window passed.
        let clock = ManualClock(millis: UInt64(Date().timeIntervalSince1970 * 1000) - 10 * Millis.day)
        let c = try makeCatalog(s, root: home + "/store", clock: clock)
        let e1 = try add(c, "b1")
        _ = try add(c, "b2")
        try plantDirectory(c.local.objectPath(0, e1.objectKey), outside: s.path + "/outside")
        try c.delete("b1")
        let purged = try cli(home, "backup", "purge", "--json")
        XCTAssertEqual(purged.status, 0, purged.stdout)
        XCTAssertEqual(try c.entry("b1").state, .deleted)
        // An unavailable replica refuses the delete: the backup stays pending and purge says so.
        try c.delete("b2")
        let marker = c.local.replicaPaths[2] + "/" + ReplicaMarker.fileName
        let saved = try Data(contentsOf: URL(fileURLWithPath: marker))
        try FileManager.default.removeItem(atPath: marker)
        let refused = try cli(home, "backup", "purge")
        XCTAssertEqual(refused.status, 74, refused.stdout)
        XCTAssertTrue(refused.stdout.contains("not purged: b2 replica 2"), refused.stdout)
        XCTAssertEqual(try c.entry("b2").state, .pendingDeletion)
        try saved.write(to: URL(fileURLWithPath: marker))
        XCTAssertEqual(try cli(home, "backup", "purge").status, 0)
        XCTAssertEqual(try c.entry("b2").state, .deleted)
    }

    func testFsckExits65WhenRecoveryCannotSettleABackupButNotForALiveWriter() throws {
        let s = Scratch()
        let home = s.path + "/home"
        let c = try makeCatalog(s, root: home + "/store")
        // A killed create: its entry stays CREATE_IN_PROGRESS, its archive does not verify.
        let e = try c.create(NewBackup(backupId: "b1", clusterId: "cluster-a", hsmId: "hsm-1", manufacturer: "sim"))
        _ = try c.store.put(e.objectKey, bytes: pattern(700, seed: 3))
        // A live writer: skipped, nothing wrong.
        do {
            let writing = try c.writerLock("b1")
            let busy = try cli(home, "store", "fsck")
            XCTAssertEqual(busy.status, 0, busy.stdout)
            withExtendedLifetime(writing) {}
        }
        // Replica 2 refuses the rollback's delete (its fan-out directory became a file: ENOTDIR).
        let fanOut = c.local.objectDir(2, e.objectKey)
        try FileManager.default.removeItem(atPath: fanOut)
        FileManager.default.createFile(atPath: fanOut, contents: Data())
        let refused = try cli(home, "store", "fsck")
        XCTAssertEqual(refused.status, 65, refused.stdout)
        XCTAssertTrue(refused.stdout.contains("recovered: b1: skipped"), refused.stdout)
        XCTAssertFalse(refused.stdout.contains("catalog and objects agree"), refused.stdout)
        XCTAssertEqual(try c.entry("b1").state, .createInProgress)
        try FileManager.default.removeItem(atPath: fanOut)
        let settled = try cli(home, "store", "fsck")
        XCTAssertEqual(settled.status, 0, settled.stdout)
        XCTAssertNil(try c.load().entries["b1"])
    }

    // MARK: finding 2: a put that misses its quorum after a link

    func testAPutWhoseDirectoryFsyncFailsLeavesNoReplica() throws {
        let s = Scratch()
        let faults = FaultSwitch()
        let store = try makeStore(s, faults: faults.hook)
        faults.set(.create, replica: 2, errno: EROFS)
        faults.set(.sync, replica: 1, errno: EIO, pathContains: "/objects/")
        XCTAssertStoreError(.quorumNotReached, try store.put("obj", bytes: pattern(100))) { e in
            XCTAssertEqual(e.findings.map(\.replica), [1, 2])
            XCTAssertEqual(e.findings.first?.osError, "EIO")
            XCTAssertEqual(e.findings.first?.path, store.objectDir(1, "obj"))
        }
        XCTAssertFalse(store.anyReplicaHolds("obj"), "the replica linked before its directory fsync failed is removed too")
        XCTAssertTrue(tempFiles(under: s.path + "/store").isEmpty)
        faults.clear()
        XCTAssertEqual(try store.put("obj", bytes: pattern(100)).written, [0, 1, 2])
    }

    func testAFailedMetadataPutDoesNotComeBackAtRecovery() throws {
        let s = Scratch()
        let faults = FaultSwitch()
        let c = try makeCatalog(s, faults: faults.hook)
        _ = try add(c, "b1")
        faults.set(.create, replica: 2, errno: EROFS)
        faults.set(.sync, replica: 1, errno: EIO, pathContains: "/objects/")
        XCTAssertStoreError(.quorumNotReached, try c.delete("b1"))
        faults.clear()
        XCTAssertEqual(try c.entry("b1").state, .ready)
        let actions = try c.recover()
        XCTAssertFalse(actions.contains { $0.action == .adoptedMetadata }, "\(actions)")
        XCTAssertEqual(try c.entry("b1").state, .ready)
        XCTAssertTrue(try c.check().isEmpty)
    }

    // MARK: finding 5: a symbolic link in a replica file's place

    func testASymlinkInAReplicasPlaceIsABadReplicaAndRepairReplacesIt() throws {
        let s = Scratch()
        let store = try makeStore(s)
        let data = pattern(5000, seed: 5)
        _ = try store.put("obj", bytes: data)
        let zero = store.objectPath(0, "obj"), one = store.objectPath(1, "obj")
        try FileManager.default.removeItem(atPath: zero)
        XCTAssertEqual(symlink(one, zero), 0)
        let findings = store.verifyReplicas("obj")
        XCTAssertEqual(findings.map(\.replica), [0])
        XCTAssertEqual(findings.first?.problem, .badRecord)
        XCTAssertEqual(findings.first?.path, zero)
        XCTAssertTrue(findings.first?.detail.contains("symbolic link") ?? false, "\(findings)")
        XCTAssertEqual(try store.stat("obj").replicas, [1, 2], "the link is not a copy of its own")
        XCTAssertEqual(try store.scrub(repair: true).repaired, 1)
        XCTAssertTrue(isRegularFile(zero))
        XCTAssertTrue(isRegularFile(one))
        XCTAssertTrue(try store.scrub().isClean)
        XCTAssertEqual(try store.getAll("obj"), data)
    }

    // MARK: finding 6: two spellings of one replica directory

    func testTwoSpellingsOfOneReplicaDirectoryAreRefusedAndNothingIsLeft() throws {
        let s = Scratch()
        let d = s.path + "/d", e = s.path + "/e"
        // Neither exists yet: init makes them, finds the two spellings of d, and takes back what it made.
        XCTAssertStoreError(.invalidArgument, try LocalObjectStore.create(at: s.path + "/store", replicas: [d, d + "/", e])) { err in
            XCTAssertTrue(err.reason.contains(d) && err.reason.contains(d + "/"), err.reason)
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: d))
        XCTAssertFalse(FileManager.default.fileExists(atPath: e))
        XCTAssertFalse(FileManager.default.fileExists(atPath: s.path + "/store/" + StoreConfig.fileName))
        // Existing ones (a relative spelling too): refused before anything is written in them.
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: s.path + "/store/r0", withIntermediateDirectories: true)
        XCTAssertStoreError(.invalidArgument, try LocalObjectStore.create(at: s.path + "/store", replicas: [d, d + "/", e]))
        XCTAssertStoreError(.invalidArgument, try LocalObjectStore.create(at: s.path + "/store", replicas: ["r0", "./r0", "r1"]))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: d), [])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: s.path + "/store/r0"), [])
        XCTAssertFalse(FileManager.default.fileExists(atPath: e))
        XCTAssertFalse(FileManager.default.fileExists(atPath: s.path + "/store/r1"))
        // Distinct directories still make a store.
        let store = try LocalObjectStore.create(at: s.path + "/store", replicas: [d, e, "r0"])
        XCTAssertEqual((0..<3).compactMap { store.replicaStatus($0) }.count, 0)
    }
}
