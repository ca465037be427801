import Foundation
import XCTest
import BackupCrypto
import ByteCoding
@testable import ObjectStore

/// Issue 13 item 12: the replica rules a second implementation had to guess (spec §5.1, §5.3,
/// §5.6), each pinned to its code.
final class ReplicaRecordRuleTests: XCTestCase {
    private func makeStore(_ s: Scratch, _ name: String = "store", clock: StoreClock = SystemClock()) throws -> LocalObjectStore {
        try LocalObjectStore.create(at: s.path + "/" + name)
        return try LocalObjectStore(root: s.path + "/" + name, clock: clock)
    }

    /// §5.1: the fan-out directory is SHA-256(key)[0] as two lowercase hex digits.
    func testTheFanOutIsTwoLowercaseHexDigits() throws {
        let s = Scratch()
        let store = try makeStore(s)
        for key in ["a", "backups/x/archive", "k-0", "zz"] {
            let digits = Hex.encode(SHA256Hasher.hash(Array(key.utf8)).prefix(1))
            XCTAssertEqual(digits, digits.lowercased())
            XCTAssertTrue(store.objectPath(0, key).hasSuffix("/objects/\(digits)/" + key.replacingOccurrences(of: "/", with: "~")), key)
        }
    }

    /// §5.3: a file whose record names another key is `conflict`; §5.6: records are compared as
    /// bytes, so one that differs only in its `created` time is outvoted as a `conflict` too.
    func testAnotherKeysFileAndAByteDifferentRecordAreConflicts() throws {
        let s = Scratch()
        let store = try makeStore(s)
        _ = try store.put("k", bytes: pattern(3000, seed: 1))
        _ = try store.put("other", bytes: pattern(3000, seed: 1))
        try FileManager.default.removeItem(atPath: store.objectPath(2, "k"))
        try FileManager.default.copyItem(atPath: store.objectPath(2, "other"), toPath: store.objectPath(2, "k"))
        let r = try store.get("k") as! LocalObjectReader
        XCTAssertEqual(try readAll(r), pattern(3000, seed: 1))
        XCTAssertEqual(r.findings.map(\.problem), [.conflict])
        XCTAssertEqual(r.findings.first?.replica, 2)

        let clock = ManualClock()
        clock.advance(days: 1)
        let later = try makeStore(s, "later", clock: clock)
        _ = try later.put("k", bytes: pattern(3000, seed: 1))          // same bytes, another created time
        try FileManager.default.removeItem(atPath: store.objectPath(1, "k"))
        try FileManager.default.copyItem(atPath: later.objectPath(1, "k"), toPath: store.objectPath(1, "k"))
        // (the read above repaired replica 2, so replica 1 alone disagrees now)
        XCTAssertEqual(store.verifyReplicas("k").map(\.problem), [.conflict])
        XCTAssertEqual(store.verifyReplicas("k").map(\.replica), [1])
    }

    /// §5.3: every chunk matches its digest, the object digest does not (a record made
    /// inconsistent on purpose, in every replica): `digestMismatch`, and the read is unrecoverable.
    func testChunksThatDoNotMakeTheObjectDigestAreADigestMismatch() throws {
        let s = Scratch()
        let store = try makeStore(s)
        let data = pattern(5000, seed: 3)
        _ = try store.put("k", bytes: data)
        let onDisk = [UInt8](try Data(contentsOf: URL(fileURLWithPath: store.objectPath(0, "k"))))
        let good = try ObjectRecord.parse(Array(onDisk[data.count..<(onDisk.count - 8)]))
        let forged = ObjectRecord(key: "k", size: good.size, createdMillis: good.createdMillis, chunkSize: good.chunkSize,
                                  chunkDigests: good.chunkDigests, objectDigest: [UInt8](repeating: 0, count: 32))
        let file = data + (try forged.encodeWithFooter())
        for i in 0..<3 { try Data(file).write(to: URL(fileURLWithPath: store.objectPath(i, "k"))) }
        XCTAssertEqual(store.verifyReplicas("k").map(\.problem), [.digestMismatch, .digestMismatch, .digestMismatch])
        XCTAssertThrowsError(try readAll(try store.get("k"))) { XCTAssertEqual(($0 as? StoreError)?.code, .unrecoverable) }
    }
}
