import Foundation
import XCTest
import Durability
@testable import ObjectStore

/// Issue 17: a replica's queued chunks go to the disk with O_DIRECT where the file system
/// takes it, through the page cache where it does not, and the lane syncs every 8 MiB behind.
/// Whatever the path, the file holds exactly the bytes appended.
final class DirectWriteTests: XCTestCase {
    let mib = 1 << 20

    /// Whether the scratch directory's file system accepts O_DIRECT at all.
    func directIOWorks(in dir: String) -> Bool {
        let probe = dir + "/.probe"
        let fd = open(probe, O_WRONLY | O_CREAT | O_CLOEXEC, 0o600)
        defer { close(fd); unlink(probe) }
        return fd >= 0 && AtomicFile.setDirectIO(fd: fd, true) == nil
    }

    func makeWriter(_ s: Scratch, name: String = "obj") throws -> ReplicaWriter {
        let dir = s.path + "/objects"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return try ReplicaWriter(replica: 0, tempDir: s.path, stripe: "aa", dir: dir, fileName: name, faults: nil)
    }

    /// Full chunks (direct where possible), a drain, then an unaligned tail and a record-sized
    /// piece through the page cache: the published file is the concatenation, byte for byte.
    /// Twenty chunks cross the 8 MiB sync-behind step twice.
    func testAlignedChunksThenATailPublishTheSameBytes() throws {
        let s = Scratch()
        let w = try makeWriter(s)
        var expected: [UInt8] = []
        for i in 0..<20 {
            let chunk = pattern(mib, seed: UInt64(i + 1))
            expected += chunk
            try w.appendInBackground(chunk)
        }
        try w.drainBackground()
        let tail = pattern(777, seed: 99), record = pattern(300, seed: 98)
        try w.append(tail)
        try w.append(record)
        expected += tail + record
        try w.sync()
        try w.publish(replacing: false)
        XCTAssertEqual(w.wroteDirect, ReplicaWriter.directIOEnabled && directIOWorks(in: s.path),
                       "direct I/O is used exactly where the file system takes it")
        XCTAssertEqual(FileManager.default.contents(atPath: w.finalPath).map { [UInt8]($0) }, expected)
    }

    /// An unaligned queued piece first: the whole file goes through the page cache, and still
    /// holds every byte in order.
    func testAnUnalignedFirstChunkWritesEverythingBuffered() throws {
        let s = Scratch()
        let w = try makeWriter(s)
        var expected: [UInt8] = []
        for (i, size) in [mib + 5, mib, mib, 4096].enumerated() {
            let chunk = pattern(size, seed: UInt64(40 + i))
            expected += chunk
            try w.appendInBackground(chunk)
        }
        try w.drainBackground()
        try w.sync()
        try w.publish(replacing: false)
        XCTAssertFalse(w.wroteDirect)
        XCTAssertEqual(FileManager.default.contents(atPath: w.finalPath).map { [UInt8]($0) }, expected)
    }

    /// Direct chunks, then an unaligned one mid-stream: the writer leaves direct I/O for good
    /// at that chunk (the next aligned chunk is at an unaligned offset) and loses nothing.
    func testAnUnalignedChunkMidStreamSwitchesToBufferedForTheRest() throws {
        let s = Scratch()
        let w = try makeWriter(s)
        var expected: [UInt8] = []
        for (i, size) in [mib, mib, 12_345, mib, mib].enumerated() {
            let chunk = pattern(size, seed: UInt64(60 + i))
            expected += chunk
            try w.appendInBackground(chunk)
        }
        try w.drainBackground()
        try w.append([1, 2, 3])
        expected += [1, 2, 3]
        try w.sync()
        try w.publish(replacing: false)
        XCTAssertEqual(w.wroteDirect, ReplicaWriter.directIOEnabled && directIOWorks(in: s.path))
        XCTAssertEqual(FileManager.default.contents(atPath: w.finalPath).map { [UInt8]($0) }, expected)
    }

    /// A writer aborted with direct chunks queued leaves no temp and no object.
    func testAnAbortedDirectWriterLeavesNothing() throws {
        let s = Scratch()
        let w = try makeWriter(s)
        for i in 0..<6 { try w.appendInBackground(pattern(mib, seed: UInt64(80 + i))) }
        w.abort()
        XCTAssertFalse(FileManager.default.fileExists(atPath: w.tempPath))
        XCTAssertFalse(FileManager.default.fileExists(atPath: w.finalPath))
    }

