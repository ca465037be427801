// Lost answers (spec/FORMAT.md 5.11): a request the server applied whose answer never came back
// is retried by the client, and the retry meets what the first attempt did — a
// CompleteMultipartUpload's retry finds its upload gone (NoSuchUpload) or, create-only, the key
// taken by the object it published itself (412). The writer counts such a replica as written only
// when the key holds its own object (its writer token, its size, its content); another writer's
// object, even with the very same bytes, is never claimed. The fault proxy (scripts/s3/faultproxy.py)
// forwards the chosen request to moto, drops the answer, and answers or holds the retry.
import AWSCore
import BackupCrypto
import ByteCoding
import Foundation
@testable import ObjectStore
@testable import S3Store
import XCTest

extension FaultProxy {
    /// Arms a lost answer (faultproxy.py `/__faultproxy/lose`): the `n`th `method` request whose
    /// query has `param` and whose path contains `path` is applied and its answer dropped; its
    /// retries are answered per `retry` (`forward`, `412`, `404`, `500`, `auto`); `hold` keeps the
    /// first retry waiting until `release()`.
    func lose(method: String, param: String = "", path: String = "", n: Int = 1, retry: String = "forward", hold: Bool = false) throws {
        var c = URLComponents(string: url + "/__faultproxy/lose")!
        c.queryItems = [URLQueryItem(name: "method", value: method), URLQueryItem(name: "param", value: param),
                        URLQueryItem(name: "path", value: path), URLQueryItem(name: "n", value: String(n)),
                        URLQueryItem(name: "retry", value: retry), URLQueryItem(name: "hold", value: hold ? "1" : "0")]
        let answer = String(decoding: try control(c.url!), as: UTF8.self)
        guard answer.contains("Armed") else { throw StoreError(.ioError, "the fault proxy refused the rule: \(answer)") }
    }

    func release() throws { _ = try control(URL(string: url + "/__faultproxy/release")!) }

    /// Arms a failure (faultproxy.py `/__faultproxy/fail`): the next `count` (nil: every one until
    /// `unfail()`) `method` requests whose path contains `path` are answered 500 (`answer` "500")
    /// or cut without an answer ("cut"), never forwarded.
    func fail(method: String, path: String, count: Int? = nil, answer: String = "500") throws {
        var c = URLComponents(string: url + "/__faultproxy/fail")!
        c.queryItems = [URLQueryItem(name: "method", value: method), URLQueryItem(name: "path", value: path),
                        URLQueryItem(name: "count", value: String(count ?? -1)), URLQueryItem(name: "answer", value: answer)]
        let reply = String(decoding: try control(c.url!), as: UTF8.self)
        guard reply.contains("Armed") else { throw StoreError(.ioError, "the fault proxy refused the rule: \(reply)") }
    }

    func unfail() throws { _ = try control(URL(string: url + "/__faultproxy/unfail")!) }

    /// Waits until the proxy holds a retry (a lost answer's retry arrived); false after `seconds`.
    func waitForHeldRetry(seconds: Double = 60) throws -> Bool {
        let until = Date().addingTimeInterval(seconds)
        while Date() < until {
            if try stats()["held"] ?? 0 >= 1 { return true }
            Thread.sleep(forTimeInterval: 0.05)
        }
        return false
    }
}

final class S3LostAnswerTests: XCTestCase {
    /// Two parts of the 7 MiB the test stores use, the second short.
    static let multipartSize = (8 << 20) + 12_345

    /// The multipart uploads still open in every replica location (key and upload id).
    func openUploads(_ moto: Moto, _ config: S3StoreConfiguration) throws -> [String] {
        var out: [String] = []
        for r in config.replicas {
            let resp = try moto.raw("GET", r.location.bucket, query: [("uploads", "")])
            XCTAssertTrue(resp.isSuccess, "list uploads: \(resp.status)")
            for u in XMLScan(resp.body).blocks("Upload") {
                out.append("\(r.location.bucket)/\(u.first("Key") ?? "?") \(u.first("UploadId") ?? "?")")
            }
        }
        return out
    }

