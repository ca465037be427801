// Review findings on the S3 store: listings that cannot be complete (a truncated page without a
// continuation token, or one that repeats it) are I/O errors, not partial answers or endless
// loops; keys outside the prefix are not ours; fsck leaves an upload of unknown age alone; a
// failed `store init` takes back what it wrote; a bucket with a dot is addressed path-style on
// AWS; a part size that cannot reach the largest object is refused. Scripted transports answer
// without a server; the init tests run against moto.
import AWSCore
import BackupCrypto
import Foundation
import ObjectStore
@testable import S3Store
import XCTest

/// Answers every request with `answer(request)` and records the requests. After `limit` of them
/// it answers with no answer, so a client that would never stop fails instead of hanging.
final class ScriptedS3Transport: S3Transport, @unchecked Sendable {
    let answer: @Sendable (S3Request) -> S3Response
    let limit: Int
    private let lock = NSLock()
    private var _requests: [S3Request] = []
    var requests: [S3Request] { lock.lock(); defer { lock.unlock() }; return _requests }

    init(limit: Int = 50, _ answer: @escaping @Sendable (S3Request) -> S3Response) { self.limit = limit; self.answer = answer }

    func send(_ r: S3Request, endpoint: S3Endpoint) throws -> S3Response {
        lock.lock(); _requests.append(r); let n = _requests.count; lock.unlock()
        if n > limit { throw S3TransportError(request: r.summary, reason: "the test's limit of \(limit) requests was reached") }
        return answer(r)
    }

    func requests(where match: (S3Request) -> Bool) -> [S3Request] { requests.filter(match) }
}

/// Wraps the real transport: a PUT of the replica marker into `bucket` is refused with 403
/// AccessDenied (a location whose policy forbids the write).
final class MarkerRefusingTransport: S3Transport, @unchecked Sendable {
    let inner: S3Transport
    let bucket: String
    init(_ inner: S3Transport, bucket: String) { self.inner = inner; self.bucket = bucket }
    func send(_ r: S3Request, endpoint: S3Endpoint) throws -> S3Response {
        if r.method == "PUT", r.bucket == bucket, r.key.hasSuffix(S3ObjectStore.markerName) {
            return S3Response(status: 403, headers: [:], body: Array("<Error><Code>AccessDenied</Code><Message>refused by the test</Message></Error>".utf8))
        }
        return try inner.send(r, endpoint: endpoint)
    }
}

/// Records what AWSCoreS3Transport sends, answers 200 with no body.
final class URLRecordingHTTP: HTTPTransport, @unchecked Sendable {
    private let lock = NSLock()
    private var _requests: [HTTPRequest] = []
    var requests: [HTTPRequest] { lock.lock(); defer { lock.unlock() }; return _requests }
    func send(_ request: HTTPRequest) throws -> HTTPResponse {
        lock.lock(); _requests.append(request); lock.unlock()
        return HTTPResponse(status: 200, headers: HTTPHeaders(), body: Data())
    }
}

final class S3ListingAndInitTests: XCTestCase {
    static let storeId = Array(repeating: UInt8(0x5a), count: 16)
    static let bucket = "hsmb-scripted"

    /// A one-replica store at s3://hsmb-scripted/p/x on an endpoint nothing listens on: every
    /// request goes to `transport`. The replica marker is answered for it.
    func scriptedStore(_ answer: @escaping @Sendable (S3Request) -> S3Response?) throws -> (S3ObjectStore, ScriptedS3Transport) {
        let transport = ScriptedS3Transport { r in
            if r.method == "GET", r.key.hasSuffix(S3ObjectStore.markerName) {
                return S3Response(status: 200, headers: [:], body: ReplicaMarker(storeId: Self.storeId, index: 0).encode())
            }
            return answer(r) ?? S3Response(status: 404, headers: [:], body: Array("<Error><Code>NoSuchKey</Code></Error>".utf8))
        }
        let config = try S3StoreConfiguration(storeId: Self.storeId, writeQuorum: 1, replicas: [
            .init(location: try S3Location(bucket: Self.bucket, prefix: "p/x"), endpoint: S3Endpoint(url: "http://127.0.0.1:9", region: "us-east-1")),
        ])
        let store = S3ObjectStore(configuration: config, configurationPath: "/nonexistent/store.json",
                                  localDirectory: NSTemporaryDirectory(), transport: transport)
        return (store, transport)
    }

