// S3ObjectStore against a real moto server: round trips (single PUT and multipart), create-only
// puts (the 412), a lost replica bucket, out-of-band overwrites, throttling through a 503-injecting
// proxy, wrong credentials, clock skew corrected through a skew-enforcing proxy.
import AWSCore
import BackupCrypto
import ByteCoding
import Foundation
import ObjectStore
@testable import S3Store
import XCTest

final class S3ObjectStoreTests: XCTestCase {
    func testRoundTripsSinglePutAndMultipartWithRangedVerifiedReads() throws {
        let moto = try Moto.require()
        let (store, config) = try moto.makeStore(replicas: 2)
        let small = pattern(100_000, seed: 1)
        let big = pattern(16 << 20 | 12345, seed: 2) // three 7 MiB parts (the last short), 17 record chunks
        let p1 = try store.put("a/small", bytes: small)
        XCTAssertEqual(p1.written, [0, 1])
        let p2 = try store.put("a/big", from: BytesSource(big))
        XCTAssertEqual(p2.written, [0, 1])
        XCTAssertEqual(p2.info.sha256, Hex.encode(SHA256Hasher.hash(big)))
        XCTAssertEqual(try store.getAll("a/small"), small)
        XCTAssertEqual(try store.getAll("a/big", limit: 64 << 20), big)
        XCTAssertEqual(try store.stat("a/big").size, UInt64(big.count))
        XCTAssertEqual(try store.stat("a/big").replicas, [0, 1])
        XCTAssertEqual(try store.list(prefix: "a/"), ["a/big", "a/small"])
        XCTAssertEqual(try store.put("empty", bytes: []).info.size, 0)
        XCTAssertEqual(try store.getAll("empty"), [])
        // The bytes in the bucket are the object exactly (what `aws s3 cp` fetches).
        let raw = try moto.raw("GET", config.replicas[1].location.bucket, config.replicas[1].location.key("a/small"))
        XCTAssertEqual(raw.body, small)
        // No multipart upload stays open after a completed put.
        XCTAssertEqual(try store.listUploads(0).count, 0)
        XCTAssertTrue(store.verifyReplicas("a/big").isEmpty)
        // Delete removes object and record everywhere; then it is not found.
        XCTAssertEqual(try store.delete("a/big").removed, [0, 1])
        XCTAssertThrowsError(try store.stat("a/big")) { XCTAssertEqual(($0 as? StoreError)?.code, .notFound) }
        XCTAssertThrowsError(try store.delete("a/big")) { XCTAssertEqual(($0 as? StoreError)?.code, .notFound) }
        XCTAssertEqual(try store.list(prefix: ""), ["a/small", "empty"])
    }

    func testListingPagesPastAThousandKeys() throws {
        let moto = try Moto.require()
        let (store, config) = try moto.makeStore(replicas: 1)
        // 1,005 objects written straight into the bucket: the listing must page (1,000 per page).
        let loc = config.replicas[0].location
        let errors = LockedBox<[String]>([])
        // Eight workers (not a thousand queued blocks: each request blocks its thread).
        DispatchQueue.concurrentPerform(iterations: 8) { w in
            for i in stride(from: w, to: 1005, by: 8) {
                do { _ = try moto.raw("PUT", loc.bucket, loc.key(String(format: "many/k%04d", i)), body: [1]) } catch {
                    errors.mutate { $0.append("\(error)") }
                }
            }
        }
        XCTAssertEqual(errors.value, [])
        let keys = try store.list(prefix: "many/")
        XCTAssertEqual(keys.count, 1005)
        XCTAssertEqual(keys.first, "many/k0000")
        XCTAssertEqual(keys.last, "many/k1004")
    }

