// Streamed reads of one S3 object (spec/FORMAT.md 5.6, 5.11), used when the transport streams
// response bodies (`S3ResponseStreaming.streamsResponses`: the socket transport of an `http://`
// endpoint). One GET from the first chunk needed to the end of the object; its body is cut into
// record chunks as it arrives, each checked against the reference record before it goes on. The
// reader runs the GET on a thread of its own and takes chunks from a queue of
// `streamQueueChunks`: when the queue is full the thread stops reading the socket, so memory is
// the queue plus one chunk being assembled, whatever the object's size, and the server sends no
// faster than the caller consumes. A server like moto reads the whole object for every GET, so
// one GET instead of one per window also costs it least.
import AWSCore
import BackupCrypto
import Foundation
import ObjectStore

/// An `S3Transport` that can hand a 2xx body to `S3Request.responseSink` as it arrives, in
/// bounded pieces whatever its size (a transport that is not one never streams).
protocol S3ResponseStreaming {
    func streamsResponses(_ endpoint: S3Endpoint) -> Bool
}

extension AWSCoreS3Transport: S3ResponseStreaming {
    func streamsResponses(_ endpoint: S3Endpoint) -> Bool {
        guard let url = URL(string: endpoint.url ?? "https://s3.\(endpoint.region).amazonaws.com") else { return false }
        return http.streamsResponseBodies(for: url)
    }
}

/// Cuts a body into the record chunks `firstChunk...`, checks each against `record` and hands
/// each good one to `deliver` (which may block). Throws `ReplicaFindingError` for a body that
/// does not match the record (size, a chunk's digest).
final class ChunkAssembler: HTTPBodySink, @unchecked Sendable {
    let record: ObjectRecord
    let replica: Int
    let path: String
    /// The first chunk of the range being received (moves on when a read resumes).
    private(set) var firstChunk: Int
    private let deliver: ([UInt8]) throws -> Void
    /// Whether the reader is gone (`ChunkQueue.isCancelled`): nothing more is fetched.
    let isCancelled: () -> Bool
    /// The chunk being assembled.
    private(set) var nextChunk: Int
    private var current: [UInt8] = []
    /// Bytes of the range taken into chunks so far (a retried attempt skips them).
    private var taken = 0
    private var skip = 0

    init(record: ObjectRecord, replica: Int, path: String, firstChunk: Int, isCancelled: @escaping () -> Bool = { false },
         deliver: @escaping ([UInt8]) throws -> Void) {
        self.isCancelled = isCancelled
        self.record = record
        self.replica = replica
        self.path = path
        self.firstChunk = firstChunk
        self.deliver = deliver
        nextChunk = firstChunk
    }

    var rangeStart: UInt64 { UInt64(firstChunk) * UInt64(record.chunkSize) }

    private func mismatch(_ problem: ReplicaFinding.Problem, chunk: Int? = nil, _ detail: String) -> ReplicaFindingError {
        ReplicaFindingError(ReplicaFinding(replica: replica, path: path, problem: problem, chunk: chunk, detail: detail))
    }

    func begin(status: Int, headers: HTTPHeaders) throws {
        if isCancelled() { throw ChunkQueue.Cancelled() }
        if status == 206 {
            // Another total is the object's (a finding); another range is the answer's (a failed
            // attempt, as a transport error: the replica is not blamed for it).
            let range = try S3ObjectStore.contentRange(headers["content-range"], path: path, first: rangeStart, last: record.size - 1)
            if range.total != record.size {
                throw mismatch(.sizeMismatch, "the object has \(range.total) bytes, its record says \(record.size)")
            }
            skip = taken
        } else {
            // A 200: the whole object (a server that ignores Range).
            if let n = headers["content-length"].flatMap({ UInt64($0) }), n != record.size {
                throw mismatch(.sizeMismatch, "the object has \(n) bytes, its record says \(record.size)")
            }
            skip = Int(rangeStart) + taken
        }
    }

