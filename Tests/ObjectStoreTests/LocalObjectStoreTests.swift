import Foundation
import XCTest
import ByteCoding
import BackupCrypto
@testable import ObjectStore

final class LocalObjectStoreTests: XCTestCase {
    let mib = 1 << 20

    func makeStore(_ s: Scratch, replicas: [String]? = nil, quorum: Int? = nil, faults: FaultHook? = nil) throws -> LocalObjectStore {
        try LocalObjectStore.create(at: s.path + "/store", replicas: replicas, writeQuorum: quorum)
        return try LocalObjectStore(root: s.path + "/store", faults: faults)
    }

    func testPutGetStatListDeleteMultiChunk() throws {
        let s = Scratch()
        let store = try makeStore(s)
        let data = pattern(2 * mib + 12345)
        let report = try store.put("backups/b1/archive", bytes: data)
        XCTAssertEqual(report.written, [0, 1, 2])
        XCTAssertTrue(report.failed.isEmpty)
        XCTAssertEqual(report.info.size, UInt64(data.count))
        XCTAssertEqual(report.info.sha256, Hex.encode(SHA256Hasher.hash(data)))
        let r = try store.get("backups/b1/archive")
        XCTAssertEqual(try readAll(r), data)
        XCTAssertEqual(try store.stat("backups/b1/archive").replicas, [0, 1, 2])
        _ = try store.put("backups/b2/archive", bytes: [1, 2, 3])
        _ = try store.put("other", bytes: [])
        XCTAssertEqual(try store.list(prefix: "backups/"), ["backups/b1/archive", "backups/b2/archive"])
        XCTAssertEqual(try store.getAll("other"), [])
        // Each replica file is data || record || footer.
        for i in 0..<3 {
            let path = store.objectPath(i, "backups/b1/archive")
            let rec = try ObjectRecord(key: "backups/b1/archive", size: UInt64(data.count), createdMillis: report.info.createdMillis,
                                       chunkSize: ObjectRecord.defaultChunkSize,
                                       chunkDigests: stride(from: 0, to: data.count, by: mib).map { SHA256Hasher.hash(Array(data[$0..<min($0 + mib, data.count)])) },
                                       objectDigest: SHA256Hasher.hash(data)).encodeWithFooter()
            XCTAssertEqual(fileSize(path), data.count + rec.count)
        }
        let del = try store.delete("backups/b1/archive")
        XCTAssertEqual(del.removed, [0, 1, 2])
        XCTAssertStoreError(.notFound, try store.get("backups/b1/archive"))
        XCTAssertStoreError(.notFound, try store.delete("backups/b1/archive"))
    }

    func testObjectsAreNeverRewritten() throws {
        let s = Scratch()
        let store = try makeStore(s)
        _ = try store.put("k", bytes: [1])
        XCTAssertStoreError(.alreadyExists, try store.put("k", bytes: [2]))
        XCTAssertEqual(try store.getAll("k"), [1])
    }

    func testInvalidKeysAreRefused() throws {
        let s = Scratch()
        let store = try makeStore(s)
        for key in ["", "/a", "a/", "a//b", ".hidden", "a/.b", "a b", "a~b", "ä", String(repeating: "a", count: 201)] {
            XCTAssertStoreError(.invalidKey, try store.put(key, bytes: [1]))
        }
    }