    func testADuplicateCreateIsAlreadyExistsFromThe412AndNothingOfOursStays() throws {
        let moto = try Moto.require()
        let (store, config) = try moto.makeStore(replicas: 2)
        _ = try store.put("dup", bytes: pattern(1000, seed: 3))
        // The pre-check sees it.
        XCTAssertThrowsError(try store.put("dup", bytes: pattern(1000, seed: 4))) { XCTAssertEqual(($0 as? StoreError)?.code, .alreadyExists) }
        // With the pre-check blinded, the create-only PUT itself answers 412 on both replicas.
        let blind = try StoreLocator.openS3(root: (store.location as NSString).deletingLastPathComponent,
                                            transport: HidingTransport(moto.transport(), hiding: "dup"))
        XCTAssertThrowsError(try blind.put("dup", bytes: pattern(1000, seed: 5))) { e in
            XCTAssertEqual((e as? StoreError)?.code, .alreadyExists, "\(e)")
            XCTAssertTrue("\(e)".contains("PreconditionFailed"), "\(e)")
        }
        // Multipart: Complete with If-None-Match answers 412 too; the upload is aborted.
        _ = try store.put("dupbig", from: BytesSource(pattern(8 << 20, seed: 6)))
        let blindBig = try StoreLocator.openS3(root: (store.location as NSString).deletingLastPathComponent,
                                               transport: HidingTransport(moto.transport(), hiding: "dupbig"))
        XCTAssertThrowsError(try blindBig.put("dupbig", from: BytesSource(pattern(8 << 20, seed: 7)))) {
            XCTAssertEqual(($0 as? StoreError)?.code, .alreadyExists, "\($0)")
        }
        XCTAssertEqual(try store.getAll("dup"), pattern(1000, seed: 3))
        XCTAssertEqual(try store.getAll("dupbig", limit: 8 << 20), pattern(8 << 20, seed: 6))
        for i in 0..<2 { XCTAssertEqual(try store.listUploads(i).count, 0, "replica \(i)") }
        XCTAssertTrue(store.verifyReplicas("dup").isEmpty)
        _ = config
    }

    func testALostReplicaBucketIsReadAroundAndRecreatedByScrubRepair() throws {
        let moto = try Moto.require()
        let (store, config) = try moto.makeStore(replicas: 3, quorum: 2)
        let objects = (0..<3).map { pattern(300_000 + $0, seed: UInt64(10 + $0)) }
        for (i, o) in objects.enumerated() { _ = try store.put("k/\(i)", bytes: o) }
        try moto.destroyBucket(config.replicas[2].location.bucket)

        // A fresh handle (as the next command would open it): reads go around the lost bucket.
        let root = (store.location as NSString).deletingLastPathComponent
        let s2 = try StoreLocator.openS3(root: root, transport: moto.transport())
        XCTAssertEqual(s2.replicaStatus(2)?.problem, .replicaUnavailable)
        let r = try s2.get("k/1") as! S3ObjectReader
        var got: [UInt8] = []
        while let p = try r.read() { got += p }
        XCTAssertEqual(got, objects[1])
        // A put still reaches the quorum, and says which replica failed.
        let put = try s2.put("k/new", bytes: pattern(5000, seed: 20))
        XCTAssertEqual(put.written, [0, 1])
        XCTAssertEqual(put.failed.map(\.replica), [2])

        let before = try s2.scrub(repair: false)
        XCTAssertEqual(before.unavailableReplicas.map(\.replica), [2])
        XCTAssertFalse(before.isClean)
        let repaired = try s2.scrub(repair: true)
        XCTAssertEqual(repaired.recreatedReplicas, [2])
        XCTAssertEqual(repaired.missing, 4, "\(repaired.findings)")
        XCTAssertEqual(repaired.repaired, 4)
        let after = try s2.scrub(repair: false)
        XCTAssertTrue(after.isClean, "\(after)")
        // The re-created bucket holds the objects again, byte for byte.
        let loc = config.replicas[2].location
        XCTAssertEqual(try moto.raw("GET", loc.bucket, loc.key("k/2")).body, objects[2])
    }