    func receive(_ bytes: UnsafeRawBufferPointer) throws {
        var at = min(skip, bytes.count)
        skip -= at
        while at < bytes.count {
            guard nextChunk < record.chunkDigests.count else {
                throw mismatch(.sizeMismatch, "the object is longer than its record's \(record.size) bytes")
            }
            let length = record.chunkLength(nextChunk)
            if current.isEmpty { current.reserveCapacity(length) }
            let n = min(length - current.count, bytes.count - at)
            current.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[at..<at + n]))
            at += n
            taken += n
            if current.count == length {
                guard SHA256Hasher.hash(current) == record.chunkDigests[nextChunk] else {
                    throw mismatch(.chunkMismatch, chunk: nextChunk, "chunk \(nextChunk) does not match its digest")
                }
                let chunk = current
                current = []
                nextChunk += 1
                try deliver(chunk)
            }
        }
    }

    /// The next GET starts at `nextChunk` (after a transfer died midway): the partial chunk is
    /// dropped and the range begins there.
    func resume() {
        current = []
        firstChunk = nextChunk
        taken = 0
        skip = 0
    }

    /// After the body: every chunk of the range must have come.
    func finish() throws {
        guard nextChunk == record.chunkDigests.count else {
            throw mismatch(.sizeMismatch, chunk: nextChunk, "short read at chunk \(nextChunk): the object is shorter than its record's \(record.size) bytes")
        }
    }
}

/// A bounded queue from one producer thread to the reader.
final class ChunkQueue: @unchecked Sendable {
    enum Item {
        case chunk([UInt8])
        case failed(ReplicaFindingError)
        case end
    }

    struct Cancelled: Error {}

    private let condition = NSCondition()
    /// At most `capacity` chunks, then the end or a failure.
    private var items: [Item] = []
    private var cancelled = false
    let capacity: Int

    init(capacity: Int) { self.capacity = max(1, capacity) }

    /// Waits while the queue is full; throws `Cancelled` once the reader is gone.
    func push(_ chunk: [UInt8]) throws {
        condition.lock()
        defer { condition.unlock() }
        while items.count >= capacity && !cancelled { condition.wait() }
        if cancelled { throw Cancelled() }
        items.append(.chunk(chunk))
        condition.broadcast()
    }

    /// The end or a failure: never waits.
    func close(_ item: Item) {
        condition.lock()
        items.append(item)
        condition.broadcast()
        condition.unlock()
    }

    func pop() -> Item {
        condition.lock()
        defer { condition.unlock() }
        while items.isEmpty { condition.wait() }
        let item = items.removeFirst()
        condition.broadcast()
        return item
    }

    /// The reader is gone: the producer fetches nothing more.
    var isCancelled: Bool {
        condition.lock()
        defer { condition.unlock() }
        return cancelled
    }

    func cancel() {
        condition.lock()
        cancelled = true
        items = []
        condition.broadcast()
        condition.unlock()
    }
}

extension S3ObjectStore {
    /// The `bytes first-last/total` of a 206 answer to a GET of `first...last`; throws
    /// `S3TransportError` (a failed attempt, retried) when it is missing, malformed or another
    /// range (the total may differ: that is for the caller to judge).
    static func contentRange(_ value: String?, path: String, first: UInt64, last: UInt64) throws -> (first: UInt64, last: UInt64, total: UInt64) {
        func parse() -> (UInt64, UInt64, UInt64)? {
            guard let v = value, v.hasPrefix("bytes ") else { return nil }
            let parts = v.dropFirst(6).split(separator: "/", omittingEmptySubsequences: false)
            guard parts.count == 2 else { return nil }
            let ends = parts[0].split(separator: "-", omittingEmptySubsequences: false)
            let digits: (Substring) -> UInt64? = { s in s.isEmpty || !s.allSatisfy({ ("0"..."9").contains($0) }) ? nil : UInt64(s) }
            guard ends.count == 2, let a = digits(ends[0]), let b = digits(ends[1]), let n = digits(parts[1]), a <= b else { return nil }
            return (a, b, n)
        }
        guard let (a, b, n) = parse(), a == first, b == last || b == n &- 1 && n <= last else {
            throw S3TransportError(request: "GET \(path) bytes=\(first)-\(last)",
                                   reason: "a 206 answer for another range (Content-Range: \(value ?? "none"))")
        }
        return (a, b, n)
    }

