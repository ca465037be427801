// A verified, fail-over stream over the replicas of one S3 object (spec/FORMAT.md 5.6, 5.11).
// Through a transport that streams (an `http://` endpoint), one GET whose chunks are checked as
// they arrive (`S3ChunkStream.swift`); otherwise ranged GETs of `readWindowChunks(replica)` record chunks, each chunk checked against the reference
// record before it is released; `readsInFlight` windows are fetched ahead, in parallel, while
// the caller consumes this one, and handed out in order (memory: at most that many windows plus
// the current one, whatever the object's size); a replica that fails or disagrees is dropped,
// the windows fetched ahead from it are discarded and the window is fetched again from the next.
// At the end the object digest is checked and, with read-repair, bad replicas are rewritten.
import BackupCrypto
import Dispatch
import Foundation
import ObjectStore

public final class S3ObjectReader: ReplicaReadReporting, @unchecked Sendable {
    public let info: ObjectInfo
    public private(set) var findings: [ReplicaFinding]
    public private(set) var repaired: [Int] = []
    public private(set) var repairFailures: [ReplicaFinding] = []

    let store: S3ObjectStore
    let key: String
    let record: ObjectRecord
    private var candidates: [Int]
    private let readRepair: Bool
    private var chunk = 0
    /// The current window's chunks, verified (slices of the response body: no copy until handed out).
    private var pieces: [Data] = []
    private let hasher = SHA256Hasher()
    private var finished = false
    private var failure: StoreError?
    /// The windows being fetched ahead, in chunk order: first chunk, replica and result.
    private var ahead: [(first: Int, replica: Int, box: LockedBox<Result<[Data], ReplicaFindingError>?>, group: DispatchGroup)] = []
    /// The first chunk not yet asked for by `ahead`.
    private var nextFetch = 0
    /// The streamed read in progress (`S3ChunkStream.swift`), when the replica's transport streams.
    private var stream: (replica: Int, queue: ChunkQueue)?

    init(store: S3ObjectStore, key: String, readRepair: Bool) throws {
        self.store = store
        self.key = key
        self.readRepair = readRepair
        let set = store.openRecords(key)
        guard let ref = set.reference else { throw store.noGoodReplica(key, set.findings) }
        record = ref.record
        candidates = set.good.map(\.replica)
        findings = set.findings
        info = store.info(ref.record, replicas: candidates)
    }

    deinit { stream?.queue.cancel() }

    public func read() throws -> [UInt8]? {
        if let failure { throw failure }
        if finished { return nil }
        if !pieces.isEmpty { return next() }
        if chunk == record.chunkDigests.count {
            stream?.queue.cancel()
            stream = nil
            try finish()
            return nil
        }
        while let current = candidates.first {
            if store.streamsReads(current) {
                if let s = stream, s.replica != current { s.queue.cancel(); stream = nil }
                let queue = stream?.queue ?? store.startStream(current, record: record, firstChunk: chunk)
                stream = (current, queue)
                switch queue.pop() {
                case .chunk(let c):
                    hasher.update(c)
                    chunk += 1
                    return c
                case .failed(let f):
                    findings.append(f.finding)
                case .end:
                    findings.append(ReplicaFinding(replica: current, path: store.replicaLocation(current) + "/" + key, problem: .sizeMismatch,
                                                   chunk: chunk, detail: "the read ended at chunk \(chunk) of \(record.chunkDigests.count)"))
                }
                // This replica failed or disagrees: the read goes on from the next, at this chunk.
                queue.cancel()
                stream = nil
                candidates.removeFirst()
                continue
            }
            if let a = ahead.first, a.first != chunk || a.replica != current { ahead.removeAll() }
            if ahead.isEmpty { nextFetch = chunk }
            prefetch(current, limit: max(1, S3ObjectStore.readsInFlight))
            let a = ahead.removeFirst()
            a.group.wait()
            switch a.box.value! {
            case .success(let window):
                pieces = window
                prefetch(current, limit: S3ObjectStore.readsInFlight)
                return next()
            case .failure(let f):
                findings.append(f.finding)
                candidates.removeFirst()
                // What was fetched ahead from it is discarded (the fetches still running drop
                // their result when they end).
                ahead.removeAll()
            }
        }
        let e = StoreError(.unrecoverable, key: key, "chunk \(chunk): no replica holds a good copy",
                           findings: findings.sorted { $0.replica < $1.replica })
        failure = e
        throw e
    }