    func testRecordEncodingIsExactAndPrefixesFail() throws {
        let rec = ObjectRecord(key: "a/b", size: 5000, createdMillis: 42, chunkSize: 4096,
                               chunkDigests: [SHA256Hasher.hash([1]), SHA256Hasher.hash([2])], objectDigest: SHA256Hasher.hash([3]))
        let bytes = try rec.encode()
        XCTAssertEqual(try ObjectRecord.parse(bytes), rec)
        XCTAssertEqual(try ObjectRecord.parse(bytes).encode(), bytes)
        for n in 0..<bytes.count {
            XCTAssertThrowsError(try ObjectRecord.parse(Array(bytes[0..<n])))
        }
        XCTAssertThrowsError(try ObjectRecord.parse(bytes + [0])) { e in
            XCTAssertEqual((e as? ByteCodingError)?.code, .trailingBytes)
        }
        for i in [0, 4, 10, bytes.count - 1] {
            var b = bytes
            b[i] ^= 0xFF
            XCTAssertThrowsError(try ObjectRecord.parse(b))
        }
        let conf = try StoreConfig(storeId: Array(repeating: 7, count: 16), writeQuorum: 2, replicas: ["a", "/b", "c"])
        XCTAssertEqual(try StoreConfig.parse(conf.encode()), conf)
        XCTAssertThrowsError(try StoreConfig.parse(conf.encode() + [0]))
        XCTAssertThrowsError(try StoreConfig(storeId: Array(repeating: 7, count: 16), writeQuorum: 4, replicas: ["a", "b", "c"]))
    }

    func testBitRotIsCaughtWhileStreamingAndRepaired() throws {
        let s = Scratch()
        let store = try makeStore(s)
        let data = pattern(3 * mib, seed: 2)
        _ = try store.put("obj", bytes: data)
        flipByte(store.objectPath(0, "obj"), at: mib + 77)   // replica 0, chunk 1
        flipByte(store.objectPath(1, "obj"), at: 2 * mib + 5) // replica 1, chunk 2
        let r = try store.get("obj") as! LocalObjectReader
        XCTAssertEqual(try readAll(r), data)
        XCTAssertEqual(r.findings.map(\.problem), [.chunkMismatch, .chunkMismatch])
        XCTAssertEqual(r.findings.map(\.replica), [0, 1])
        XCTAssertEqual(r.findings.map(\.chunk), [1, 2])
        XCTAssertEqual(r.repaired, [0, 1])
        let after = try store.scrub()
        XCTAssertTrue(after.isClean, "\(after)")
        XCTAssertEqual(after.replicasChecked, 3)
    }

    func testTruncatedAndMissingReplicasAreRepairedOnRead() throws {
        let s = Scratch()
        let store = try makeStore(s)
        let data = pattern(mib + 3, seed: 3)
        _ = try store.put("obj", bytes: data)
        truncateFile(store.objectPath(1, "obj"), to: 1000)
        try FileManager.default.removeItem(atPath: store.objectPath(2, "obj"))
        let r = try store.get("obj") as! LocalObjectReader
        XCTAssertEqual(r.findings.map(\.problem), [.badRecord, .missing])
        XCTAssertEqual(try readAll(r), data)
        XCTAssertEqual(r.repaired, [1, 2])
        XCTAssertEqual(fileSize(store.objectPath(1, "obj")), fileSize(store.objectPath(0, "obj")))
        XCTAssertTrue(try store.scrub().isClean)
    }

    func testTruncatedTailAfterRecordMoveIsSizeMismatch() throws {
        // A file cut inside the data but keeping a valid-looking end cannot happen by truncation;
        // appending bytes after the footer makes the footer unreadable: a bad record.
        let s = Scratch()
        let store = try makeStore(s)
        _ = try store.put("obj", bytes: pattern(5000))
        let h = FileHandle(forWritingAtPath: store.objectPath(0, "obj"))!
        try h.seekToEnd(); try h.write(contentsOf: Data([1, 2, 3])); try h.close()
        store.readRepair = false
        let r = try store.get("obj") as! LocalObjectReader
        XCTAssertEqual(r.findings.map(\.problem), [.badRecord])
        XCTAssertEqual(try readAll(r), pattern(5000))
    }

