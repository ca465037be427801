// The chunks a reader has checked, lent to the replica check that runs beside it (issue 17).
//
// A verification streams one replica through `LocalObjectReader`, which hashes every chunk
// against the record, while `verifyReplicasBesideRead` checks the other replicas on another
// thread. Without this, that check hashed one more replica (88 MB of SHA-256 for a 256 MiB
// payload) to learn what the reader already knows. With it, a replica chunk whose bytes equal
// the reader's checked bytes is good, and one whose bytes differ is not: the checked bytes hash
// to the chunk digest, so different bytes with that digest would be a SHA-256 collision (the
// rule every chunk check and `verifyChunksTogether` already rest on).
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

    public init(capacity: Int = 4) {
        self.capacity = max(1, capacity)
    }

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