    private func next() -> [UInt8] {
        let p = [UInt8](pieces.removeFirst())
        hasher.update(p)
        chunk += 1
        return p
    }

    /// Starts fetches from `replica` until `limit` windows are on their way.
    private func prefetch(_ replica: Int, limit: Int) {
        let total = record.chunkDigests.count
        while ahead.count < limit, nextFetch < total {
            let first = nextFetch
            nextFetch = min(first + store.readWindowChunks(replica), total)
            let box = LockedBox<Result<[Data], ReplicaFindingError>?>(nil)
            let group = DispatchGroup()
            let store = self.store, record = self.record
            DispatchQueue.global().async(group: group) { box.mutate { $0 = store.fetchWindow(replica, record: record, firstChunk: first) } }
            ahead.append((first, replica, box, group))
        }
    }

    private func finish() throws {
        finished = true
        guard hasher.finalize() == record.objectDigest else {
            let e = StoreError(.unrecoverable, key: key, "object digest does not match its record", findings: findings)
            failure = e
            throw e
        }
        if record.size == 0 {
            // Nothing was fetched: check that the object itself exists where its record does.
            for i in candidates where (try? store.send(i, "HEAD", key)) == nil {
                findings.append(ReplicaFinding(replica: i, path: store.replicaLocation(i) + "/" + key, problem: .missing, detail: "no object for its record"))
            }
        }
        guard readRepair else { return }
        let bad = Set(findings.filter { $0.problem != .replicaUnavailable }.map(\.replica))
        for target in bad.sorted() {
            do {
                if try store.repair(key, target: target) { repaired.append(target) }
            } catch {
                repairFailures.append(store.replicaFinding(target, key, error))
            }
        }
    }
}

extension S3ObjectStore {
    /// Chunks `firstChunk...` (up to a window) of replica `i`, each checked against `record`.
    /// The chunks are slices of the response body (no copy).
    func fetchWindow(_ i: Int, record: ObjectRecord, firstChunk: Int) -> Result<[Data], ReplicaFindingError> {
        let last = min(firstChunk + readWindowChunks(i), record.chunkDigests.count) - 1
        let start = UInt64(firstChunk) * UInt64(record.chunkSize)
        let end = UInt64(last) * UInt64(record.chunkSize) + UInt64(record.chunkLength(last)) - 1
        let path = replicaLocation(i) + "/" + record.key
        let resp: S3Response
        do {
            // At most the whole object: a server that ignores Range answers it all (a 200, below).
            resp = try send(i, "GET", record.key, headers: [("Range", "bytes=\(start)-\(end)"), ("Accept-Encoding", "identity")],
                            maximumBytes: Int(clamping: record.size))
        } catch let e as S3ServiceError where e.status == 416 {
            return .failure(ReplicaFindingError(ReplicaFinding(replica: i, path: path, problem: .sizeMismatch, chunk: firstChunk,
                                                               detail: "the object is shorter than its record's \(record.size) bytes")))
        } catch {
            return .failure(ReplicaFindingError(replicaFinding(i, record.key, error)))
        }
        let body = resp.payload
        var at = body.startIndex
        if resp.status == 206 {
            // Another range than the one asked for is a failed attempt, not a finding about the object.
            let range: (first: UInt64, last: UInt64, total: UInt64)
            do {
                range = try Self.contentRange(resp.header("content-range"), path: path, first: start, last: end)
            } catch {
                return .failure(ReplicaFindingError(replicaFinding(i, record.key, error)))
            }
            if range.total != record.size {
                return .failure(ReplicaFindingError(ReplicaFinding(replica: i, path: path, problem: .sizeMismatch,
                                                                   detail: "the object has \(range.total) bytes, its record says \(record.size)")))
            }
        } else {
            // A 200: the whole object (a server that ignores Range).
            guard UInt64(body.count) == record.size else {
                return .failure(ReplicaFindingError(ReplicaFinding(replica: i, path: path, problem: .sizeMismatch,
                                                                   detail: "the object has \(body.count) bytes, its record says \(record.size)")))
            }
            at += Int(start)
        }
        var out: [Data] = []
        for c in firstChunk...last {
            let n = record.chunkLength(c)
            guard body.endIndex - at >= n else {
                return .failure(ReplicaFindingError(ReplicaFinding(replica: i, path: path, problem: .sizeMismatch, chunk: c,
                                                                   detail: "short read at chunk \(c)")))
            }
            let bytes = body[at..<at + n]
            at += n
            let h = SHA256Hasher()
            bytes.withUnsafeBytes { h.update($0) }
            guard h.finalize() == record.chunkDigests[c] else {
                return .failure(ReplicaFindingError(ReplicaFinding(replica: i, path: path, problem: .chunkMismatch, chunk: c,
                                                                   detail: "chunk \(c) does not match its digest")))
            }
            out.append(bytes)
        }
        return .success(out)
    }