    /// Bytes of `key` in replica location `i`, fetched from moto directly (nil: no object).
    func rawObject(_ moto: Moto, _ config: S3StoreConfiguration, _ i: Int, _ key: String) throws -> [UInt8]? {
        let r = config.replicas[i]
        let resp = try moto.raw("GET", r.location.bucket, r.location.key(key))
        if resp.status == 404 { return nil }
        XCTAssertTrue(resp.isSuccess, "GET \(key) on replica \(i): \(resp.status)")
        return resp.body
    }

    /// The SHA-256 (hex) of `key` in replica location `i` as moto holds it, or "absent" (compared
    /// instead of the bytes, so a failure does not print megabytes).
    func rawDigest(_ moto: Moto, _ config: S3StoreConfiguration, _ i: Int, _ key: String) throws -> String {
        try rawObject(moto, config, i, key).map { Hex.encode(SHA256Hasher.hash($0)) } ?? "absent"
    }

    func digest(_ bytes: [UInt8]) -> String { Hex.encode(SHA256Hasher.hash(bytes)) }

    /// A create-only multipart put whose CompleteMultipartUpload was applied on replica 0 but
    /// whose answer was lost; the retry gets `retry` (412: the key holds the object that attempt
    /// published; 404 NoSuchUpload: the upload is gone). The replica counts as written: the put
    /// succeeds on both, the object verifies, and no upload is left open. With
    /// `byChecksum` the check is the composite SHA-256 from a HEAD (no GET); without, the object
    /// is read back and compared chunk by chunk.
    func lostCompleteOnACreate(retry: String, byChecksum: Bool, seed: UInt64) throws {
        let moto = try Moto.require()
        let proxy = try FaultProxy(upstream: moto.endpoint, arguments: [])
        let (store, config) = try moto.makeStore(replicas: 2, quorum: 2, endpoint: proxy.url)
        store.lostCompleteByChecksum = byChecksum
        try store.checkAccess() // the replica markers are read now, not during the put
        try proxy.lose(method: "POST", param: "uploadId", path: "/" + config.replicas[0].location.bucket + "/", retry: retry)
        let bytes = pattern(Self.multipartSize, seed: seed)
        let getsBefore = try proxy.stats()["forwarded_GET"] ?? 0
        let report = try store.put("big", from: BytesSource(bytes))
        let s = try proxy.stats()
        XCTAssertEqual(s["lost"], 1, "\(s)")
        if retry == "forward" {
            XCTAssertGreaterThanOrEqual(s["retried"] ?? 0, 1, "the retry reached moto: \(s)")
        } else {
            XCTAssertGreaterThanOrEqual(s["answered"] ?? 0, 1, "the retry met \(retry): \(s)")
        }
        if byChecksum {
            XCTAssertEqual(s["forwarded_GET"] ?? 0, getsBefore, "the composite checksum decided; nothing read back: \(s)")
        } else {
            XCTAssertGreaterThan(s["forwarded_GET"] ?? 0, getsBefore, "the object was read back: \(s)")
        }
        XCTAssertEqual(report.written, [0, 1])
        XCTAssertEqual(report.failed.map(\.replica), [])
        XCTAssertEqual(report.info.sha256, Hex.encode(SHA256Hasher.hash(bytes)))
        XCTAssertEqual(digest(try store.getAll("big", limit: 16 << 20)), digest(bytes))
        XCTAssertTrue(store.verifyReplicas("big").isEmpty, "\(store.verifyReplicas("big"))")
        for i in 0..<2 { XCTAssertEqual(try rawDigest(moto, config, i, "big"), digest(bytes), "replica \(i)") }
        XCTAssertEqual(try openUploads(moto, config), [])
        XCTAssertEqual(try store.stat("big").replicas, [0, 1])
    }

    func testALostCompleteAnswerWhoseRetryGets412IsOurObject() throws {
        try lostCompleteOnACreate(retry: "412", byChecksum: true, seed: 1)
    }

