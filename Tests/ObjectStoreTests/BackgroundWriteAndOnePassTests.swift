import Foundation
import XCTest
import BackupCrypto
@testable import ObjectStore

/// Issue 17: replica writes and digests on their own queues, and one SHA-256 pass per replica
/// (the object digest once per record). The findings and the put's outcome must be exactly
/// those of the one-thread, two-pass code.
final class BackgroundWriteAndOnePassTests: XCTestCase {
    let mib = 1 << 20

    func makeStore(_ s: Scratch, faults: FaultHook? = nil) throws -> LocalObjectStore {
        try LocalObjectStore.create(at: s.path + "/store")
        return try LocalObjectStore(root: s.path + "/store", faults: faults)
    }

    /// A write that fails on one replica after some chunks were queued: that replica is reported
    /// (same OS error), the others hold the object, no temp is left.
    func testAWriteFailingMidStreamDropsOnlyThatReplica() throws {
        let s = Scratch()
        let count = Counter()
        let store = try makeStore(s, faults: { op, replica, _ in
            op == .write && replica == 1 && count.next() >= 3 ? EIO : nil
        })
        let data = pattern(6 * mib + 777, seed: 11)
        let report = try store.put("big", bytes: data)
        XCTAssertEqual(report.written, [0, 2])
        XCTAssertEqual(report.failed.map(\.replica), [1])
        XCTAssertEqual(report.failed.first?.osError, "EIO")
        XCTAssertEqual(try readAll(try store.get("big")), data)
        XCTAssertTrue(tempFiles(under: s.path + "/store").isEmpty)
    }

    /// A writer dropped after several queued chunks, without commit or abort: nothing is
    /// published and its temps are gone once it is released.
    func testADroppedWriterWithQueuedChunksLeavesNothing() throws {
        let s = Scratch()
        let store = try makeStore(s)
        do {
            let w = try store.makeWriter("dropped")
            for i in 0..<5 { try w.write(pattern(mib + 3, seed: UInt64(i))) }
        }
        XCTAssertEqual(try store.list(), [])
        XCTAssertTrue(tempFiles(under: s.path + "/store").isEmpty)
    }

    /// The record's object digest is checked once; when replica 0 cannot tell (a damaged
    /// chunk), the others answer for themselves: an inconsistent record is still found in
    /// every replica whose chunks match it.
    func testAnInconsistentRecordIsFoundWhenReplicaZeroHasABadChunk() throws {
        let s = Scratch()
        let store = try makeStore(s)
        let data = pattern(2 * mib + 5000, seed: 3)
        _ = try store.put("k", bytes: data)
        let onDisk = [UInt8](try Data(contentsOf: URL(fileURLWithPath: store.objectPath(0, "k"))))
        let good = try ObjectRecord.parse(Array(onDisk[data.count..<(onDisk.count - 8)]))
        let forged = ObjectRecord(key: "k", size: good.size, createdMillis: good.createdMillis, chunkSize: good.chunkSize,
                                  chunkDigests: good.chunkDigests, objectDigest: [UInt8](repeating: 0, count: 32))
        let file = data + (try forged.encodeWithFooter())
        for i in 0..<3 { try Data(file).write(to: URL(fileURLWithPath: store.objectPath(i, "k"))) }
        flipByte(store.objectPath(0, "k"), at: mib + 10)
        let found = store.verifyReplicas("k")
        XCTAssertEqual(found.map(\.problem), [.chunkMismatch, .digestMismatch, .digestMismatch])
        XCTAssertEqual(found.map(\.replica), [0, 1, 2])
        XCTAssertThrowsError(try readAll(try store.get("k"))) { XCTAssertEqual(($0 as? StoreError)?.code, .unrecoverable) }
    }

    /// Once a record is known consistent, a read still checks every chunk: a chunk damaged
    /// after the check is found, and the read fails over to a good replica.
    func testAReadAfterAVerifyStillChecksEveryChunk() throws {
        let s = Scratch()
        let store = try makeStore(s)
        let data = pattern(3 * mib + 1, seed: 5)
        _ = try store.put("k", bytes: data)
        XCTAssertEqual(store.verifyReplicas("k"), [])
        flipByte(store.objectPath(0, "k"), at: 2 * mib + 7)
        let r = try store.get("k", readRepair: false) as! LocalObjectReader
        XCTAssertEqual(try readAll(r), data)
        XCTAssertEqual(r.findings.map(\.problem), [.chunkMismatch])
        XCTAssertEqual(r.findings.map(\.replica), [0])
        XCTAssertEqual(store.verifyReplicas("k").map(\.replica), [0])
    }