    static func isObjectListing(_ r: S3Request) -> Bool { r.method == "GET" && r.query.contains { $0.0 == "list-type" } }
    static func isUploadListing(_ r: S3Request) -> Bool { r.method == "GET" && r.query.contains { $0.0 == "uploads" } }

    static func page(_ keys: [String], truncated: Bool, token: String?) -> S3Response {
        var xml = "<ListBucketResult><Name>\(bucket)</Name><IsTruncated>\(truncated)</IsTruncated>"
        if let token { xml += "<NextContinuationToken>\(token)</NextContinuationToken>" }
        for k in keys { xml += "<Contents><Key>\(k)</Key><Size>1</Size><ETag>\"e\"</ETag></Contents>" }
        return S3Response(status: 200, headers: [:], body: Array((xml + "</ListBucketResult>").utf8))
    }

    static func uploads(_ items: [(key: String, id: String, initiated: String)], truncated: Bool = false,
                        markers: (String, String)? = nil) -> S3Response {
        var xml = "<ListMultipartUploadsResult><Bucket>\(bucket)</Bucket><IsTruncated>\(truncated)</IsTruncated>"
        if let markers { xml += "<NextKeyMarker>\(markers.0)</NextKeyMarker><NextUploadIdMarker>\(markers.1)</NextUploadIdMarker>" }
        for u in items { xml += "<Upload><Key>\(u.key)</Key><UploadId>\(u.id)</UploadId><Initiated>\(u.initiated)</Initiated></Upload>" }
        return S3Response(status: 200, headers: [:], body: Array((xml + "</ListMultipartUploadsResult>").utf8))
    }

    // MARK: finding 3: listings that cannot be complete

    func testAListingThatRepeatsItsContinuationTokenIsAnIOErrorNotAnEndlessLoop() throws {
        let (store, transport) = try scriptedStore { r in
            Self.isObjectListing(r) ? Self.page(["p/x/a"], truncated: true, token: "T") : nil
        }
        XCTAssertThrowsError(try store.listKeys(0, prefix: "")) { e in
            let s = e as? StoreError
            XCTAssertEqual(s?.code, .ioError, "\(e)")
            XCTAssertEqual(s?.path, "s3://\(Self.bucket)/p/x/", "\(e)")
            XCTAssertTrue("\(e)".contains("repeated the continuation token \"T\""), "\(e)")
        }
        XCTAssertEqual(transport.requests(where: Self.isObjectListing).count, 2)
        // The second page asked for the token the first one gave.
        XCTAssertEqual(transport.requests(where: Self.isObjectListing).last?.query.first { $0.0 == "continuation-token" }?.1, "T")
        // Through the protocol: no partial key list comes back as the whole.
        XCTAssertThrowsError(try store.list(prefix: "")) { e in
            XCTAssertEqual((e as? StoreError)?.code, .ioError, "\(e)")
            XCTAssertTrue("\(e)".contains("continuation token"), "\(e)")
        }
    }

    func testATokenCycleOverSeveralPagesIsCaughtToo() throws {
        let (store, transport) = try scriptedStore { r in
            guard Self.isObjectListing(r) else { return nil }
            switch r.query.first(where: { $0.0 == "continuation-token" })?.1 {
            case nil: return Self.page(["p/x/a"], truncated: true, token: "T1")
            case "T1": return Self.page(["p/x/b"], truncated: true, token: "T2")
            default: return Self.page(["p/x/c"], truncated: true, token: "T1")
            }
        }
        XCTAssertThrowsError(try store.listKeys(0, prefix: "")) { e in
            XCTAssertEqual((e as? StoreError)?.code, .ioError, "\(e)")
            XCTAssertTrue("\(e)".contains("\"T1\""), "\(e)")
        }
        XCTAssertEqual(transport.requests(where: Self.isObjectListing).count, 3)
    }