    /// Streams every chunk of replica `i` through its digest; nil when all is well.
    func verify(_ i: Int, against record: ObjectRecord) -> ReplicaFinding? {
        if record.size == 0 {
            do { try send(i, "HEAD", record.key); return nil } catch { return replicaFinding(i, record.key, error) }
        }
        let hasher = SHA256Hasher()
        if streamsReads(i) {
            // One GET; each chunk checked and hashed as it arrives, nothing kept.
            let assembler = ChunkAssembler(record: record, replica: i, path: replicaLocation(i) + "/" + record.key, firstChunk: 0) { hasher.update($0) }
            do { try streamObject(i, record: record, firstChunk: 0, assembler: assembler) } catch let f as ReplicaFindingError {
                return f.finding
            } catch {
                return replicaFinding(i, record.key, error)
            }
            guard hasher.finalize() == record.objectDigest else {
                return ReplicaFinding(replica: i, path: replicaLocation(i) + "/" + record.key, problem: .digestMismatch, detail: "object digest does not match")
            }
            return nil
        }
        var c = 0
        while c < record.chunkDigests.count {
            switch fetchWindow(i, record: record, firstChunk: c) {
            case .success(let window):
                for p in window { p.withUnsafeBytes { hasher.update($0) } }
                c += window.count
            case .failure(let f): return f.finding
            }
        }
        guard hasher.finalize() == record.objectDigest else {
            return ReplicaFinding(replica: i, path: replicaLocation(i) + "/" + record.key, problem: .digestMismatch, detail: "object digest does not match")
        }
        return nil
    }

    /// Rewrites replica `target` of `key` from good replicas, every chunk verified against the
    /// reference record; the record is copied as it is (same creation time). False when there was
    /// nothing to do (the target is good, or no source).
    func repair(_ key: String, target: Int) throws -> Bool {
        if let problem = replicaStatus(target) { throw ReplicaFindingError(problem) }
        let set = openRecords(key)
        guard let ref = set.reference else { return false }
        if set.good.contains(where: { $0.replica == target }), verify(target, against: ref.record) == nil { return false }
        var sources = set.good.map(\.replica).filter { $0 != target }
        guard !sources.isEmpty else { return false }
        let w = try S3ObjectWriter(store: self, key: key, targets: [target], overwrite: true, createdMillis: ref.record.createdMillis)
        var c = 0
        while c < ref.record.chunkDigests.count {
            guard let s = sources.first else { w.abort(); return false }
            switch fetchWindow(s, record: ref.record, firstChunk: c) {
            case .success(let window):
                for p in window { try w.write([UInt8](p)) }
                c += window.count
            case .failure:
                sources.removeFirst()
            }
        }
        let report = try w.commit()
        return report.written == [target]
    }
}
