// Streamed reads (Sources/S3Store/S3ChunkStream.swift): the chunk assembler on its own (cutting,
// checking, what a retried attempt re-delivers, a server that ignores Range), the bounded queue,
// and against moto: a read is one GET through the streaming transport and ranged windows
// through one that is not, both failing over mid-object; a transfer cut midway resumes from the
// chunk it reached and the bytes come out once.
import AWSCore
import BackupCrypto
import Foundation
import ObjectStore
@testable import S3Store
import XCTest

/// Forwards to the real transport, counts the GETs of `key` and says whether bodies stream.
final class CountingTransport: S3Transport, @unchecked Sendable {
    let inner: S3Transport
    let streams: Bool
    let key: String
    private let lock = NSLock()
    private var _gets = 0
    private var _ranges: [String] = []
    private var _bounds: [Int?] = []
    var gets: Int { lock.lock(); defer { lock.unlock() }; return _gets }
    /// The `maximumResponseBytes` of each counted GET.
    var bounds: [Int?] { lock.lock(); defer { lock.unlock() }; return _bounds }
    /// The Range header of each counted GET.
    var ranges: [String] { lock.lock(); defer { lock.unlock() }; return _ranges }

    init(_ inner: S3Transport, key: String, streams: Bool) { self.inner = inner; self.key = key; self.streams = streams }

    func send(_ r: S3Request, endpoint: S3Endpoint) throws -> S3Response {
        if r.method == "GET", r.key.hasSuffix("/" + key), !r.key.contains(".hsmbackup") {
            lock.lock(); _gets += 1; _ranges.append(r.headers.first { $0.0 == "Range" }?.1 ?? ""); _bounds.append(r.maximumResponseBytes); lock.unlock()
        }
        var r = r
        if !streams { r.responseSink = nil }
        return try inner.send(r, endpoint: endpoint)
    }

    func holdsBodiesOnce(_ endpoint: S3Endpoint) -> Bool { streams && inner.holdsBodiesOnce(endpoint) }
}

extension CountingTransport: S3ResponseStreaming {
    func streamsResponses(_ endpoint: S3Endpoint) -> Bool { streams && ((inner as? S3ResponseStreaming)?.streamsResponses(endpoint) ?? false) }
}

/// Answers every GET with no answer (a connection reset), after running `onGet`; counts them.
final class DeadGetTransport: S3Transport, S3ResponseStreaming, @unchecked Sendable {
    private let lock = NSLock()
    private var _gets = 0
    var gets: Int { lock.lock(); defer { lock.unlock() }; return _gets }
    let onGet: @Sendable () -> Void

    init(onGet: @escaping @Sendable () -> Void) { self.onGet = onGet }

    func send(_ r: S3Request, endpoint: S3Endpoint) throws -> S3Response {
        guard r.method == "GET" else { return S3Response(status: 200, headers: [:], body: []) }
        lock.lock(); _gets += 1; lock.unlock()
        onGet()
        throw S3TransportError(request: r.summary, reason: "connection reset by peer")
    }

    func streamsResponses(_ endpoint: S3Endpoint) -> Bool { true }
}

/// Answers every request with `answer`.
final class FixedAnswerTransport: S3Transport, @unchecked Sendable {
    let answer: S3Response
    init(_ answer: S3Response) { self.answer = answer }
    func send(_ r: S3Request, endpoint: S3Endpoint) throws -> S3Response { answer }
}

/// Counts the backoffs instead of sleeping.
final class CountingSleeper: AWSSleeper, @unchecked Sendable {
    private let lock = NSLock()
    private var _sleeps = 0
    var sleeps: Int { lock.lock(); defer { lock.unlock() }; return _sleeps }
    func sleep(seconds: Double) { lock.lock(); _sleeps += 1; lock.unlock() }
}