    func testATruncatedPageWithoutATokenIsAnIOErrorNotAPartialList() throws {
        let (store, transport) = try scriptedStore { r in
            Self.isObjectListing(r) ? Self.page(["p/x/a", "p/x/b"], truncated: true, token: nil) : nil
        }
        XCTAssertThrowsError(try store.listKeys(0, prefix: "")) { e in
            XCTAssertEqual((e as? StoreError)?.code, .ioError, "\(e)")
            XCTAssertEqual((e as? StoreError)?.replica, 0, "\(e)")
            XCTAssertTrue("\(e)".contains("s3://\(Self.bucket)/p/x/"), "\(e)")
            XCTAssertTrue("\(e)".contains("no NextContinuationToken"), "\(e)")
        }
        XCTAssertEqual(transport.requests(where: Self.isObjectListing).count, 1)
        // Paging that does end still returns every page.
        let (good, _) = try scriptedStore { r in
            guard Self.isObjectListing(r) else { return nil }
            return r.query.contains { $0.0 == "continuation-token" } ? Self.page(["p/x/b"], truncated: false, token: nil)
                : Self.page(["p/x/a"], truncated: true, token: "T")
        }
        XCTAssertEqual(try good.listKeys(0, prefix: ""), ["a", "b"])
    }

    func testAnUploadListingThatRepeatsOrLacksItsMarkersIsAnIOErrorAndFsckSaysSo() throws {
        let old = "2010-11-10T20:48:33.000Z"
        let (repeating, t1) = try scriptedStore { r in
            Self.isUploadListing(r) ? Self.uploads([("p/x/k", "U1", old)], truncated: true, markers: ("p/x/k", "U1")) : nil
        }
        XCTAssertThrowsError(try repeating.listUploads(0)) { e in
            XCTAssertEqual((e as? StoreError)?.code, .ioError, "\(e)")
            XCTAssertTrue("\(e)".contains("repeated the markers"), "\(e)")
            XCTAssertTrue("\(e)".contains("s3://\(Self.bucket)/p/x/"), "\(e)")
        }
        XCTAssertEqual(t1.requests(where: Self.isUploadListing).count, 2)
        // fsck neither hangs nor aborts anything from a listing it cannot trust, and says why.
        let report = repeating.fsck()
        XCTAssertEqual(report.tempsRemoved, [])
        XCTAssertEqual(t1.requests(where: { $0.method == "DELETE" }).count, 0)
        XCTAssertEqual(repeating.fsckSkipped.count, 1)
        XCTAssertTrue(repeating.fsckSkipped.first?.contains("multipart uploads not listed") == true, "\(repeating.fsckSkipped)")

        let (unmarked, t2) = try scriptedStore { r in
            Self.isUploadListing(r) ? Self.uploads([("p/x/k", "U1", old)], truncated: true) : nil
        }
        XCTAssertThrowsError(try unmarked.listUploads(0)) { e in
            XCTAssertEqual((e as? StoreError)?.code, .ioError, "\(e)")
            XCTAssertTrue("\(e)".contains("no NextKeyMarker"), "\(e)")
        }
        XCTAssertEqual(t2.requests(where: Self.isUploadListing).count, 1)
    }

    // MARK: finding 7: an upload of unknown age

