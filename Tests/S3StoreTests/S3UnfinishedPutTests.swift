// A put that fails (or dies) between publishing an object and its checksum record must not leave
// the store stuck: the writer undoes what it published when it misses its quorum, and the
// catalog treats a metadata or policy object with no record on any location as never written.
import AWSCore
import BackupCrypto
import Foundation
@testable import ObjectStore
@testable import S3Store
import XCTest

/// Wraps the real transport: requests `refuse` matches answer 503 (after the retries, as the
/// store sees a location that stays down for that one request).
final class RefusingTransport: S3Transport, @unchecked Sendable {
    let inner: S3Transport
    let refuse: @Sendable (S3Request) -> Bool
    private let lock = NSLock()
    private var _refused = 0
    var refused: Int { lock.lock(); defer { lock.unlock() }; return _refused }

    init(_ inner: S3Transport, refuse: @escaping @Sendable (S3Request) -> Bool) { self.inner = inner; self.refuse = refuse }

    func send(_ r: S3Request, endpoint: S3Endpoint) throws -> S3Response {
        if refuse(r) {
            lock.lock(); _refused += 1; lock.unlock()
            throw S3ServiceError(status: 503, code: "ServiceUnavailable", message: "refused by the test", request: r.summary)
        }
        return try inner.send(r, endpoint: endpoint)
    }

    func holdsBodiesOnce(_ endpoint: S3Endpoint) -> Bool { inner.holdsBodiesOnce(endpoint) }
}

/// Wraps the real transport: a matching request is sent twice, as a retry after a lost answer
/// would send it, and the second answer is what the store sees.
final class ResendingTransport: S3Transport, @unchecked Sendable {
    let inner: S3Transport
    let resend: @Sendable (S3Request) -> Bool
    init(_ inner: S3Transport, resend: @escaping @Sendable (S3Request) -> Bool) { self.inner = inner; self.resend = resend }
    func send(_ r: S3Request, endpoint: S3Endpoint) throws -> S3Response {
        if resend(r) { _ = try inner.send(r, endpoint: endpoint) }
        return try inner.send(r, endpoint: endpoint)
    }
}

final class S3UnfinishedPutTests: XCTestCase {
    /// Replica 1 refuses the object's PUT, so a 2-of-2 put misses its quorum after replica 0 took
    /// the object: the writer deletes replica 0's copy, and a retry succeeds.
    func testAPutThatMissesItsQuorumAfterPublishingLeavesNoObject() throws {
        let moto = try Moto.require()
        let (store, config) = try moto.makeStore(replicas: 2, quorum: 2)
        let root = (store.location as NSString).deletingLastPathComponent
        let bucket1 = config.replicas[1].location.bucket
        let refusing = RefusingTransport(moto.transport()) { r in
            r.method == "PUT" && r.bucket == bucket1 && r.key.hasSuffix("/half") && !r.key.contains(".hsmbackup")
        }
        let flaky = try StoreLocator.openS3(root: root, transport: refusing)
        XCTAssertThrowsError(try flaky.put("half", bytes: pattern(1000, seed: 1))) { e in
            XCTAssertEqual((e as? StoreError)?.code, .quorumNotReached, "\(e)")
        }
        XCTAssertEqual(refusing.refused, 1)
        let head = try moto.raw("HEAD", config.replicas[0].location.bucket, "p/x/half")
        XCTAssertEqual(head.status, 404, "the copy replica 0 took was removed")
        XCTAssertFalse(store.anyReplicaHolds("half"))
        _ = try store.put("half", bytes: pattern(1000, seed: 2))
        XCTAssertEqual(try store.getAll("half"), pattern(1000, seed: 2))
    }