final class S3StreamingReadTests: XCTestCase {
    /// A record of `bytes` in chunks of 4 KiB (the smallest allowed).
    func record(_ bytes: [UInt8], chunkSize: Int = 4096) -> ObjectRecord {
        let n = ObjectRecord.chunkCount(size: UInt64(bytes.count), chunkSize: chunkSize)
        let digests = (0..<n).map { SHA256Hasher.hash(Array(bytes[($0 * chunkSize)..<min(bytes.count, ($0 + 1) * chunkSize)])) }
        return ObjectRecord(key: "k", size: UInt64(bytes.count), createdMillis: 1, chunkSize: chunkSize, chunkDigests: digests,
                            objectDigest: SHA256Hasher.hash(bytes))
    }

    func headers(_ pairs: [(String, String)]) -> HTTPHeaders { HTTPHeaders(pairs) }

    func feed(_ a: ChunkAssembler, _ bytes: ArraySlice<UInt8>, pieces: Int) throws {
        let step = max(1, bytes.count / pieces + 1)
        var at = bytes.startIndex
        while at < bytes.endIndex {
            let end = min(at + step, bytes.endIndex)
            try Array(bytes[at..<end]).withUnsafeBytes { try a.receive($0) }
            at = end
        }
    }

    func testTheAssemblerCutsChecksAndSkipsWhatARetryDeliversAgain() throws {
        let bytes = pattern(4096 * 5 + 123, seed: 7)
        let rec = record(bytes)
        var got: [[UInt8]] = []
        let a = ChunkAssembler(record: rec, replica: 0, path: "r0/k", firstChunk: 2) { got.append($0) }
        let range = bytes[(2 * 4096)...]
        try a.begin(status: 206, headers: headers([("Content-Range", "bytes \(2 * 4096)-\(bytes.count - 1)/\(bytes.count)")]))
        // The first attempt dies a little into chunk 3 ...
        try feed(a, range.prefix(4096 + 1000), pieces: 7)
        XCTAssertEqual(got.count, 1)
        // ... the retry sends the same range from its start: what was taken is skipped.
        try a.begin(status: 206, headers: headers([("Content-Range", "bytes \(2 * 4096)-\(bytes.count - 1)/\(bytes.count)")]))
        try feed(a, range, pieces: 13)
        try a.finish()
        XCTAssertEqual(got.count, 4)
        XCTAssertEqual(got.flatMap { $0 }, Array(range))
        XCTAssertEqual(got.last?.count, 123)
    }

    func testAWholeObjectAnswerIsCutAtTheRangeStart() throws {
        let bytes = pattern(4096 * 3, seed: 8)
        var got: [UInt8] = []
        let a = ChunkAssembler(record: record(bytes), replica: 1, path: "r1/k", firstChunk: 1) { got += $0 }
        try a.begin(status: 200, headers: headers([("Content-Length", String(bytes.count))]))
        try feed(a, bytes[...], pieces: 5)
        try a.finish()
        XCTAssertEqual(got, Array(bytes[4096...]))
    }