    func testAnUploadWhoseInitiatedDateDoesNotParseIsSkippedNotAborted() throws {
        let (store, transport) = try scriptedStore { r in
            if Self.isUploadListing(r) {
                return Self.uploads([("p/x/live", "U-live", "2026-11-29 06:23:19"), ("p/x/old", "U-old", "2010-11-10T20:48:33.000Z")])
            }
            if r.method == "DELETE" { return S3Response(status: 204, headers: [:], body: []) }
            return nil
        }
        let report = store.fsck()
        let deletes = transport.requests(where: { $0.method == "DELETE" })
        XCTAssertEqual(deletes.map(\.key), ["p/x/old"], "only the upload known to be old is aborted")
        XCTAssertEqual(deletes.first?.query.first { $0.0 == "uploadId" }?.1, "U-old")
        XCTAssertEqual(report.tempsRemoved, ["s3://\(Self.bucket)/p/x/old (multipart upload U-old)"])
        XCTAssertEqual(store.fsckSkipped.count, 1, "\(store.fsckSkipped)")
        XCTAssertTrue(store.fsckSkipped.first?.contains("p/x/live (multipart upload U-live)") == true, "\(store.fsckSkipped)")
        XCTAssertTrue(store.fsckSkipped.first?.contains("\"2026-11-29 06:23:19\" does not parse") == true, "\(store.fsckSkipped)")
        XCTAssertNil(try store.listUploads(0).first { $0.key == "p/x/live" }?.initiatedMillis)
    }

    // MARK: finding 10: keys outside the prefix

    func testKeysAndUploadsOutsideThePrefixAreNotTakenAsOurs() throws {
        // This server ignores `prefix`: it lists the whole bucket whatever was asked.
        let (store, transport) = try scriptedStore { r in
            if Self.isObjectListing(r) {
                return Self.page(["other/b", "p/x/.hsmbackup/REPLICA", "p/x/a", "p/x/d/e", "p/xy/c", "q/p/x/f"], truncated: false, token: nil)
            }
            if Self.isUploadListing(r) {
                return Self.uploads([("other/k", "U-other", "2010-11-10T20:48:33.000Z"), ("p/x/k", "U-ours", "2010-11-10T20:48:33.000Z")])
            }
            if r.method == "DELETE" { return S3Response(status: 204, headers: [:], body: []) }
            return nil
        }
        XCTAssertEqual(try store.listKeys(0, prefix: ""), ["a", "d/e"])
        XCTAssertEqual(try store.listKeys(0, prefix: "d/"), ["d/e"])
        XCTAssertEqual(try store.list(prefix: ""), ["a", "d/e"])
        XCTAssertEqual(try store.listUploads(0).map(\.key), ["p/x/k"])
        _ = store.fsck()
        XCTAssertEqual(transport.requests(where: { $0.method == "DELETE" }).map(\.key), ["p/x/k"], "another store's upload is not aborted")
    }

    // MARK: finding 8: bucket names with dots

    func testABucketNameWithADotIsAddressedPathStyleOnAWS() throws {
        let aws = S3Endpoint(url: nil, region: "eu-west-1")
        XCTAssertEqual(aws.url(bucket: "a.b.c", encodedKey: "k/1"), "https://s3.eu-west-1.amazonaws.com/a.b.c/k/1")
        XCTAssertEqual(aws.url(bucket: "a.b.c", encodedKey: ""), "https://s3.eu-west-1.amazonaws.com/a.b.c/")
        XCTAssertTrue(aws.pathStyle(bucket: "a.b.c"))
        XCTAssertEqual(aws.url(bucket: "abc", encodedKey: "k"), "https://abc.s3.eu-west-1.amazonaws.com/k")
        XCTAssertFalse(aws.pathStyle(bucket: "abc"))
        XCTAssertEqual(S3Endpoint(url: "http://h:1", region: "us-east-1").url(bucket: "a.b", encodedKey: "k"), "http://h:1/a.b/k")

        // What the transport actually sends (the signed host is the URL's).
        let http = URLRecordingHTTP()
        let t = AWSCoreS3Transport(credentials: AWSCredentials(accessKeyID: "AKIDEXAMPLE", secretAccessKey: AWSSecretKey("secret")),
                                   http: http, retry: .none)
        _ = try t.send(S3Request(method: "GET", bucket: "a.b.c", key: "k/1"), endpoint: aws)
        _ = try t.send(S3Request(method: "GET", bucket: "abc", key: "k/1"), endpoint: aws)
        XCTAssertEqual(http.requests.map(\.url.absoluteString), ["https://s3.eu-west-1.amazonaws.com/a.b.c/k/1",
                                                                 "https://abc.s3.eu-west-1.amazonaws.com/k/1"])
    }