    /// A metadata generation whose put died between object and record (simulated: the object
    /// written out of band, no record anywhere) does not block the backup's next change, and
    /// `recover` removes one it finds too.
    func testAMetadataObjectWithoutARecordCountsAsNeverWritten() throws {
        let moto = try Moto.require()
        let (store, config) = try moto.makeStore(replicas: 2, quorum: 2)
        let catalog = try BackupCatalog(store: store)
        let e = try catalog.add(NewBackup(backupId: "b1", clusterId: "c", hsmId: "h", manufacturer: "sim"),
                                archive: BytesSource(pattern(100, seed: 1))).entry
        let orphan = BackupCatalog.metaKey("b1", e.generation + 1)
        _ = try moto.raw("PUT", config.replicas[0].location.bucket, "p/x/" + orphan, body: Array("{\"half\":".utf8))
        XCTAssertTrue(store.anyReplicaHolds(orphan))

        let tagged = try catalog.tag("b1", ["k": "v"])
        XCTAssertEqual(tagged.generation, e.generation + 1)
        XCTAssertEqual(tagged.tags, ["k": "v"])
        XCTAssertEqual(try catalog.readMeta("b1", tagged.generation).tags, ["k": "v"], "the new generation has a record and reads")

        // The same left behind by a change of another backup: `recover` drops it and adopts nothing.
        let b2 = try catalog.add(NewBackup(backupId: "b2", clusterId: "c", hsmId: "h", manufacturer: "sim"),
                                 archive: BytesSource(pattern(100, seed: 2))).entry
        let orphan2 = BackupCatalog.metaKey("b2", b2.generation + 1)
        _ = try moto.raw("PUT", config.replicas[1].location.bucket, "p/x/" + orphan2, body: Array("{}".utf8))
        _ = try catalog.recoverBackup("b2")
        XCTAssertFalse(store.anyReplicaHolds(orphan2))
        XCTAssertEqual(try catalog.tag("b2", ["a": "b"]).generation, b2.generation + 1)
    }

    /// A metadata object that has a record but does not read (damage, not an unfinished put) is
    /// not deleted: the change is refused as before, naming scrub and reindex.
    func testADamagedMetadataObjectWithARecordIsKept() throws {
        let moto = try Moto.require()
        let (store, _) = try moto.makeStore(replicas: 2, quorum: 2)
        let catalog = try BackupCatalog(store: store)
        let e = try catalog.create(NewBackup(backupId: "b1", clusterId: "c", hsmId: "h", manufacturer: "sim"))
        let next = BackupCatalog.metaKey("b1", e.generation + 1)
        _ = try store.put(next, bytes: Array("not metadata".utf8))
        XCTAssertThrowsError(try catalog.tag("b1", ["k": "v"])) { err in
            XCTAssertEqual((err as? StoreError)?.code, .badCatalog, "\(err)")
        }
        XCTAssertFalse(try store.removeUnfinishedPut(next))
        XCTAssertEqual(try store.getAll(next), Array("not metadata".utf8))
    }

    /// A retention policy generation left without a record does not make `setRetention` fail
    /// with alreadyExists on every retry.
    func testAPolicyObjectWithoutARecordDoesNotBlockTheNextPolicy() throws {
        let moto = try Moto.require()
        let (store, config) = try moto.makeStore(replicas: 2, quorum: 2)
        let catalog = try BackupCatalog(store: store)
        try catalog.setRetention("c", days: 30)
        _ = try moto.raw("PUT", config.replicas[0].location.bucket, "p/x/" + BackupCatalog.policyKey("c", 2), body: Array("{".utf8))
        try catalog.setRetention("c", days: 40)
        XCTAssertEqual(try catalog.load().policies["c"]?.days, 40)
        XCTAssertFalse(store.anyReplicaHolds(BackupCatalog.policyKey("c", 2)), "the leftover generation is gone")
        try catalog.setRetention("c", days: 50)
        XCTAssertEqual(try catalog.load().policies["c"]?.days, 50)
    }