    /// The check that runs beside a read (issue 17): every replica but the one the reader
    /// streams, chunks only, while the reader streams; the reader names its own replica's
    /// damage, so together they report what `verifyReplicas` reports, each replica hashed once.
    func testTheCheckBesideAReadSkipsTheStreamedReplicaAndTheReaderCoversIt() throws {
        let s = Scratch()
        let store = try makeStore(s)
        let data = pattern(3 * mib + 1, seed: 6)
        _ = try store.put("k", bytes: data)
        XCTAssertTrue(store.verifiesReplicasBesideRead)
        flipByte(store.objectPath(0, "k"), at: mib + 3)
        flipByte(store.objectPath(2, "k"), at: 2 * mib + 3)
        let r = try store.get("k", readRepair: false) as! LocalObjectReader
        XCTAssertEqual(r.streamingReplica, 0)
        let beside = DispatchQueue.global()
        let group = DispatchGroup()
        let box = Box()
        box.store = store
        beside.async(group: group) { box.findings = box.store!.verifyReplicasBesideRead("k", skipping: 0, verified: nil) }
        XCTAssertEqual(try readAll(r), data)
        group.wait()
        XCTAssertEqual(box.findings.map(\.replica), [2], "replica 0 is the reader's")
        XCTAssertEqual(box.findings.map(\.problem), [.chunkMismatch])
        XCTAssertEqual(r.findings.filter { $0.replica == 0 }.map(\.chunk), [1])
        let all = (box.findings + r.findings.filter { $0.replica == 0 }).sorted { $0.replica < $1.replica }
        XCTAssertEqual(all.map(\.replica), store.verifyReplicas("k").map(\.replica))
    }

    /// The side-by-side chunk check (equal chunks hashed once) finds exactly what checking each
    /// replica on its own finds: damage in one replica, the same damage in two (equal bad bytes
    /// share the bad verdict), damage at different chunks, and a read error.
    func testTheSideBySideCheckFindsWhatEachReplicaAloneFinds() throws {
        let cases: [(name: String, damage: (LocalObjectStore) -> Void, readError: Int?)] = [
            ("none", { _ in }, nil),
            ("one replica", { flipByte($0.objectPath(1, "k"), at: 2 * self.mib + 9) }, nil),
            ("same bytes in two", { st in for r in [1, 2] { flipByte(st.objectPath(r, "k"), at: self.mib + 4) } }, nil),
            ("different chunks", { st in
                flipByte(st.objectPath(0, "k"), at: 5)
                flipByte(st.objectPath(2, "k"), at: 3 * self.mib + 1)
            }, nil),
            ("all three at one chunk, two ways", { st in
                for r in [0, 1, 2] { flipByte(st.objectPath(r, "k"), at: self.mib + 100 + (r == 2 ? 1 : 0)) }
            }, nil),
            ("a read error", { _ in }, 1),
        ]
        for (name, damage, readError) in cases {
            let s = Scratch()
            let failing = readError
            let store = try makeStore(s, faults: { op, replica, _ in op == .read && replica == failing ? EIO : nil })
            _ = try store.put("k", bytes: pattern(3 * mib + 300, seed: 12))
            damage(store)
            let set = store.openReplicas("k")
            let ref = try XCTUnwrap(set.reference, name)
            let together = store.verifyChunksTogether(set.good, against: ref.record)
            let alone = set.good.compactMap { store.verify($0, against: ref.record, objectDigest: false) }
            XCTAssertEqual(together, alone, name)
            let expected = ["none": 0, "one replica": 1, "same bytes in two": 2, "different chunks": 2, "all three at one chunk, two ways": 3]
            if let n = expected[name] {
                XCTAssertEqual(together.count, n, name)
                XCTAssertTrue(together.allSatisfy { $0.problem == .chunkMismatch }, name)
            } else {
                XCTAssertEqual((set.findings + together).filter { $0.replica == 1 }.map(\.osError), ["EIO"], name)
            }
        }
    }

    /// With the reader lending its checked chunks (`VerifiedChunkFeed`), the check beside the
    /// read finds exactly what it finds hashing every chunk itself: no damage, damage in a checked
    /// replica, damage in the streamed replica (the reader fails over, so the lent chunk comes
    /// from another replica), the same damage in two replicas, and a feed of one slot that drops
    /// chunks the check then hashes itself.
    func testTheCheckBesideAReadFindsTheSameWithTheReadersChunks() throws {
        let cases: [(name: String, flips: [(replica: Int, at: Int)], capacity: Int)] = [
            ("none", [], 4),
            ("checked replica", [(2, 2)], 4),
            ("streamed replica", [(0, 1)], 4),
            ("same bytes in two", [(1, 3), (2, 3)], 4),
            ("one slot", [(1, 0), (2, 3)], 1),
        ]
        for (name, flips, capacity) in cases {
            let s = Scratch()
            let store = try makeStore(s)
            let data = pattern(4 * mib + 5, seed: 21)
            _ = try store.put("k", bytes: data)
            for f in flips { flipByte(store.objectPath(f.replica, "k"), at: f.at * mib + 17) }
            let expected = store.verifyReplicas("k").filter { $0.replica != 0 }

            let r = try store.get("k", readRepair: false) as! LocalObjectReader
            let feed = VerifiedChunkFeed(capacity: capacity)
            r.verifiedChunks = feed
            let box = Box()
            box.store = store
            let group = DispatchGroup()
            DispatchQueue.global().async(group: group) {
                box.findings = box.store!.verifyReplicasBesideRead("k", skipping: 0, verified: feed)
            }
            XCTAssertEqual(try readAll(r), data, name)
            group.wait()
            XCTAssertEqual(box.findings, expected, name)
        }
    }