    func testALostCompleteAnswerWhoseRetryGetsNoSuchUploadIsOurObject() throws {
        try lostCompleteOnACreate(retry: "404", byChecksum: true, seed: 2)
    }

    func testALostCompleteAnswerIsCheckedByContentWithoutTheChecksum() throws {
        try lostCompleteOnACreate(retry: "412", byChecksum: false, seed: 3)
    }

    /// moto itself answers a retried Complete of an upload it completed 200 (as AWS does for a
    /// while): nothing to check, the put succeeds.
    func testALostCompleteAnswerWhoseRetryMotoAnswersSucceeds() throws {
        try lostCompleteOnACreate(retry: "forward", byChecksum: true, seed: 4)
    }

    /// Overwrite (repair) semantics: no If-None-Match, so the retry of an applied Complete meets
    /// NoSuchUpload (or a server's 5xx); the key holds our new object over an older one, and the
    /// writer counts it as written. Before the fix, the one target was dropped and the write failed.
    func testALostCompleteAnswerWithOverwriteIsOurObject() throws {
        let moto = try Moto.require()
        let proxy = try FaultProxy(upstream: moto.endpoint, arguments: [])
        let (store, config) = try moto.makeStore(replicas: 1, quorum: 1, endpoint: proxy.url)
        try store.checkAccess()
        for (n, (key, retry)) in [("ow404", "auto"), ("ow500", "500")].enumerated() {
            _ = try store.put(key, bytes: pattern(3000, seed: 10 + UInt64(n)))
            try proxy.lose(method: "POST", param: "uploadId", path: "/" + key, retry: retry)
            let before = try proxy.stats()
            let bytes = pattern(Self.multipartSize, seed: 20 + UInt64(n))
            let w = try S3ObjectWriter(store: store, key: key, targets: [0], overwrite: true)
            for at in stride(from: 0, to: bytes.count, by: 1 << 20) { try w.write(Array(bytes[at..<min(at + (1 << 20), bytes.count)])) }
            let report = try w.commit()
            let s = try proxy.stats()
            XCTAssertEqual((s["lost"] ?? 0) - (before["lost"] ?? 0), 1, "\(key): \(s)")
            XCTAssertGreaterThanOrEqual((s["answered"] ?? 0) - (before["answered"] ?? 0), 1, "\(key): \(s)")
            XCTAssertEqual(report.written, [0], key)
            XCTAssertEqual(digest(try store.getAll(key, limit: 16 << 20)), digest(bytes), key)
            XCTAssertTrue(store.verifyReplicas(key).isEmpty, "\(key): \(store.verifyReplicas(key))")
            XCTAssertEqual(try rawDigest(moto, config, 0, key), digest(bytes), key)
            XCTAssertEqual(try openUploads(moto, config), [], key)
        }
    }