    func testNoGoodReplicaFailsNamingEachReplica() throws {
        let s = Scratch()
        let store = try makeStore(s)
        let data = pattern(2 * mib, seed: 4)
        _ = try store.put("obj", bytes: data)
        for i in 0..<3 { flipByte(store.objectPath(i, "obj"), at: mib + i) }
        let r = try store.get("obj")
        XCTAssertEqual(try r.read(), Array(data[0..<mib])) // chunk 0 is good everywhere
        XCTAssertStoreError(.unrecoverable, try r.read()) { e in
            XCTAssertEqual(e.findings.map(\.replica), [0, 1, 2])
            XCTAssertTrue(e.findings.allSatisfy { $0.problem == .chunkMismatch && $0.chunk == 1 })
        }
        XCTAssertStoreError(.unrecoverable, try r.read()) // a failed reader stays failed
        let report = try store.scrub(repair: true)
        XCTAssertEqual(report.unrecoverable, 1)
        XCTAssertEqual(report.unrecoverableKeys, ["obj"])
        XCTAssertEqual(report.corrupt, 3)
        XCTAssertEqual(report.repaired, 0)
        // Records damaged everywhere: the error is at open, still naming each replica.
        _ = try store.put("obj2", bytes: data)
        for i in 0..<3 { truncateFile(store.objectPath(i, "obj2"), to: 10) }
        XCTAssertStoreError(.unrecoverable, try store.get("obj2")) { e in
            XCTAssertEqual(e.findings.map(\.problem), [.badRecord, .badRecord, .badRecord])
        }
    }

    func testReplicaDirectoryRemoved() throws {
        let s = Scratch()
        let store = try makeStore(s)
        let old = pattern(3000, seed: 5)
        _ = try store.put("old", bytes: old)
        try FileManager.default.removeItem(atPath: store.replicaPaths[2])
        let report = try store.put("new", bytes: [9, 9])
        XCTAssertEqual(report.written, [0, 1])
        XCTAssertEqual(report.failed.map(\.problem), [.replicaUnavailable])
        XCTAssertEqual(report.failed.map(\.replica), [2])
        XCTAssertEqual(try store.getAll("old"), old)
        let scrub = try store.scrub()
        XCTAssertEqual(scrub.unavailableReplicas.map(\.replica), [2])
        XCTAssertFalse(scrub.isClean)
        let repaired = try store.scrub(repair: true)
        XCTAssertEqual(repaired.recreatedReplicas, [2])
        XCTAssertEqual(repaired.repaired, 2)
        let clean = try store.scrub()
        XCTAssertTrue(clean.isClean, "\(clean)")
        XCTAssertEqual(clean.replicasChecked, 6)
    }

    func testUnwritableReplica() throws {
        let s = Scratch()
        let mount = s.path + "/ro"
        let mounted = s.mountTmpfs(mount, size: "1m")
        print("unwritable replica: \(mounted ? "a read-only tmpfs mount" : "an injected EROFS")")
        let switchy = FaultSwitch()
        let store = try makeStore(s, replicas: ["r0", "r1", mount], faults: switchy.hook)
        if mounted {
            XCTAssertEqual(Shell.run("mount -o remount,ro '\(mount)'"), 0) // root ignores chmod, not a read-only mount
        } else {
            switchy.set(.create, replica: 2, errno: EROFS)
        }
        let data = pattern(4000, seed: 6)
        let report = try store.put("obj", bytes: data)
        XCTAssertEqual(report.written, [0, 1])
        XCTAssertEqual(report.failed.map(\.replica), [2])
        XCTAssertEqual(report.failed.first?.osError, "EROFS")
        XCTAssertEqual(try store.getAll("obj"), data)
        XCTAssertTrue(tempFiles(under: s.path + "/store").isEmpty)
    }

    func testFullReplica() throws {
        let s = Scratch()
        let mount = s.path + "/full"
        let mounted = s.mountTmpfs(mount, size: "1m")
        print("full replica: \(mounted ? "a 1 MiB tmpfs mount" : "an injected ENOSPC")")
        let switchy = FaultSwitch()
        if !mounted { switchy.set(.write, replica: 2, errno: ENOSPC) }
        let store = try makeStore(s, replicas: ["r0", "r1", mount], faults: switchy.hook)
        let data = pattern(2 * mib + 100, seed: 7)
        let report = try store.put("big", bytes: data)
        XCTAssertEqual(report.written, [0, 1])
        XCTAssertEqual(report.failed.map(\.replica), [2])
        XCTAssertEqual(report.failed.first?.osError, "ENOSPC")
        XCTAssertTrue(tempFiles(under: mount).isEmpty, "the aborted temp is removed")
        XCTAssertEqual(try readAll(try store.get("big")), data)
        // Small objects still fit on the full replica's disk after the temp was removed.
        XCTAssertEqual(try store.put("small", bytes: [1]).written, [0, 1, 2])
    }