    func testAnOutOfBandOverwriteIsFoundByScrubAndRepaired() throws {
        let moto = try Moto.require()
        let (store, config) = try moto.makeStore(replicas: 3)
        let good = pattern(3 << 20, seed: 30)
        _ = try store.put("victim", bytes: good)
        _ = try store.put("victim2", bytes: good)
        var evil = good
        evil[1_500_000] ^= 0xff // same length, one byte different
        let l1 = config.replicas[1].location, l2 = config.replicas[2].location
        XCTAssertTrue(try moto.raw("PUT", l1.bucket, l1.key("victim"), body: evil).isSuccess)
        XCTAssertTrue(try moto.raw("PUT", l2.bucket, l2.key("victim2"), body: Array(good.prefix(1000))).isSuccess)

        let found = store.verifyReplicas("victim")
        XCTAssertEqual(found.map(\.replica), [1])
        XCTAssertEqual(found.first?.problem, .chunkMismatch)
        XCTAssertEqual(found.first?.chunk, 1)
        XCTAssertEqual(store.verifyReplicas("victim2").map(\.problem), [.sizeMismatch])

        let report = try store.scrub(repair: true)
        XCTAssertEqual(report.corrupt, 2, "\(report.findings)")
        XCTAssertEqual(report.repaired, 2)
        XCTAssertTrue(try store.scrub(repair: false).isClean)
        XCTAssertEqual(try moto.raw("GET", l1.bucket, l1.key("victim")).body, good)

        // A read that meets a bad replica first still returns the right bytes and repairs it.
        XCTAssertTrue(try moto.raw("PUT", config.replicas[0].location.bucket, config.replicas[0].location.key("victim"), body: evil).isSuccess)
        let r = try store.get("victim") as! S3ObjectReader
        var got: [UInt8] = []
        while let p = try r.read() { got += p }
        XCTAssertEqual(got, good)
        XCTAssertEqual(r.findings.map(\.replica), [0])
        XCTAssertEqual(r.repaired, [0])
        XCTAssertTrue(store.verifyReplicas("victim").isEmpty)
    }

    /// Ranged reads run several windows ahead; a bad chunk deep in the object (after windows
    /// already handed out, with later windows in flight) makes the reader drop that replica,
    /// discard what it fetched ahead from it, and go on from the same chunk on the next replica.
    func testAReadFailsOverMidObjectWithWindowsInFlight() throws {
        let moto = try Moto.require()
        let (store, config) = try moto.makeStore(replicas: 2)
        let good = pattern(23 << 20 | 777, seed: 45) // 24 record chunks: several windows, several parts
        _ = try store.put("deep", bytes: good)
        var evil = good
        evil[(17 << 20) + 5] ^= 0x01 // chunk 17
        let l0 = config.replicas[0].location
        XCTAssertTrue(try moto.raw("PUT", l0.bucket, l0.key("deep"), body: evil).isSuccess)
        let r = try store.get("deep") as! S3ObjectReader
        var got: [UInt8] = []
        while let p = try r.read() { got += p }
        XCTAssertEqual(got.count, good.count)
        XCTAssertTrue(got == good)
        XCTAssertEqual(r.findings.map(\.replica), [0])
        XCTAssertEqual(r.findings.first?.problem, .chunkMismatch)
        XCTAssertEqual(r.findings.first?.chunk, 17)
        XCTAssertEqual(r.repaired, [0])
        XCTAssertTrue(store.verifyReplicas("deep").isEmpty)
    }

    func testEveryReplicaDamagedIsATypedErrorNeverWrongBytes() throws {
        let moto = try Moto.require()
        let (store, config) = try moto.makeStore(replicas: 2)
        let good = pattern(2 << 20, seed: 40)
        _ = try store.put("x", bytes: good)
        var evil = good
        evil[5] ^= 1
        for r in config.replicas { _ = try moto.raw("PUT", r.location.bucket, r.location.key("x"), body: evil) }
        let reader = try store.get("x")
        XCTAssertThrowsError(try { while try reader.read() != nil {} }()) { e in
            XCTAssertEqual((e as? StoreError)?.code, .unrecoverable)
            XCTAssertEqual((e as? StoreError)?.findings.map(\.problem), [.chunkMismatch, .chunkMismatch])
        }
    }

    func testThrottlingThroughAProxyIsRetriedWithFreshSignatures() throws {
        let moto = try Moto.require()
        let proxy = try FaultProxy(upstream: moto.endpoint, arguments: ["--slowdown", "6"])
        let (store, _) = try moto.makeStore(replicas: 1, endpoint: proxy.url)
        let bytes = pattern(8 << 20, seed: 50) // multipart: every kind of request meets the proxy
        _ = try store.put("thr", from: BytesSource(bytes))
        XCTAssertEqual(try store.getAll("thr", limit: 8 << 20), bytes)
        let s = try proxy.stats()
        XCTAssertEqual(s["slowdown"], 6)
        XCTAssertGreaterThan(s["forwarded"] ?? 0, 6)
    }

    func testWrongCredentialsAreAClearAccessDeniedError() throws {
        let moto = try Moto.require()
        let (store, _) = try moto.makeStore(replicas: 2)
        let root = (store.location as NSString).deletingLastPathComponent
        XCTAssertThrowsError(try StoreLocator.openS3(root: root, transport: moto.transport(secret: "wrong-secret-000000000000000000000000000"))) { e in
            XCTAssertEqual((e as? StoreError)?.code, .accessDenied, "\(e)")
            XCTAssertTrue("\(e)".contains("SignatureDoesNotMatch"), "\(e)")
        }
    }

