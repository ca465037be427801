// The chunks a reader has checked, lent to the replica check that runs beside it (issue 17).
//
// A verification streams one replica through `LocalObjectReader`, which hashes every chunk
// against the record, while `verifyReplicasBesideRead` checks the other replicas on another
// thread. Without this, that check hashed one more replica (88 MB of SHA-256 for a 256 MiB
// payload) to learn what the reader already knows. With it, a replica chunk whose bytes equal
// the reader's checked bytes is good without hashing: the checked bytes hash to the chunk digest
// (the rule every chunk check and `verifyChunksTogether` already rest on). A chunk whose bytes
// differ is hashed, as before. The lent chunks count only against the record the reader checked
// them with: a check that finds another reference record (the replicas changed between the two
// opens) does not use them.
//
// The feed never makes the reader wait: it keeps the last `capacity` chunks, and a chunk the
// check did not take in time (or one the reader never reached) is hashed by the check itself.
// The check waits for chunk c only while the reader is still open and has not passed c.

import Foundation

public final class VerifiedChunkFeed: @unchecked Sendable {
    private let condition = NSCondition()
    private var chunks: [Int: [UInt8]] = [:]
    private var highest = -1
    private var closed = false
    private let capacity: Int
    /// The record the lent chunks were checked against (the reader's; set before its first read).
    var recordBytes: [UInt8]? {
        get { condition.lock(); defer { condition.unlock() }; return record }
        set { condition.lock(); record = newValue; condition.unlock() }
    }
    private var record: [UInt8]?

    public init(capacity: Int = 4) {
        self.capacity = max(1, capacity)
    }

    /// Whether the lent chunks were checked against this record.
    func lends(for record: [UInt8]) -> Bool { recordBytes == record }

    /// Reader side: chunk `index` matched its digest; these are its bytes (shared, not copied).
    func offer(_ index: Int, _ bytes: [UInt8]) {
        condition.lock()
        defer { condition.unlock() }
        guard !closed else { return }
        chunks[index] = bytes
        highest = max(highest, index)
        if chunks.count > capacity, let oldest = chunks.keys.min() { chunks[oldest] = nil }
        condition.broadcast()
    }

    /// No more chunks will come (the reader finished, failed or was abandoned); those offered
    /// stay for the check to take. Idempotent.
    public func close() {
        condition.lock()
        defer { condition.unlock() }
        closed = true
        condition.broadcast()
    }

    /// Check side: the checked bytes of chunk `index`, waiting while the reader may still offer
    /// them; nil when it will not (dropped for lack of room, never reached, or closed). Chunks
    /// before `index` are released: the check goes forward only.
    func take(_ index: Int) -> [UInt8]? {
        condition.lock()
        defer { condition.unlock() }
        while !closed && highest < index { condition.wait() }
        for k in chunks.keys where k < index { chunks[k] = nil }
        return chunks.removeValue(forKey: index)
    }
}