    func testQuorumNotReachedLeavesNothing() throws {
        let s = Scratch()
        let switchy = FaultSwitch()
        let store = try makeStore(s, faults: switchy.hook)
        switchy.set(.sync, replica: 0, errno: EIO)
        switchy.set(.write, replica: 2, errno: ENOSPC)
        XCTAssertStoreError(.quorumNotReached, try store.put("obj", bytes: pattern(100))) { e in
            XCTAssertEqual(e.findings.map(\.replica), [0, 2])
            XCTAssertEqual(e.findings.map(\.osError), ["EIO", "ENOSPC"])
        }
        XCTAssertEqual(try store.list(), [])
        XCTAssertTrue(tempFiles(under: s.path).isEmpty)
        switchy.clear()
        switchy.set(.publish, replica: 1, errno: EIO)
        switchy.set(.publish, replica: 2, errno: EIO)
        XCTAssertStoreError(.quorumNotReached, try store.put("obj", bytes: pattern(100)))
        XCTAssertEqual(try store.list(), [], "a replica published before the quorum failed is removed")
        switchy.clear()
        XCTAssertEqual(try store.put("obj", bytes: pattern(100)).written, [0, 1, 2])
    }

    func testInjectedReadErrorFailsOver() throws {
        let s = Scratch()
        let switchy = FaultSwitch()
        let store = try makeStore(s, faults: switchy.hook)
        _ = try store.put("obj", bytes: pattern(10_000))
        switchy.set(.read, replica: 0, errno: EIO)
        store.readRepair = false
        let r = try store.get("obj") as! LocalObjectReader
        XCTAssertEqual(try readAll(r), pattern(10_000))
        XCTAssertEqual(r.findings.map(\.osError), ["EIO"])
    }

    func testStaleTempsRemovedOnOpenAndByFsck() throws {
        let s = Scratch()
        let store = try makeStore(s)
        _ = try store.put("obj", bytes: [1, 2, 3])
        let stripe = LocalObjectStore.fanOut("obj")
        let stale = store.tempDir(1) + "/." + stripe + "-obj.tmp-deadbeef"
        _ = FileManager.default.createFile(atPath: stale, contents: Data([1, 2]))
        XCTAssertEqual(store.fsck().tempsRemoved, [stale])
        _ = FileManager.default.createFile(atPath: stale, contents: Data([1, 2]))
        _ = try LocalObjectStore(root: s.path + "/store")
        XCTAssertFalse(FileManager.default.fileExists(atPath: stale), "opening the store removes it")
        // A temp-like file among the objects is swept by fsck only (opening stays cheap).
        let stray = store.objectDir(2, "obj") + "/.obj.tmp-0ddba11"
        _ = FileManager.default.createFile(atPath: stray, contents: Data([1]))
        _ = try LocalObjectStore(root: s.path + "/store")
        XCTAssertTrue(FileManager.default.fileExists(atPath: stray))
        XCTAssertEqual(try store.list(), ["obj"], "temps are never listed")
        XCTAssertEqual(store.fsck().tempsRemoved, [stray])
        // A live writer's temp is left alone: its stripe lock is held.
        let w = try store.makeWriter("obj2")
        try w.write([1])
        XCTAssertEqual(store.fsck().tempsRemoved, [])
        XCTAssertEqual(tempFiles(under: s.path + "/store").count, 3)
        XCTAssertEqual(try w.commit().written, [0, 1, 2])
        XCTAssertEqual(tempFiles(under: s.path + "/store"), [])
    }