    func testWhatDoesNotMatchTheRecordIsAFindingOfThatReplica() throws {
        let bytes = pattern(4096 * 3, seed: 9)
        let rec = record(bytes)
        func finding(_ body: () throws -> Void) -> ReplicaFinding? {
            do { try body(); return nil } catch let e as ReplicaFindingError { return e.finding } catch { XCTFail("\(error)"); return nil }
        }
        // A flipped byte in chunk 2: nothing of chunk 2 is delivered.
        var bad = bytes
        bad[2 * 4096 + 17] ^= 0x20
        var got = 0
        let a = ChunkAssembler(record: rec, replica: 2, path: "r2/k", firstChunk: 0) { _ in got += 1 }
        let whole = headers([("Content-Range", "bytes 0-\(bytes.count - 1)/\(bytes.count)")])
        let f = finding { try a.begin(status: 206, headers: whole); try self.feed(a, bad[...], pieces: 3) }
        XCTAssertEqual(f?.problem, .chunkMismatch)
        XCTAssertEqual(f?.chunk, 2)
        XCTAssertEqual(f?.replica, 2)
        XCTAssertEqual(got, 2)
        // Another size in Content-Range, a longer body, a shorter one.
        let b = ChunkAssembler(record: rec, replica: 0, path: "r0/k", firstChunk: 0) { _ in }
        XCTAssertEqual(finding { try b.begin(status: 206, headers: self.headers([("Content-Range", "bytes 0-98/99")])) }?.problem, .sizeMismatch)
        let c = ChunkAssembler(record: rec, replica: 0, path: "r0/k", firstChunk: 0) { _ in }
        XCTAssertEqual(finding { try c.begin(status: 206, headers: whole); try self.feed(c, (bytes + [1])[...], pieces: 2) }?.problem, .sizeMismatch)
        let d = ChunkAssembler(record: rec, replica: 0, path: "r0/k", firstChunk: 0) { _ in }
        let short = finding { try d.begin(status: 206, headers: whole); try self.feed(d, bytes.dropLast(5), pieces: 2); try d.finish() }
        XCTAssertEqual(short?.problem, .sizeMismatch)
        XCTAssertEqual(short?.chunk, 2)
    }

    func testA206ForAnotherRangeIsAFailedAttemptNotAFinding() throws {
        let bytes = pattern(4096 * 3, seed: 11)
        let rec = record(bytes)
        // The assembler (streamed reads), from chunk 1: the range must start there and run to the end.
        for bad in ["bytes 0-12287/12288", "bytes 4096-8191/12288", "bytes 8192-12287/12288", "bytes +4096-12287/12288",
                    "bytes 4096-12287/*", "4096-12287/12288", "bytes 4096-/12288"] {
            let a = ChunkAssembler(record: rec, replica: 1, path: "r1/k", firstChunk: 1) { _ in }
            XCTAssertThrowsError(try a.begin(status: 206, headers: headers([("Content-Range", bad)])), bad) { XCTAssertTrue($0 is S3TransportError, "\(bad): \($0)") }
        }
        let none = ChunkAssembler(record: rec, replica: 1, path: "r1/k", firstChunk: 1) { _ in }
        XCTAssertThrowsError(try none.begin(status: 206, headers: HTTPHeaders())) { XCTAssertTrue($0 is S3TransportError, "\($0)") }
        let good = ChunkAssembler(record: rec, replica: 1, path: "r1/k", firstChunk: 1) { _ in }
        XCTAssertNoThrow(try good.begin(status: 206, headers: headers([("Content-Range", "bytes 4096-12287/12288")])))
        // Ranged windows: a 206 of another range is an I/O failure of that attempt, not a chunk mismatch.
        let config = try S3StoreConfiguration(storeId: [UInt8](repeating: 7, count: 16), writeQuorum: 1,
                                              replicas: [.init(location: try S3Location(bucket: "nowhere", prefix: "p"),
                                                               endpoint: S3Endpoint(url: "http://127.0.0.1:9", region: "us-east-1"))])
        let dir = NSTemporaryDirectory() + "hsmb-range-" + UUID().uuidString
        for (offset, ok) in [(4096, false), (0, true)] {
            let fixed = FixedAnswerTransport(S3Response(status: 206, headers: ["content-range": "bytes \(offset)-\(offset + 12287)/12288"],
                                                        body: Array((bytes + bytes)[offset..<offset + 12288])))
            let store = S3ObjectStore(configuration: config, configurationPath: dir + "/c", localDirectory: dir, transport: fixed)
            switch store.fetchWindow(0, record: rec, firstChunk: 0) {
            case .success(let w): XCTAssertTrue(ok); XCTAssertEqual(w.count, 3)
            case .failure(let f): XCTAssertFalse(ok, "\(f.finding)"); XCTAssertEqual(f.finding.problem, .ioError, "\(f.finding)")
            }
        }
    }