    /// Our Complete on replica 0 is applied, its answer lost; before the retry arrives, another
    /// writer's object takes the key (here: ours deleted, theirs put, straight to moto). The retry
    /// meets moto's own 412. The object there is not ours (no writer token of ours), so it is
    /// never claimed: the put fails with alreadyExists, their object stays untouched, our copy on
    /// replica 1 is undone, no record is written and no upload is left open.
    func anotherWritersObjectBetweenTheLostAnswerAndTheRetry(theirs: (_ ours: [UInt8]) -> [UInt8], seed: UInt64) throws {
        let moto = try Moto.require()
        let proxy = try FaultProxy(upstream: moto.endpoint, arguments: [])
        let (store, config) = try moto.makeStore(replicas: 2, quorum: 2, endpoint: proxy.url)
        try store.checkAccess()
        let r0 = config.replicas[0]
        try proxy.lose(method: "POST", param: "uploadId", path: "/" + r0.location.bucket + "/", retry: "forward", hold: true)
        let ours = pattern(Self.multipartSize, seed: seed)
        let their = theirs(ours)
        let outcome = LockedBox<Result<PutReport, Error>?>(nil)
        let done = DispatchGroup()
        DispatchQueue.global().async(group: done) {
            let r = Result { try store.put("race", from: BytesSource(ours)) }
            outcome.mutate { $0 = r }
        }
        guard try proxy.waitForHeldRetry() else {
            let s = try proxy.stats()
            try proxy.release()
            done.wait()
            return XCTFail("no retry of the lost Complete reached the proxy: \(s)")
        }
        // The lost attempt published ours on replica 0; the other writer's object replaces it.
        XCTAssertEqual(try rawDigest(moto, config, 0, "race"), digest(ours), "the lost attempt was applied")
        XCTAssertTrue(try moto.raw("DELETE", r0.location.bucket, r0.location.key("race")).isSuccess)
        XCTAssertTrue(try moto.raw("PUT", r0.location.bucket, r0.location.key("race"), body: their).isSuccess)
        try proxy.release()
        XCTAssertEqual(done.wait(timeout: .now() + 120), .success)
        switch outcome.value {
        case .success(let report)?: XCTFail("another writer's object was claimed: \(report)")
        case .failure(let e)?: XCTAssertEqual((e as? StoreError)?.code, .alreadyExists, "\(e)")
        case nil: XCTFail("the put did not end")
        }
        let s = try proxy.stats()
        XCTAssertEqual(s["lost"], 1, "\(s)")
        XCTAssertEqual(s["answered"], 0, "moto answered the retry itself: \(s)")
        XCTAssertEqual(try rawDigest(moto, config, 0, "race"), digest(their), "their object is left as it is")
        let head = try moto.raw("HEAD", r0.location.bucket, r0.location.key("race"))
        XCTAssertNil(head.header(S3ObjectWriter.writerMetadata), "still their object, not one of ours")
        XCTAssertEqual(try rawDigest(moto, config, 1, "race"), "absent", "our copy on replica 1 is undone")
        for i in 0..<2 {
            XCTAssertEqual(try rawDigest(moto, config, i, S3ObjectStore.recordsDir + "/race"), "absent", "no record on replica \(i)")
        }
        XCTAssertEqual(try openUploads(moto, config), [])
    }

    func testAnotherWritersObjectAfterTheLostAnswerIsNotClaimed() throws {
        try anotherWritersObjectBetweenTheLostAnswerAndTheRetry(theirs: { pattern($0.count, seed: 99) }, seed: 30)
    }

    /// The same with their object byte for byte ours (another writer storing the same file): the
    /// content alone cannot tell them apart, the writer token does.
    func testAnotherWritersIdenticalObjectIsNotClaimed() throws {
        try anotherWritersObjectBetweenTheLostAnswerAndTheRetry(theirs: { $0 }, seed: 31)
    }

    /// A single create-only PUT whose answer was lost and whose retry gets 412 is our own object
    /// (the check: writer token and bytes); the put succeeds.
    func testALostSinglePutAnswerIsOurObject() throws {
        let moto = try Moto.require()
        let proxy = try FaultProxy(upstream: moto.endpoint, arguments: [])
        let (store, config) = try moto.makeStore(replicas: 2, quorum: 2, endpoint: proxy.url)
        try store.checkAccess()
        try proxy.lose(method: "PUT", path: "/" + config.replicas[1].location.bucket + "/p/x/small", retry: "auto")
        let bytes = pattern(5000, seed: 40)
        let report = try store.put("small", bytes: bytes)
        let s = try proxy.stats()
        XCTAssertEqual(s["lost"], 1, "\(s)")
        XCTAssertGreaterThanOrEqual(s["answered"] ?? 0, 1, "\(s)")
        XCTAssertEqual(report.written, [0, 1])
        XCTAssertEqual(try store.getAll("small"), bytes)
        XCTAssertTrue(store.verifyReplicas("small").isEmpty)
    }