    // MARK: finding 9: part sizes

    func testAPartSizeThatCannotReachTheLargestObjectIsRefusedWithTheReason() throws {
        let replicas = [S3StoreConfiguration.Replica(location: try S3Location(url: "s3://bucket-one/p"),
                                                     endpoint: S3Endpoint(url: "http://127.0.0.1:9000", region: "us-east-1"))]
        for mib in [5, 6] {
            XCTAssertThrowsError(try S3StoreConfiguration(storeId: Self.storeId, writeQuorum: 1, replicas: replicas, partSize: mib << 20)) { e in
                XCTAssertEqual((e as? StoreError)?.code, .invalidArgument, "\(e)")
                XCTAssertTrue("\(e)".contains("7...64 MiB"), "\(e)")
                XCTAssertTrue("\(e)".contains("10000 parts"), "\(e)")
                XCTAssertTrue("\(e)".contains("64 GiB"), "\(e)")
            }
        }
        XCTAssertEqual(S3StoreConfiguration.partSizeRange, (7 << 20)...(64 << 20))
        XCTAssertGreaterThanOrEqual(UInt64(S3StoreConfiguration.partSizeRange.lowerBound) * 10_000, ObjectRecord.maxObjectSize)
        XCTAssertLessThan(UInt64(S3StoreConfiguration.partSizeRange.lowerBound - ObjectRecord.defaultChunkSize) * 10_000, ObjectRecord.maxObjectSize)
        XCTAssertEqual(try S3StoreConfiguration(storeId: Self.storeId, writeQuorum: 1, replicas: replicas, partSize: 7 << 20).partSize, 7 << 20)
        // A store made before the rule (5 MiB in its file) still opens, unchanged on disk; its
        // uploads use 7 MiB parts. Below 5 MiB is refused as before.
        let file = try S3StoreConfiguration(storeId: Self.storeId, writeQuorum: 1, replicas: replicas).encode()
        let small = String(decoding: file, as: UTF8.self).replacingOccurrences(of: "\"partSize\" : 8388608", with: "\"partSize\" : 5242880")
            .replacingOccurrences(of: "\"singlePutLimit\" : 8388608", with: "\"singlePutLimit\" : 5242880")
        XCTAssertNotEqual(Array(small.utf8), file)
        let legacy = try S3StoreConfiguration.parse(Array(small.utf8), path: "x/store.json")
        XCTAssertEqual(legacy.partSize, 5 << 20)
        XCTAssertEqual(legacy.uploadPartSize, 7 << 20)
        XCTAssertEqual(try legacy.encode(), Array(small.utf8))
        let tiny = small.replacingOccurrences(of: "\"partSize\" : 5242880", with: "\"partSize\" : 4194304")
        XCTAssertThrowsError(try S3StoreConfiguration.parse(Array(tiny.utf8), path: "x/store.json")) { e in
            XCTAssertEqual((e as? StoreError)?.code, .badFormat, "\(e)")
        }
    }

    // MARK: finding 4: a failed init (moto)