    /// A 3 MiB object whose replica 1 is damaged in chunk 1 and replica 2 in chunk 2; its replica
    /// set, reference, and the damaged bytes of replica 1's chunk 1.
    private func storeWithTwoDamagedReplicas(_ s: Scratch) throws -> (LocalObjectStore, LocalObjectStore.ReplicaSet, ReplicaFile, [UInt8]) {
        let store = try makeStore(s)
        _ = try store.put("k", bytes: pattern(3 * mib, seed: 22))
        flipByte(store.objectPath(1, "k"), at: mib + 9)
        flipByte(store.objectPath(2, "k"), at: 2 * mib + 9)
        let set = store.openReplicas("k")
        let ref = try XCTUnwrap(set.reference)
        let damaged = try set.good.first { $0.replica == 1 }!.readChunk(1)
        return (store, set, ref, damaged)
    }

    /// The check trusts what the feed lends: a chunk lent as checked whose bytes equal a damaged
    /// replica's is taken as good (so the feed is consulted), and a chunk the feed does not have
    /// is hashed. Only `LocalObjectReader` lends, and only chunks that matched their digest.
    func testTheCheckTakesLentChunksAsCheckedAndHashesTheRest() throws {
        let s = Scratch()
        let (store, set, ref, damaged) = try storeWithTwoDamagedReplicas(s)
        let feed = VerifiedChunkFeed()
        feed.offer(1, damaged)        // a lie, to see it used
        feed.close()                  // chunks 0 and 2 never lent: hashed here
        let found = store.verifyChunksTogether(set.good.filter { $0.replica != 0 }, against: ref.record, verified: feed)
        XCTAssertEqual(found.map(\.replica), [2])
        XCTAssertEqual(found.map(\.chunk), [2])
    }

    /// The lent chunks count only against the record the reader checked them with: when the
    /// check's reference record is another (the replicas changed between the two opens), it
    /// hashes every chunk itself. (A chunk lent as checked but equal to a damaged replica's shows
    /// which way the check went.)
    func testLentChunksCountOnlyForTheRecordTheyWereCheckedWith() throws {
        let s = Scratch()
        let (store, _, ref, damaged) = try storeWithTwoDamagedReplicas(s)
        for (record, expected) in [(Array(ref.recordBytes.reversed()), [1, 2]), (ref.recordBytes, [2])] {
            let feed = VerifiedChunkFeed()
            feed.recordBytes = record
            feed.offer(1, damaged)
            feed.close()
            let found = store.verifyReplicasBesideRead("k", skipping: 0, verified: feed)
            XCTAssertEqual(found.map(\.replica), expected)
        }
    }

    /// A reader that stops early never blocks the check: closing the feed (the reader's end,
    /// failure or release) lets the check hash the chunks it still needs.
    func testAnAbandonedReaderDoesNotHoldTheCheck() throws {
        let s = Scratch()
        let store = try makeStore(s)
        _ = try store.put("k", bytes: pattern(3 * mib + 1, seed: 23))
        flipByte(store.objectPath(2, "k"), at: 3 * mib)
        let feed = VerifiedChunkFeed()
        do {
            let r = try store.get("k", readRepair: false) as! LocalObjectReader
            r.verifiedChunks = feed
            _ = try r.read()            // chunk 0 only, then the reader goes
        }
        let found = store.verifyReplicasBesideRead("k", skipping: 0, verified: feed)
        XCTAssertEqual(found.map(\.replica), [2])
        XCTAssertEqual(found.map(\.chunk), [3])
    }

    func testSameBytesComparesContentAndLength() {
        XCTAssertTrue(LocalObjectStore.sameBytes([], []))
        XCTAssertTrue(LocalObjectStore.sameBytes([1, 2, 3], [1, 2, 3]))
        XCTAssertFalse(LocalObjectStore.sameBytes([1, 2, 3], [1, 2, 4]))
        XCTAssertFalse(LocalObjectStore.sameBytes([1, 2], [1, 2, 3]))
    }
}

private final class Box: @unchecked Sendable {
    var store: LocalObjectStore?
    var findings: [ReplicaFinding] = []
}

private final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    func next() -> Int { lock.lock(); defer { lock.unlock() }; n += 1; return n - 1 }
}