    /// The record PUT after the object is unconditional (no If-None-Match, in either mode): its
    /// retry after a lost answer rewrites the same bytes and succeeds. The put succeeds on both
    /// replicas and each holds the same, valid record.
    func testALostRecordPutAnswerIsRetriedAndSucceeds() throws {
        let moto = try Moto.require()
        let proxy = try FaultProxy(upstream: moto.endpoint, arguments: [])
        let (store, config) = try moto.makeStore(replicas: 2, quorum: 2, endpoint: proxy.url)
        try store.checkAccess()
        try proxy.lose(method: "PUT", path: "/" + config.replicas[0].location.bucket + "/p/x/" + S3ObjectStore.recordsDir + "/rec")
        let bytes = pattern(Self.multipartSize, seed: 50)
        let report = try store.put("rec", from: BytesSource(bytes))
        let s = try proxy.stats()
        XCTAssertEqual(s["lost"], 1, "\(s)")
        XCTAssertGreaterThanOrEqual(s["retried"] ?? 0, 1, "\(s)")
        XCTAssertEqual(report.written, [0, 1])
        let records = try (0..<2).map { try XCTUnwrap(rawObject(moto, config, $0, S3ObjectStore.recordsDir + "/rec")) }
        XCTAssertEqual(records[0], records[1])
        let record = try ObjectRecord.parse(records[0])
        XCTAssertEqual(record.size, UInt64(bytes.count))
        XCTAssertEqual(record.objectDigest, SHA256Hasher.hash(bytes))
        XCTAssertEqual(digest(try store.getAll("rec", limit: 16 << 20)), digest(bytes))
        XCTAssertTrue(store.verifyReplicas("rec").isEmpty)
        XCTAssertEqual(try openUploads(moto, config), [])
    }

    // MARK: outcomes that cannot be checked (three-valued check, token-checked undo)

    /// Writes `bytes` through `w` in 1 MiB pieces.
    func feed(_ w: S3ObjectWriter, _ bytes: [UInt8]) throws {
        for at in stride(from: 0, to: bytes.count, by: 1 << 20) { try w.write(Array(bytes[at..<min(at + (1 << 20), bytes.count)])) }
    }

    /// A create-only multipart put: Complete on replica 0 applied, its answer lost, the retry
    /// answered 412, and the HEAD that would check the key failing (500, every attempt of the
    /// check: the test transport makes 8). No other writer exists, so the put must not say
    /// `alreadyExists`: replica 0 fails with an I/O error naming the check, the put misses the
    /// quorum, and its undo removes our copies — replica 1's, and replica 0's once its HEAD gets
    /// through again (`undoSeesTheKey`). When the fault outlasts the undo too, our object stays
    /// on replica 0: the undo never deletes what it could not see to be ours. It has no record
    /// (a put that died between object and record, as spec 5.11 says) and blocks a later put of
    /// the key there until it is removed.
    func lostCompleteWhoseCheckFails(undoSeesTheKey: Bool, answer: String, seed: UInt64) throws {
        let moto = try Moto.require()
        let proxy = try FaultProxy(upstream: moto.endpoint, arguments: [])
        let (store, config) = try moto.makeStore(replicas: 2, quorum: 2, endpoint: proxy.url)
        try store.checkAccess()
        let r0 = config.replicas[0]
        let bytes = pattern(Self.multipartSize, seed: seed)
        let w = try S3ObjectWriter(store: store, key: "big") // its HEAD of the key before the faults
        try proxy.lose(method: "POST", param: "uploadId", path: "/" + r0.location.bucket + "/", retry: "412")
        try proxy.fail(method: "HEAD", path: "/" + r0.location.bucket + "/" + r0.location.key("big"), count: undoSeesTheKey ? 8 : nil, answer: answer)
        try feed(w, bytes)
        XCTAssertThrowsError(try w.commit()) { e in
            let e = e as? StoreError
            XCTAssertNotEqual(e?.code, .alreadyExists, "no other writer: \(String(describing: e))")
            XCTAssertEqual(e?.code, .quorumNotReached, "\(String(describing: e))")
            let f = e?.findings.first { $0.replica == 0 }
            XCTAssertEqual(f?.problem, .ioError, "\(String(describing: e))")
            XCTAssertTrue(f?.detail.contains("could not be checked") ?? false, "\(String(describing: f))")
            XCTAssertTrue(f?.detail.contains("big") ?? false, "the key is named: \(String(describing: f))")
        }
        let s = try proxy.stats()
        XCTAssertEqual(s["lost"], 1, "\(s)")
        XCTAssertGreaterThanOrEqual(s["answered"] ?? 0, 1, "the retry met 412: \(s)")
        XCTAssertGreaterThanOrEqual(s["failed"] ?? 0, 8, "every attempt of the check failed: \(s)")
        try proxy.unfail()
        XCTAssertEqual(try rawDigest(moto, config, 1, "big"), "absent", "our copy on replica 1 is undone")
        if undoSeesTheKey {
            XCTAssertEqual(try rawDigest(moto, config, 0, "big"), "absent", "our copy on replica 0 is undone once it can be seen")
        } else {
            let head = try moto.raw("HEAD", r0.location.bucket, r0.location.key("big"))
            XCTAssertEqual(head.header(S3ObjectWriter.writerMetadata), w.writerToken, "ours stays: the undo could not see it")
            XCTAssertThrowsError(try store.put("big", bytes: [1, 2, 3])) { e in
                XCTAssertEqual((e as? StoreError)?.code, .alreadyExists, "\(e)")
            }
        }
        for i in 0..<2 {
            XCTAssertEqual(try rawDigest(moto, config, i, S3ObjectStore.recordsDir + "/big"), "absent", "no record on replica \(i)")
        }
        XCTAssertEqual(try openUploads(moto, config), [])
    }