    /// Replica 1 refuses its marker: init fails with access denied, and takes back the marker it
    /// wrote on replica 0 and the buckets it created; a rerun then succeeds.
    func testAFailedInitTakesBackWhatItWroteAndARerunSucceeds() throws {
        let moto = try Moto.require()
        let buckets = (0..<3).map { _ in Moto.bucketName("init") }
        // Replica 0's bucket was there before (it must stay); the other two init creates.
        XCTAssertTrue(try moto.raw("PUT", buckets[0]).isSuccess)
        let replicas = try buckets.map {
            S3StoreConfiguration.Replica(location: try S3Location(bucket: $0, prefix: "p/x"), endpoint: S3Endpoint(url: moto.endpoint, region: moto.region))
        }
        let config = try S3StoreConfiguration(storeId: SecureRandom.bytes(count: 16), writeQuorum: 2, replicas: replicas)
        let root = NSTemporaryDirectory() + "hsmb-s3init-" + UUID().uuidString
        addTeardownBlock { try? FileManager.default.removeItem(atPath: root) }

        XCTAssertThrowsError(try StoreLocator.createS3(root: root, configuration: config,
                                                       transport: MarkerRefusingTransport(moto.transport(), bucket: buckets[1]))) { e in
            XCTAssertEqual((e as? StoreError)?.code, .accessDenied, "\(e)")
            XCTAssertEqual((e as? StoreError)?.replica, 1, "\(e)")
            XCTAssertTrue("\(e)".contains("AccessDenied"), "\(e)")
            XCTAssertFalse("\(e)".contains("could not undo"), "\(e)")
        }
        let marker = replicas[0].location.key(S3ObjectStore.markerName)
        XCTAssertEqual(try moto.raw("GET", buckets[0], marker).status, 404, "replica 0's marker was taken back")
        XCTAssertTrue(try moto.raw("GET", buckets[0], query: [("list-type", "2")]).isSuccess, "a bucket that was there stays")
        for b in buckets[1...] {
            XCTAssertTrue(String(decoding: try moto.raw("GET", b, query: [("list-type", "2")]).body, as: UTF8.self).contains("NoSuchBucket"),
                          "the bucket init created is removed again")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: root + "/" + S3StoreConfiguration.fileName))

        let store = try StoreLocator.createS3(root: root, configuration: config, transport: moto.transport())
        XCTAssertEqual((0..<3).compactMap { store.replicaStatus($0) }, [])
        _ = try store.put("k", bytes: pattern(1000, seed: 80))
        XCTAssertEqual(try store.getAll("k"), pattern(1000, seed: 80))
    }

    /// A location holding another store's marker is refused before anything is written anywhere,
    /// and the other store's marker stays as it was.
    func testInitRefusesAnotherStoresLocationBeforeWritingAnything() throws {
        let moto = try Moto.require()
        let (theirs, theirConfig) = try moto.makeStore(replicas: 1)
        let taken = theirConfig.replicas[0]
        let fresh = Moto.bucketName("init")
        let config = try S3StoreConfiguration(storeId: SecureRandom.bytes(count: 16), writeQuorum: 1, replicas: [
            .init(location: try S3Location(bucket: fresh, prefix: "p/x"), endpoint: taken.endpoint), taken,
        ])
        let root = NSTemporaryDirectory() + "hsmb-s3init-" + UUID().uuidString
        XCTAssertThrowsError(try StoreLocator.createS3(root: root, configuration: config, transport: moto.transport())) { e in
            XCTAssertEqual((e as? StoreError)?.code, .alreadyInitialized, "\(e)")
            XCTAssertEqual((e as? StoreError)?.replica, 1, "\(e)")
        }
        XCTAssertTrue(String(decoding: try moto.raw("GET", fresh, query: [("list-type", "2")]).body, as: UTF8.self).contains("NoSuchBucket"),
                      "nothing was created before the check")
        let marker = try moto.raw("GET", taken.location.bucket, taken.location.key(S3ObjectStore.markerName))
        XCTAssertEqual(try ReplicaMarker.parse(marker.body), ReplicaMarker(storeId: theirConfig.storeId, index: 0))
        theirs.invalidateMarker(0)
        XCTAssertNil(theirs.replicaStatus(0))
    }
}