    /// A create-only PUT whose first attempt was applied and whose retry got 412 is our own
    /// object: the put succeeds. Different bytes under the key are still refused.
    func testARetriedCreateOnlyPutThatFindsItsOwnBytesSucceeds() throws {
        let moto = try Moto.require()
        let (store, _) = try moto.makeStore(replicas: 2, quorum: 2)
        let root = (store.location as NSString).deletingLastPathComponent
        let twice = try StoreLocator.openS3(root: root, transport: ResendingTransport(moto.transport()) { r in
            r.method == "PUT" && r.key.hasSuffix("/again") && !r.key.contains(".hsmbackup")
        })
        _ = try twice.put("again", bytes: pattern(2000, seed: 3))
        XCTAssertEqual(try store.getAll("again"), pattern(2000, seed: 3))
        XCTAssertTrue(store.verifyReplicas("again").isEmpty)

        // Someone else's bytes under the key (the pre-check blinded): still alreadyExists.
        _ = try store.put("theirs", bytes: pattern(2000, seed: 4))
        let blind = try StoreLocator.openS3(root: root, transport: HidingTransport(moto.transport(), hiding: "theirs"))
        XCTAssertThrowsError(try blind.put("theirs", bytes: pattern(2000, seed: 5))) { e in
            XCTAssertEqual((e as? StoreError)?.code, .alreadyExists, "\(e)")
        }
        XCTAssertEqual(try store.getAll("theirs"), pattern(2000, seed: 4))
    }

    /// A catalog PUT sent twice (the retry of a lost answer gets 412: its ETag is stale) counts
    /// as written: the change that wrote it succeeds, and the next change too.
    func testARetriedCatalogWriteThatFindsItsOwnBytesSucceeds() throws {
        let moto = try Moto.require()
        let (store, _) = try moto.makeStore(replicas: 2, quorum: 2)
        let root = (store.location as NSString).deletingLastPathComponent
        _ = try BackupCatalog(store: store)
        let twice = try StoreLocator.openS3(root: root, transport: ResendingTransport(moto.transport()) { r in
            r.method == "PUT" && r.key.hasSuffix(".hsmbackup/catalog.bin")
        })
        let catalog = try BackupCatalog(store: twice)
        let e = try catalog.add(NewBackup(backupId: "b1", clusterId: "c", hsmId: "h", manufacturer: "sim"),
                                archive: BytesSource(pattern(100, seed: 1))).entry
        XCTAssertEqual(try catalog.tag("b1", ["k": "v"]).generation, e.generation + 1)
        XCTAssertEqual(try BackupCatalog(store: store).entry("b1").tags, ["k": "v"])
    }

    /// A store init whose marker and CreateBucket requests were each sent twice (the retry of a
    /// lost answer) and which then fails on another replica takes back that marker too: it is
    /// this run's. The bucket the retried request made stays (it may as well be another init's),
    /// empty; a rerun succeeds.
    func testAFailedInitTakesBackWhatARetriedRequestMade() throws {
        let moto = try Moto.require()
        let buckets = (0..<2).map { _ in Moto.bucketName("retry") }
        let replicas = try buckets.map {
            S3StoreConfiguration.Replica(location: try S3Location(bucket: $0, prefix: "p/x"), endpoint: S3Endpoint(url: moto.endpoint, region: moto.region))
        }
        let config = try S3StoreConfiguration(storeId: SecureRandom.bytes(count: 16), writeQuorum: 2, replicas: replicas)
        let root = NSTemporaryDirectory() + "hsmb-s3retry-" + UUID().uuidString
        addTeardownBlock { try? FileManager.default.removeItem(atPath: root) }
        let first = buckets[0], second = buckets[1]
        let twice = ResendingTransport(moto.transport()) { r in r.method == "PUT" && r.bucket == first }
        let flaky = RefusingTransport(twice) { r in r.method == "PUT" && r.bucket == second && r.key.contains(".hsmbackup") }
        XCTAssertThrowsError(try StoreLocator.createS3(root: root, configuration: config, transport: flaky)) { e in
            XCTAssertFalse("\(e)".contains("could not undo"), "\(e)")
        }
        XCTAssertEqual(try moto.raw("GET", first, replicas[0].location.key(S3ObjectStore.markerName)).status, 404, "the retried marker is taken back")
        XCTAssertTrue(String(decoding: try moto.raw("GET", second, query: [("list-type", "2")]).body, as: UTF8.self).contains("NoSuchBucket"),
                      "the bucket init created is removed again")
        _ = try StoreLocator.createS3(root: root, configuration: config, transport: moto.transport())
    }
}
