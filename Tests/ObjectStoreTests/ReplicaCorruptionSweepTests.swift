import Foundation
import XCTest
@testable import ObjectStore

/// Store-layer corruption sweeps (issue 8; spec/FORMAT.md sections 5.3, 5.6, 5.7) over one small
/// object's replica file, data and checksum record and footer alike: every truncation length,
/// and every byte flipped with 0xFF (all its bits) and one single-bit mask (0x01 at even offsets,
/// 0x80 at odd ones), as `HSMBackupTests.CorruptionSweepTests` does for archives.
/// - In one replica (rotating over replicas 0, 1, 2): scrub reports exactly that replica of the
///   object, by index and path, as corrupt; a read returns the right bytes; a damage the read
///   meets (any record, the data of the replica it streams) is named in its findings and
///   read-repair rewrites that replica to the identical bytes; damaged data of a replica the
///   read did not stream is repaired by `scrub --repair` to the identical bytes.
/// - In every replica: a read fails `unrecoverable` naming the object and every replica, and
///   releases no byte; scrub counts the object unrecoverable and names every replica.
/// No case may crash. 618 damaged files (206 truncations, 412 flips), each in one replica and in
/// all: 1,236 cases, a few seconds in debug.
final class ReplicaCorruptionSweepTests: XCTestCase {
    static let key = "k/sweep"
    static let data = pattern(64, seed: 8)

    /// The sweep's directory: on /dev/shm when it is there (tmpfs: the ~2,000 read-repairs'
    /// fsyncs cost nothing, so the run time does not depend on the disk), else the temp dir.
    final class SweepDirectory {
        let path: String
        init() {
            var isDir: ObjCBool = false
            let base = FileManager.default.fileExists(atPath: "/dev/shm", isDirectory: &isDir) && isDir.boolValue
                && access("/dev/shm", W_OK) == 0 ? "/dev/shm/" : NSTemporaryDirectory()
            path = base + "objectstore-sweep-" + UUID().uuidString
            try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        }
        deinit { try? FileManager.default.removeItem(atPath: path) }
    }

    struct Fixture {
        let scratch: SweepDirectory
        let store: LocalObjectStore
        let pristine: [UInt8]
        var paths: [String] { (0..<3).map { store.objectPath($0, ReplicaCorruptionSweepTests.key) } }

        func reset() throws {
            for p in paths { try Data(pristine).write(to: URL(fileURLWithPath: p)) }
        }
    }

    func makeFixture() throws -> Fixture {
        let s = SweepDirectory()
        try LocalObjectStore.create(at: s.path + "/store")
        let store = try LocalObjectStore(root: s.path + "/store")
        _ = try store.put(Self.key, bytes: Self.data)
        let pristine = [UInt8](try Data(contentsOf: URL(fileURLWithPath: store.objectPath(0, Self.key))))
        for i in 1..<3 {
            XCTAssertEqual([UInt8](try Data(contentsOf: URL(fileURLWithPath: store.objectPath(i, Self.key)))), pristine)
        }
        return Fixture(scratch: s, store: store, pristine: pristine)
    }

    /// Every damaged version of the replica file, with a label.
    static func damages(of file: [UInt8]) -> [(String, [UInt8])] {
        var out: [(String, [UInt8])] = (0..<file.count).map { ("truncated to \($0)", Array(file[0..<$0])) }
        for i in file.indices {
            for mask in [0xFF, i % 2 == 0 ? 0x01 : 0x80] as [UInt8] {
                var d = file
                d[i] ^= mask
                out.append(("byte \(i) ^ 0x\(String(mask, radix: 16))", d))
            }
        }
        return out
    }

    static let corruption: Set<ReplicaFinding.Problem> = [.badRecord, .sizeMismatch, .chunkMismatch, .digestMismatch]