    func testACancelledQueueReleasesItsProducer() throws {
        let q = ChunkQueue(capacity: 2)
        let outcome = LockedBox<Error?>(nil)
        let done = DispatchGroup()
        DispatchQueue.global().async(group: done) {
            do { for i in 0..<10 { try q.push([UInt8(i)]) } } catch { outcome.mutate { $0 = error } }
        }
        guard case .chunk(let first) = q.pop() else { return XCTFail("expected a chunk") }
        XCTAssertEqual(first, [0])
        q.cancel() // the producer is (or will be) blocked on a full queue
        done.wait()
        XCTAssertTrue(outcome.value is ChunkQueue.Cancelled)
        q.close(.end)
        guard case .end = q.pop() else { return XCTFail("expected the end") }
    }

    func testACancelledStreamFetchesNothingMore() throws {
        let bytes = pattern(4096 * 3, seed: 10)
        let rec = record(bytes)
        let config = try S3StoreConfiguration(storeId: [UInt8](repeating: 7, count: 16), writeQuorum: 1,
                                              replicas: [.init(location: try S3Location(bucket: "nowhere", prefix: "p"),
                                                               endpoint: S3Endpoint(url: "http://127.0.0.1:9", region: "us-east-1"))])
        let dir = NSTemporaryDirectory() + "hsmb-cancel-" + UUID().uuidString
        // Without a reader gone, a dead replica gets every attempt the retry policy allows ...
        let dead = DeadGetTransport {}
        let store = S3ObjectStore(configuration: config, configurationPath: dir + "/c", localDirectory: dir, transport: dead)
        XCTAssertTrue(store.streamsReads(0))
        let sleeper = CountingSleeper()
        let a = ChunkAssembler(record: rec, replica: 0, path: "r0/k", firstChunk: 0) { _ in }
        XCTAssertThrowsError(try store.streamObject(0, record: rec, firstChunk: 0, assembler: a, sleeper: sleeper)) { XCTAssertTrue($0 is S3TransportError, "\($0)") }
        XCTAssertEqual(dead.gets, RetryPolicy.default.maximumAttempts)
        // ... but once the reader drops the queue (here during the first GET), no backoff and no other GET.
        let queue = ChunkQueue(capacity: 2)
        let dropped = DeadGetTransport { queue.cancel() }
        let store2 = S3ObjectStore(configuration: config, configurationPath: dir + "/c", localDirectory: dir, transport: dropped)
        let sleeper2 = CountingSleeper()
        let b = ChunkAssembler(record: rec, replica: 0, path: "r0/k", firstChunk: 0, isCancelled: { queue.isCancelled }) { try queue.push($0) }
        XCTAssertThrowsError(try store2.streamObject(0, record: rec, firstChunk: 0, assembler: b, sleeper: sleeper2)) { XCTAssertTrue($0 is ChunkQueue.Cancelled, "\($0)") }
        XCTAssertEqual(dropped.gets, 1)
        XCTAssertEqual(sleeper2.sleeps, 0)
        // A body that begins after the reader is gone is refused before any byte.
        XCTAssertThrowsError(try b.begin(status: 206, headers: HTTPHeaders())) { XCTAssertTrue($0 is ChunkQueue.Cancelled) }
        // A stream started on a queue already cancelled makes no GET at all.
        let never = ChunkQueue(capacity: 1)
        never.cancel()
        let c = ChunkAssembler(record: rec, replica: 0, path: "r0/k", firstChunk: 0, isCancelled: { never.isCancelled }) { try never.push($0) }
        XCTAssertThrowsError(try store2.streamObject(0, record: rec, firstChunk: 0, assembler: c)) { XCTAssertTrue($0 is ChunkQueue.Cancelled) }
        XCTAssertEqual(dropped.gets, 1)
    }

    func read(_ store: S3ObjectStore, _ key: String) throws -> (S3ObjectReader, [UInt8]) {
        let r = try store.get(key) as! S3ObjectReader
        var got: [UInt8] = []
        while let p = try r.read() { got += p }
        return (r, got)
    }