    func testScrubCountsEveryFinding() throws {
        let s = Scratch()
        let store = try makeStore(s)
        for i in 0..<5 { _ = try store.put("o\(i)", bytes: pattern(5000 + i, seed: UInt64(i))) }
        flipByte(store.objectPath(0, "o0"), at: 10)
        flipByte(store.objectPath(1, "o1"), at: 5010) // inside the record
        try FileManager.default.removeItem(atPath: store.objectPath(2, "o2"))
        truncateFile(store.objectPath(0, "o3"), to: 4000)
        var seen: [Int] = []
        let report = try store.scrub(progress: { done, total in seen.append(done); XCTAssertEqual(total, 5) })
        XCTAssertEqual(seen, [1, 2, 3, 4, 5])
        XCTAssertEqual(report.objects, 5)
        XCTAssertEqual(report.replicasChecked, 15)
        XCTAssertEqual(report.corrupt, 3)
        XCTAssertEqual(report.missing, 1)
        XCTAssertEqual(report.unrecoverable, 0)
        XCTAssertEqual(report.findings.map(\.key), ["o0", "o1", "o2", "o3"])
        XCTAssertEqual(report.findings.map(\.finding.problem), [.chunkMismatch, .badRecord, .missing, .badRecord])
        let fixed = try store.scrub(repair: true)
        XCTAssertEqual(fixed.repaired, 4)
        XCTAssertTrue(try store.scrub().isClean)
        for i in 0..<5 { XCTAssertEqual(try store.getAll("o\(i)"), pattern(5000 + i, seed: UInt64(i))) }
        // The JSON report is stable and machine-readable.
        let json = try JSONEncoder().encode(fixed)
        XCTAssertNotNil(try JSONSerialization.jsonObject(with: json) as? [String: Any])
    }

    func testForeignReplicaMarkerIsNotUsed() throws {
        let s = Scratch()
        let a = try makeStore(s)
        _ = try a.put("obj", bytes: [1])
        let other = try LocalObjectStore.create(at: s.path + "/other")
        // Swap a disk: replica 1 of the first store now holds the other store's marker.
        try FileManager.default.removeItem(atPath: a.replicaPaths[1] + "/REPLICA")
        try FileManager.default.copyItem(atPath: other.replicaPaths[1] + "/REPLICA", toPath: a.replicaPaths[1] + "/REPLICA")
        let report = try a.put("obj2", bytes: [2])
        XCTAssertEqual(report.failed.map(\.problem), [.replicaUnavailable])
        XCTAssertEqual(try a.scrub(repair: true).recreatedReplicas, [], "a foreign disk is never overwritten")
        XCTAssertStoreError(.alreadyInitialized, try LocalObjectStore.create(at: s.path + "/store"))
        XCTAssertStoreError(.notFound, try LocalObjectStore(root: s.path + "/nowhere"))
    }

    func testStreamingWriter() throws {
        let s = Scratch()
        let store = try makeStore(s)
        let data = pattern(2 * mib + 999, seed: 30)
        let w = try store.makeWriter("streamed")
        var offset = 0
        for n in [1, 7, mib - 8, mib + 5, 986] + [data.count] {
            let end = min(offset + n, data.count)
            try w.write(Array(data[offset..<end]))
            offset = end
        }
        XCTAssertEqual(offset, data.count)
        XCTAssertEqual(try w.commit().info.size, UInt64(data.count))
        XCTAssertStoreError(.invalidState, try w.write([1]))
        XCTAssertEqual(try store.getAll("streamed"), data)

        let aborted = try store.makeWriter("aborted")
        try aborted.write(pattern(1000))
        aborted.abort()
        do {
            let dropped = try store.makeWriter("dropped")
            try dropped.write(pattern(1000))
        }
        XCTAssertEqual(try store.list(), ["streamed"])
        XCTAssertEqual(tempFiles(under: s.path), [])
        // The key is free again after an abort.
        XCTAssertEqual(try store.put("aborted", bytes: [5]).written, [0, 1, 2])
    }

    func testCatalogTempsRemovedOnOpen() throws {
        let s = Scratch()
        let store = try makeStore(s)
        let catalog = try BackupCatalog(store: store)
        let stale = s.path + "/store/catalog/.catalog.bin.tmp-0123"
        _ = FileManager.default.createFile(atPath: stale, contents: Data([1]))
        _ = try BackupCatalog(store: store)
        XCTAssertFalse(FileManager.default.fileExists(atPath: stale))
        XCTAssertEqual(try catalog.list(), [])
    }