    func testDamageInOneReplicaIsReportedByNameAndReadsRepairIt() throws {
        let f = try makeFixture()
        let cases = Self.damages(of: f.pristine)
        XCTAssertEqual(cases.count, 3 * f.pristine.count)
        var readRepaired = 0
        for (n, (label, damaged)) in cases.enumerated() {
            let r = n % 3
            let path = f.paths[r]
            try f.reset()
            try Data(damaged).write(to: URL(fileURLWithPath: path))

            let scrub = try f.store.scrub()
            XCTAssertEqual(scrub.corrupt, 1, "\(label), replica \(r): \(scrub.findings)")
            XCTAssertEqual(scrub.unrecoverable, 0, label)
            XCTAssertEqual(scrub.findings.map(\.key), [Self.key], label)
            XCTAssertEqual(scrub.findings.map(\.finding.replica), [r], label)
            XCTAssertEqual(scrub.findings.map(\.finding.path), [path], label)
            XCTAssertTrue(scrub.findings.allSatisfy { Self.corruption.contains($0.finding.problem) }, "\(label): \(scrub.findings)")

            let reader = try f.store.get(Self.key) as! LocalObjectReader
            XCTAssertTrue(try readAll(reader) == Self.data, label)
            if reader.findings.isEmpty {
                // A read checks every replica's record but streams the data of the first good
                // replica only (5.6): damaged data of a replica it did not need goes unseen by
                // the read and is scrub's to repair.
                XCTAssertNotEqual(r, 0, "\(label): the replica the read streamed was damaged unnoticed")
                XCTAssertEqual(reader.repaired, [], label)
                let repair = try f.store.scrub(repair: true)
                XCTAssertEqual(repair.repaired, 1, label)
                XCTAssertEqual(repair.findings.map(\.finding.replica), [r], label)
            } else {
                XCTAssertEqual(reader.findings.map(\.replica), [r], "\(label): \(reader.findings)")
                XCTAssertEqual(reader.findings.map(\.path), [path], label)
                XCTAssertEqual(reader.repaired, [r], label)
                XCTAssertEqual(reader.repairFailures, [], label)
            }
            // The bad file was replaced as a whole by the good bytes (spec 5.4, 5.6, 5.7).
            XCTAssertTrue([UInt8](try Data(contentsOf: URL(fileURLWithPath: path))) == f.pristine, label)
            readRepaired += reader.repaired.count
        }
        // Damage to any record, and to replica 0's data, was met (and repaired) by the read.
        XCTAssertGreaterThan(readRepaired, cases.count / 2)
        XCTAssertTrue(try f.store.scrub().isClean)
    }

    func testTheSameDamageInEveryReplicaIsATypedErrorAndNeverWrongBytes() throws {
        let f = try makeFixture()
        for (label, damaged) in Self.damages(of: f.pristine) {
            for p in f.paths { try Data(damaged).write(to: URL(fileURLWithPath: p)) }

            var released: [UInt8] = []
            do {
                let reader = try f.store.get(Self.key)
                while let piece = try reader.read() { released += piece }
                XCTFail("\(label): the read succeeded with \(released.count) bytes")
            } catch let e as StoreError {
                XCTAssertEqual(e.code, .unrecoverable, "\(label): \(e)")
                XCTAssertEqual(e.key, Self.key, label)
                XCTAssertEqual(Set(e.findings.map(\.replica)), [0, 1, 2], "\(label): \(e)")
                XCTAssertEqual(Set(e.findings.map(\.path)), Set(f.paths), label)
                XCTAssertTrue(e.findings.allSatisfy { Self.corruption.contains($0.problem) }, "\(label): \(e)")
            } catch {
                XCTFail("\(label): untyped error \(error)")
            }
            XCTAssertEqual(released, [], "\(label): bytes released from a damaged object")

            let scrub = try f.store.scrub(repair: true)
            XCTAssertEqual(scrub.unrecoverable, 1, label)
            XCTAssertEqual(scrub.unrecoverableKeys, [Self.key], label)
            XCTAssertEqual(scrub.repaired, 0, label)
            XCTAssertEqual(scrub.findings.map(\.finding.replica), [0, 1, 2], "\(label): \(scrub.findings)")
            XCTAssertTrue(scrub.findings.allSatisfy { $0.key == Self.key && Self.corruption.contains($0.finding.problem) }, label)
            // Nothing was "repaired" from a bad copy.
            for p in f.paths { XCTAssertTrue([UInt8](try Data(contentsOf: URL(fileURLWithPath: p))) == damaged, label) }
        }
    }
}