    func testAReadIsOneGetWhenStreamedAndWindowsOtherwiseBothFailingOver() throws {
        let moto = try Moto.require()
        for streams in [true, false] {
            let (plain, config) = try moto.makeStore(replicas: 2)
            let counter = CountingTransport(moto.transport(), key: "deep", streams: streams)
            let store = S3ObjectStore(configuration: config, configurationPath: plain.configurationPath, localDirectory: plain.localDirectory,
                                      transport: counter)
            let good = pattern(23 << 20 | 777, seed: 46) // 24 record chunks
            _ = try store.put("deep", bytes: good)
            let (clean, got) = try read(store, "deep")
            XCTAssertTrue(got == good)
            XCTAssertTrue(clean.findings.isEmpty)
            // Streamed: one GET for the object; windows: 8 MiB each (a transport that may hold a body twice).
            let streamed = counter.streamsResponses(config.replicas[0].endpoint)
            XCTAssertEqual(streamed, streams)
            XCTAssertEqual(counter.gets, streamed ? 1 : 3, "streamed: \(streamed)")
            // A window held whole is bounded by the object (a server ignoring Range sends it all).
            if !streamed { XCTAssertEqual(counter.bounds, [good.count, good.count, good.count]) }
            var evil = good
            evil[(17 << 20) + 5] ^= 0x01 // chunk 17 of replica 0
            let l0 = config.replicas[0].location
            XCTAssertTrue(try moto.raw("PUT", l0.bucket, l0.key("deep"), body: evil).isSuccess)
            let (r, again) = try read(store, "deep")
            XCTAssertTrue(again == good)
            XCTAssertEqual(r.findings.map(\.replica), [0])
            XCTAssertEqual(r.findings.first?.problem, .chunkMismatch)
            XCTAssertEqual(r.findings.first?.chunk, 17)
            XCTAssertEqual(r.repaired, [0])
            XCTAssertTrue(store.verifyReplicas("deep").isEmpty)
        }
    }

    func testATransferCutMidwayResumesFromTheChunkItReachedAndItsBytesComeOutOnce() throws {
        let moto = try Moto.require()
        let proxy = try FaultProxy(upstream: moto.endpoint, arguments: ["--cut-body", "2"])
        let (plain, config) = try moto.makeStore(replicas: 1, endpoint: proxy.url)
        let counter = CountingTransport(moto.transport(), key: "cut", streams: true)
        let store = S3ObjectStore(configuration: config, configurationPath: plain.configurationPath, localDirectory: plain.localDirectory,
                                  transport: counter)
        let good = pattern(9 << 20 | 5, seed: 47)
        _ = try store.put("cut", bytes: good)
        // The streamed GET dies halfway, twice; each time the read goes on with a GET from the
        // chunk it had reached, and the bytes come out once, in order.
        let (r, got) = try read(store, "cut")
        XCTAssertEqual(try proxy.stats()["cut"], 2)
        XCTAssertEqual(got.count, good.count)
        XCTAssertTrue(got == good)
        XCTAssertTrue(r.findings.isEmpty, "\(r.findings)")
        guard counter.streamsResponses(config.replicas[0].endpoint) else { return } // a transport that cannot stream: windows
        let starts = counter.ranges.map { UInt64($0.dropFirst("bytes=".count).split(separator: "-")[0])! }
        XCTAssertEqual(starts.count, 3, "\(counter.ranges)")
        XCTAssertEqual(starts.first, 0)
        // Each resumed GET starts on a chunk boundary past the previous start (half of what was left was sent).
        XCTAssertTrue(zip(starts, starts.dropFirst()).allSatisfy { $0 < $1 }, "\(starts)")
        XCTAssertTrue(starts.allSatisfy { $0 % UInt64(ObjectRecord.defaultChunkSize) == 0 }, "\(starts)")
    }
}