    /// The replica file of key "a" = "abc" put at time 0, computed independently from the byte
    /// table of spec section 5.3 (Python: hashlib.sha256 and struct.pack), not by this code.
    func testReplicaFileKnownAnswer() throws {
        let s = Scratch()
        try LocalObjectStore.create(at: s.path + "/store")
        let store = try LocalObjectStore(root: s.path + "/store", clock: ManualClock(millis: 0))
        _ = try store.put("a", bytes: Array("abc".utf8))
        let expected = Hex.decode(
            "61626348534f5201000161000000000000000300000000000000000010000000000001ba7816bf8f01cfea414140de5dae22"
            + "23b00361a396177a9cb410ff61f20015adba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
            + "0549fa2166886e8308bca5f049207b5abcfff1cb080c32433efef45f9335ca190000008048534f45")!
        for i in 0..<3 {
            XCTAssertEqual(try [UInt8](Data(contentsOf: URL(fileURLWithPath: store.objectPath(i, "a")))), expected)
        }
    }

    func testConflictingReplicaIsOutvotedAndRepaired() throws {
        let s = Scratch()
        let a = try makeStore(s)
        let b = try LocalObjectStore.create(at: s.path + "/other")
        _ = try a.put("k", bytes: pattern(3000, seed: 1))
        _ = try b.put("k", bytes: pattern(3000, seed: 2))
        // Replica 2 of store a now holds a valid object for the same key with other bytes.
        try FileManager.default.removeItem(atPath: a.objectPath(2, "k"))
        try FileManager.default.copyItem(atPath: b.objectPath(2, "k"), toPath: a.objectPath(2, "k"))
        let r = try a.get("k") as! LocalObjectReader
        XCTAssertEqual(r.findings.map(\.problem), [.conflict])
        XCTAssertEqual(try readAll(r), pattern(3000, seed: 1))
        XCTAssertEqual(r.repaired, [2])
        XCTAssertTrue(try a.scrub().isClean)
    }

    func testConfigAndMarkerPrefixesFail() throws {
        let conf = try StoreConfig(storeId: Array(repeating: 1, count: 16), writeQuorum: 1, replicas: ["x"]).encode()
        let marker = ReplicaMarker(storeId: Array(repeating: 1, count: 16), index: 0).encode()
        for n in 0..<conf.count { XCTAssertThrowsError(try StoreConfig.parse(Array(conf[0..<n]))) }
        for n in 0..<marker.count { XCTAssertThrowsError(try ReplicaMarker.parse(Array(marker[0..<n]))) }
        XCTAssertEqual(try ReplicaMarker.parse(marker).encode(), marker)
        XCTAssertThrowsError(try ReplicaMarker.parse(marker + [0]))
    }

    func testRepairThatCannotWriteIsReportedNotFatal() throws {
        let s = Scratch()
        let faults = FaultSwitch()
        let store = try makeStore(s, faults: faults.hook)
        let data = pattern(5000, seed: 40)
        _ = try store.put("obj", bytes: data)
        try FileManager.default.removeItem(atPath: store.objectPath(2, "obj"))
        faults.set(.create, replica: 2, errno: ENOSPC)
        let r = try store.get("obj") as! LocalObjectReader
        XCTAssertEqual(try readAll(r), data, "the data is intact")
        XCTAssertEqual(r.repaired, [])
        XCTAssertEqual(r.repairFailures.map(\.replica), [2])
        XCTAssertEqual(r.repairFailures.map(\.osError), ["ENOSPC"])
        let scrub = try store.scrub(repair: true)
        XCTAssertEqual(scrub.missing, 1)
        XCTAssertEqual(scrub.repaired, 0)
        XCTAssertEqual(scrub.repairFailures.map(\.finding.osError), ["ENOSPC"])
        faults.clear()
        XCTAssertEqual(try store.scrub(repair: true).repaired, 1)
        XCTAssertTrue(try store.scrub().isClean)
    }
}