    /// Chunks held in a streamed read's queue (each one record chunk, 1 MiB).
    static let streamQueueChunks = tunable("HSMBACKUP_S3_STREAM_QUEUE_CHUNKS", 4, 1...64)

    /// Whether reads of replica `i` stream (one GET, chunks as they arrive) rather than go by
    /// ranged windows held whole.
    func streamsReads(_ i: Int) -> Bool { (transport as? S3ResponseStreaming)?.streamsResponses(replicas[i].endpoint) ?? false }

    /// A GET of replica `i` from `firstChunk` to the end, through `assembler` (a transport that
    /// does not stream hands the body over whole, and it is fed from that). A transfer that dies
    /// midway (no answer, a 5xx) resumes with a GET from the chunk it had reached, after a
    /// backoff with jitter; `RetryPolicy.default.maximumAttempts` failures in a row without a
    /// new chunk end it. (The client does not retry a streamed GET itself: it would fetch the
    /// whole range again.) Once the reader is gone (`assembler.isCancelled`) it throws
    /// `ChunkQueue.Cancelled` instead of another backoff or GET.
    func streamObject(_ i: Int, record: ObjectRecord, firstChunk: Int, assembler: ChunkAssembler,
                      sleeper: AWSSleeper = ThreadSleeper()) throws {
        let policy = RetryPolicy.default
        var failures = 0
        while true {
            if assembler.isCancelled() { throw ChunkQueue.Cancelled() }
            let from = assembler.nextChunk
            do {
                try streamOnce(i, record: record, assembler: assembler)
                return
            } catch let e where e is S3TransportError || (e as? S3ServiceError).map({ $0.status >= 500 }) == true {
                failures = assembler.nextChunk > from ? 1 : failures + 1
                guard failures < policy.maximumAttempts else { throw e }
                if assembler.isCancelled() { throw ChunkQueue.Cancelled() }
                sleeper.sleep(seconds: policy.delay(afterAttempt: failures))
                assembler.resume()
            }
        }
    }

    private func streamOnce(_ i: Int, record: ObjectRecord, assembler: ChunkAssembler) throws {
        let first = assembler.nextChunk
        let start = UInt64(first) * UInt64(record.chunkSize)
        let resp: S3Response
        do {
            resp = try send(i, "GET", record.key, headers: [("Range", "bytes=\(start)-\(record.size - 1)"), ("Accept-Encoding", "identity")],
                            sink: assembler)
        } catch let e as S3ServiceError where e.status == 416 {
            throw ReplicaFindingError(ReplicaFinding(replica: i, path: assembler.path, problem: .sizeMismatch, chunk: first,
                                                     detail: "the object is shorter than its record's \(record.size) bytes"))
        }
        if !resp.bodyStreamed {
            var h = HTTPHeaders()
            for (k, v) in resp.headers { h.add(k, v) }
            try assembler.begin(status: resp.status, headers: h)
            try resp.payload.withUnsafeBytes { try assembler.receive($0) }
        }
        try assembler.finish()
    }

    /// Starts streaming replica `i` from `firstChunk` into a new queue, on a thread of its own.
    func startStream(_ i: Int, record: ObjectRecord, firstChunk: Int) -> ChunkQueue {
        let queue = ChunkQueue(capacity: Self.streamQueueChunks)
        let path = replicaLocation(i) + "/" + record.key
        let assembler = ChunkAssembler(record: record, replica: i, path: path, firstChunk: firstChunk,
                                       isCancelled: { queue.isCancelled }) { try queue.push($0) }
        Thread.detachNewThread {
            do {
                try self.streamObject(i, record: record, firstChunk: firstChunk, assembler: assembler)
                queue.close(.end)
            } catch is ChunkQueue.Cancelled {
            } catch let f as ReplicaFindingError {
                queue.close(.failed(f))
            } catch {
                queue.close(.failed(ReplicaFindingError(self.replicaFinding(i, record.key, error))))
            }
        }
        return queue
    }
}