    func testALostCompleteWhoseCheckFailsIsAnIOErrorAndUndone() throws {
        try lostCompleteWhoseCheckFails(undoSeesTheKey: true, answer: "500", seed: 60)
    }

    /// Cut connections, until lifted (a cut on a pooled connection may also be retried at once by
    /// the transport, so a count of failures would not line up with the client's attempts).
    func testALostCompleteWhoseCheckIsCutIsAnIOErrorAndOursStaysUnseen() throws {
        try lostCompleteWhoseCheckFails(undoSeesTheKey: false, answer: "cut", seed: 61)
    }

    func testALostCompleteWhoseCheckAndUndoFailLeavesOurObjectWithoutARecord() throws {
        try lostCompleteWhoseCheckFails(undoSeesTheKey: false, answer: "500", seed: 62)
    }

    /// Complete on replica 0 applied, its answer lost, and every retry cut (no answer at all):
    /// the replica fails with a transport error, the put misses the quorum, and the undo deletes
    /// what it completed on both replicas — replica 0's too, which the dropped replica alone
    /// would have left behind (its abort meets NoSuchUpload: the upload was completed).
    func testAQuorumMissAfterATransportErrorOnCompleteDeletesOurCompletedObject() throws {
        let moto = try Moto.require()
        let proxy = try FaultProxy(upstream: moto.endpoint, arguments: [])
        let (store, config) = try moto.makeStore(replicas: 2, quorum: 2, endpoint: proxy.url)
        try store.checkAccess()
        let r0 = config.replicas[0]
        try proxy.lose(method: "POST", param: "uploadId", path: "/" + r0.location.bucket + "/", retry: "cut")
        let bytes = pattern(Self.multipartSize, seed: 63)
        XCTAssertThrowsError(try store.put("cut", from: BytesSource(bytes))) { e in
            XCTAssertEqual((e as? StoreError)?.code, .quorumNotReached, "\(e)")
        }
        let s = try proxy.stats()
        XCTAssertEqual(s["lost"], 1, "\(s)")
        XCTAssertGreaterThanOrEqual(s["answered"] ?? 0, 1, "retries cut: \(s)")
        for i in 0..<2 {
            XCTAssertEqual(try rawDigest(moto, config, i, "cut"), "absent", "our completed object on replica \(i) is deleted")
            XCTAssertEqual(try rawDigest(moto, config, i, S3ObjectStore.recordsDir + "/cut"), "absent", "no record on replica \(i)")
        }
        XCTAssertEqual(try openUploads(moto, config), [])
    }