    /// Through the store: a multi-chunk put reads back whole from every replica alone, and the
    /// replica files are identical (the same bytes whichever write path each took).
    func testAStorePutReadsBackFromEveryReplica() throws {
        let s = Scratch()
        try LocalObjectStore.create(at: s.path + "/store")
        let store = try LocalObjectStore(root: s.path + "/store")
        let data = pattern(17 * mib + 4321, seed: 5)
        let report = try store.put("big", bytes: data)
        XCTAssertEqual(report.written, [0, 1, 2])
        let files = (0..<3).map { FileManager.default.contents(atPath: store.objectPath($0, "big")) }
        XCTAssertNotNil(files[0])
        XCTAssertEqual(files[0], files[1])
        XCTAssertEqual(files[0], files[2])
        XCTAssertEqual(try readAll(try store.get("big")), data)
        XCTAssertTrue(try store.scrub().isClean)
    }

    /// A direct write refused mid-stream (EINVAL: another alignment; EOPNOTSUPP: the flag was
    /// taken but direct writes are not done) sends that chunk and the rest through the page
    /// cache: every byte lands once, in order.
    func testADirectWriteRefusedMidStreamFallsBackWithoutLosingBytes() throws {
        for (errnoValue, refusedAt) in [(EINVAL, 3), (EOPNOTSUPP, 1)] {
            let s = Scratch()
            let w = try makeWriter(s)
            var calls = 0
            w.laneFaultsForTests = { op in
                guard op == "direct write" else { return nil }
                calls += 1
                return calls == refusedAt ? errnoValue : nil
            }
            var expected: [UInt8] = []
            for i in 0..<6 {
                let chunk = pattern(mib, seed: UInt64(100 + i))
                expected += chunk
                try w.appendInBackground(chunk)
            }
            try w.drainBackground()
            try w.append([9, 9])
            expected += [9, 9]
            try w.sync()
            try w.publish(replacing: false)
            let direct = ReplicaWriter.directIOEnabled && directIOWorks(in: s.path)
            XCTAssertEqual(w.wroteDirect, direct && refusedAt > 1, "errno \(errnoValue)")
            XCTAssertEqual(calls, direct ? refusedAt : 0, "no direct write after the refusal")
            XCTAssertEqual(FileManager.default.contents(atPath: w.finalPath).map { [UInt8]($0) }, expected)
        }
    }

    /// A real error from a direct write (EIO) or from the lane's sync behind fails that replica:
    /// the drain reports it with the call and errno, and abort leaves no temp.
    func testAFailingDirectWriteOrSyncBehindIsReported() throws {
        for op in ["direct write", "fdatasync"] {
            let s = Scratch()
            if op == "direct write" && !(ReplicaWriter.directIOEnabled && directIOWorks(in: s.path)) { continue }
            let w = try makeWriter(s)
            w.laneFaultsForTests = { $0 == op ? EIO : nil }
            XCTAssertThrowsError(try {
                for i in 0..<12 { try w.appendInBackground(pattern(mib, seed: UInt64(200 + i))) }
                try w.drainBackground()
            }()) { e in
                let finding = (e as? ReplicaFailure)?.finding
                XCTAssertEqual(finding?.osError, "EIO", op)
                XCTAssertTrue(finding?.detail.hasPrefix(op == "fdatasync" ? "fdatasync" : "write") ?? false, "\(String(describing: finding))")
            }
            w.abort()
            XCTAssertFalse(FileManager.default.fileExists(atPath: w.tempPath))
            XCTAssertFalse(FileManager.default.fileExists(atPath: w.finalPath))
        }
    }

    /// `HSMBACKUP_DIRECT_IO` values that switch it off; anything else (or nothing) leaves it on.
    func testTheSwitchsValues() {
        for off in ["0", "off", "OFF", "no", "false"] { XCTAssertFalse(ReplicaWriter.directIOSetting(off), off) }
        for on in [nil, "1", "on", "yes", ""] { XCTAssertTrue(ReplicaWriter.directIOSetting(on), on ?? "unset") }
    }
}