    func testClockSkewIsCorrectedFromTheDateHeader() throws {
        let moto = try Moto.require()
        let proxy = try FaultProxy(upstream: moto.endpoint, arguments: ["--skew"])
        // This machine's clock is an hour slow: the proxy refuses the first signature, as AWS does.
        let skewed = moto.transport(clock: OffsetClock(offset: -3600))
        let (store, config) = try moto.makeStore(replicas: 1, endpoint: proxy.url, transport: skewed)
        _ = try store.put("skew", bytes: pattern(1000, seed: 60))
        XCTAssertEqual(try store.getAll("skew"), pattern(1000, seed: 60))
        XCTAssertEqual(try proxy.stats()["skewed"], 1)
        let skew = try skewed.clockSkew(config.replicas[0].endpoint, bucket: config.replicas[0].location.bucket)
        XCTAssertEqual(skew, 3600, accuracy: 120)
    }

    func testCatalogIsCompareAndSwap() throws {
        let moto = try Moto.require()
        let (store, _) = try moto.makeStore(replicas: 2)
        let root = (store.location as NSString).deletingLastPathComponent
        let catalog = try BackupCatalog(store: store)
        XCTAssertEqual(try catalog.list().count, 0)
        // Two handles read the same catalog; the first write wins, the second is refused.
        let other = try StoreLocator.openS3(root: root, transport: moto.transport())
        let first = try store.readCatalog(limit: 1 << 20)!
        let second = try other.readCatalog(limit: 1 << 20)!
        XCTAssertEqual(first, second)
        var changed = try CatalogSnapshot.parse(first)
        changed.writeCount += 1
        try store.writeCatalog(try changed.encode())
        var theirs = changed
        theirs.writeCount += 1
        XCTAssertThrowsError(try other.writeCatalog(try theirs.encode())) { e in
            XCTAssertEqual((e as? StoreError)?.code, .invalidState, "\(e)")
        }
        // The same bytes the location already holds are not a lost update: a PUT retried after
        // its answer was lost finds its own catalog there.
        try other.writeCatalog(try changed.encode())
        // After reading again, it may write.
        _ = try other.readCatalog(limit: 1 << 20)
        changed.writeCount += 1
        try other.writeCatalog(try changed.encode())
    }

    func testConfigurationFileIsVersionedAndRoundTrips() throws {
        let c = try S3StoreConfiguration(storeId: Array(repeating: 7, count: 16), writeQuorum: 1, replicas: [
            .init(location: try S3Location(url: "s3://bucket-one/a/b"), endpoint: S3Endpoint(url: "http://127.0.0.1:9000", region: "us-east-1")),
            .init(location: try S3Location(url: "s3://bucket-two"), endpoint: S3Endpoint(url: nil, region: "eu-west-1")),
        ])
        let bytes = try c.encode()
        XCTAssertEqual(try S3StoreConfiguration.parse(bytes, path: "x"), c)
        XCTAssertEqual(try S3StoreConfiguration.parse(bytes, path: "x").encode(), bytes)
        let newer = String(decoding: bytes, as: UTF8.self).replacingOccurrences(of: "\"version\" : 1", with: "\"version\" : 2")
        XCTAssertThrowsError(try S3StoreConfiguration.parse(Array(newer.utf8), path: "x")) { e in
            XCTAssertEqual((e as? StoreError)?.code, .badFormat)
            XCTAssertTrue("\(e)".contains("unknown version 2"), "\(e)")
        }
        for bad in ["s3:/x", "s3://UPPER/x", "s3://ab", "s3://bucket/.hidden", "http://bucket/x"] {
            XCTAssertThrowsError(try S3Location(url: bad), bad)
        }
        XCTAssertEqual(try S3Location(url: "s3://bucket-one/a/b/").key("k"), "a/b/k")
        XCTAssertEqual(S3Endpoint(url: nil, region: "eu-west-1").url(bucket: "b", encodedKey: "k"), "https://b.s3.eu-west-1.amazonaws.com/k")
        XCTAssertEqual(S3Endpoint(url: "http://h:1", region: "us-east-1").url(bucket: "b", encodedKey: "k"), "http://h:1/b/k")
    }
}