    /// The undo deletes only an object with this writer's token: another writer's object that
    /// took the key after ours was deleted out of band stays.
    func testTheUndoNeverDeletesAnotherWritersObject() throws {
        let moto = try Moto.require()
        let proxy = try FaultProxy(upstream: moto.endpoint, arguments: [])
        let (store, config) = try moto.makeStore(replicas: 2, quorum: 2, endpoint: proxy.url)
        try store.checkAccess()
        let r0 = config.replicas[0]
        let w = try S3ObjectWriter(store: store, key: "k")
        // Complete on replica 0 applied, answer lost, every retry cut: replica 0 may hold ours.
        try proxy.lose(method: "POST", param: "uploadId", path: "/" + r0.location.bucket + "/", retry: "cut", hold: true)
        let bytes = pattern(Self.multipartSize, seed: 64)
        try feed(w, bytes)
        let outcome = LockedBox<Error?>(nil)
        let done = DispatchGroup()
        DispatchQueue.global().async(group: done) {
            do { _ = try w.commit() } catch { outcome.mutate { $0 = error } }
        }
        guard try proxy.waitForHeldRetry() else {
            try proxy.release()
            done.wait()
            return XCTFail("no retry of the lost Complete reached the proxy")
        }
        // Ours replaced by another writer's object, identical bytes, before the undo.
        XCTAssertTrue(try moto.raw("DELETE", r0.location.bucket, r0.location.key("k")).isSuccess)
        XCTAssertTrue(try moto.raw("PUT", r0.location.bucket, r0.location.key("k"), body: bytes).isSuccess)
        try proxy.release()
        XCTAssertEqual(done.wait(timeout: .now() + 120), .success)
        XCTAssertEqual((outcome.value as? StoreError)?.code, .quorumNotReached, "\(String(describing: outcome.value))")
        XCTAssertEqual(try rawDigest(moto, config, 0, "k"), digest(bytes), "their object stays")
        XCTAssertNil(try moto.raw("HEAD", r0.location.bucket, r0.location.key("k")).header(S3ObjectWriter.writerMetadata))
        XCTAssertEqual(try rawDigest(moto, config, 1, "k"), "absent", "ours on replica 1 is undone")
        XCTAssertEqual(try openUploads(moto, config), [])
    }

    /// Two writers race a create-only single PUT of one key; the other's object, larger than
    /// ours, lands first. The 412 is checked by a HEAD (another token): alreadyExists at once,
    /// their object never read (no GET: before, a bounded GET of it failed as a malformed answer
    /// and was retried 8 times), and our copy on the other replica undone.
    func testAnotherWritersLargerObjectRefusesASinglePutWithoutReadingIt() throws {
        let moto = try Moto.require()
        let proxy = try FaultProxy(upstream: moto.endpoint, arguments: [])
        let (store, config) = try moto.makeStore(replicas: 2, quorum: 2, endpoint: proxy.url)
        try store.checkAccess()
        let r0 = config.replicas[0]
        let w = try S3ObjectWriter(store: store, key: "small") // the key is free now
        try w.write(pattern(5000, seed: 70))
        let theirs = pattern(300_000, seed: 71)
        XCTAssertTrue(try moto.raw("PUT", r0.location.bucket, r0.location.key("small"), body: theirs).isSuccess)
        let before = try proxy.stats()
        let start = Date()
        XCTAssertThrowsError(try w.commit()) { e in
            XCTAssertEqual((e as? StoreError)?.code, .alreadyExists, "\(e)")
        }
        let elapsed = Date().timeIntervalSince(start)
        let s = try proxy.stats()
        XCTAssertEqual((s["forwarded_GET"] ?? 0) - (before["forwarded_GET"] ?? 0), 0, "their object is not read: \(s)")
        XCTAssertLessThan(elapsed, 1.0)
        XCTAssertEqual(try rawDigest(moto, config, 0, "small"), digest(theirs), "their object is left as it is")
        XCTAssertEqual(try rawDigest(moto, config, 1, "small"), "absent", "our copy on replica 1 is undone")
        for i in 0..<2 {
            XCTAssertEqual(try rawDigest(moto, config, i, S3ObjectStore.recordsDir + "/small"), "absent", "no record on replica \(i)")
        }
    }
}
