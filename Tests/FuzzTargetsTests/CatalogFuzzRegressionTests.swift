import ByteCoding
import FuzzTargets
import ObjectStore
import XCTest

/// Findings of the catalog-query, backup-meta and retention-policy targets (issue 8), each as a
/// named test; the inputs also live in fuzz/corpus/<target>/regress-* (replayed by
/// FuzzCorpusReplayTests).
final class CatalogFuzzRegressionTests: XCTestCase {
    static func corpusFile(_ target: FuzzTarget, _ name: String) throws -> [UInt8] {
        [UInt8](try Data(contentsOf: URL(fileURLWithPath: FuzzCorpusReplayTests.corpusRoot + "/\(target.rawValue)/\(name)")))
    }

    static func catalog() throws -> [UInt8] {
        var s = CatalogSnapshot()
        for i in 0..<3 {
            s.entries["b\(i)"] = BackupEntry(backupId: "b\(i)", clusterId: "c", hsmId: "h", manufacturer: "m", state: .ready,
                                             createdMillis: UInt64(i), updatedMillis: 0, objectKey: "backups/b\(i)/archive")
        }
        return try s.encode()
    }

    /// catalog-query, first seconds: a negative limit trapped the listing
    /// (`removeLast(count - limit)` with more than `count`); `store ls --limit=-1` crashed the CLI.
    /// It is now `invalidArgument`, from the query, the options parser and the catalog's `list`.
    func testANegativeLimitIsInvalidArgumentNotATrap() throws {
        let cat = try Self.catalog()
        XCTAssertThrowsError(try CatalogSnapshot.query(cat, CatalogQuery(limit: -1))) {
            XCTAssertEqual(($0 as? StoreError)?.code, .invalidArgument)
        }
        XCTAssertThrowsError(try CatalogQueryOptions(limit: -1).query()) { XCTAssertEqual(($0 as? StoreError)?.code, .invalidArgument) }
        XCTAssertEqual(try CatalogSnapshot.query(cat, CatalogQuery(limit: 0)), [])
        XCTAssertEqual(try CatalogSnapshot.query(cat, CatalogQuery(limit: 2)).map(\.backupId), ["b0", "b1"])
        FuzzTarget.catalogQuery.run(try Self.corpusFile(.catalogQuery, "regress-negative-limit"))
    }

    /// backup-meta, first seconds: a metadata object whose object key was not a valid key
    /// ("bac=ups/...") parsed. The entry's strings now follow the writer's rules: ids are key
    /// segments, HSM id, manufacturer and tag keys are non-empty, the source store is a store id,
    /// and the object key lies under the backup's own `backups/<id>/` (so no entry can point
    /// purge at another backup's archive).
    func testMetadataThatNoWriterProducesIsRefused() throws {
        let good = BackupEntry(backupId: "b1", clusterId: "c", hsmId: "h", manufacturer: "m", state: .ready,
                               createdMillis: 1, updatedMillis: 1, objectKey: "backups/b1/archive")
        XCTAssertEqual(try BackupEntry.parseMeta(try good.encodeMeta()), good)
        var rewrapped = good
        rewrapped.objectKey = "backups/b1/archive-g2"
        XCTAssertEqual(try BackupEntry.parseMeta(try rewrapped.encodeMeta()), rewrapped)
        var bad: [(String, BackupEntry)] = []
        for (what, change) in [
            ("key of another backup", { (e: inout BackupEntry) in e.objectKey = "backups/b2/archive" }),
            ("invalid key", { $0.objectKey = "bac=ups/b1/archive" }),
            ("nested key", { $0.objectKey = "backups/b1/x/archive" }),
            ("empty backup id", { $0.backupId = ""; $0.objectKey = "backups//archive" }),
            ("cluster with a slash", { $0.clusterId = "a/b" }),
            ("empty HSM id", { $0.hsmId = "" }),
            ("empty manufacturer", { $0.manufacturer = "" }),
            ("empty tag key", { $0.tags = ["": "v"] }),
            ("source store not an id", { $0.copySource = CopySource(sourceStore: "x", sourceBackupId: "s", sourceCluster: "c", copiedMillis: 0) }),
        ] as [(String, (inout BackupEntry) -> Void)] {
            var e = good
            change(&e)
            bad.append((what, e))
        }
        for (what, e) in bad {
            XCTAssertThrowsError(try BackupEntry.parseMeta(try e.encodeMeta()), what) {
                XCTAssertEqual(($0 as? ByteCodingError)?.code, .unexpectedValue, what)
            }
        }
        FuzzTarget.backupMeta.run(try Self.corpusFile(.backupMeta, "regress-invalid-object-key"))
    }

    /// retention-policy, first seconds: a policy of 0 days (a removed policy) expired every READY
    /// backup of its cluster but the newest. The catalog's policy table could carry one (the
    /// parser took days 0 there); now the table refuses it and the rule expires nothing for it.
    func testARemovedPolicyExpiresNothingAndTheCatalogRefusesIt() throws {
        let entries = (0..<3).map {
            BackupEntry(backupId: "b\($0)", clusterId: "c", hsmId: "h", manufacturer: "m", state: .ready,
                        createdMillis: UInt64($0), updatedMillis: 0, objectKey: "backups/b\($0)/archive")
        }
        let now = 1000 * Millis.day
        XCTAssertEqual(RetentionRules.expired(entries, policy: RetentionPolicy(clusterId: "c", days: 0, generation: 1), nowMillis: now), [])
        XCTAssertEqual(RetentionRules.expired(entries, policy: RetentionPolicy(clusterId: "c", days: 7, generation: 1), nowMillis: now), ["b0", "b1"])
        var s = CatalogSnapshot()
        for e in entries { s.entries[e.backupId] = e }
        s.policies["c"] = RetentionPolicy(clusterId: "c", days: 0, generation: 1)
        XCTAssertThrowsError(try CatalogSnapshot.parse(try s.encode())) {
            XCTAssertEqual(($0 as? ByteCodingError)?.field, "retention days")
        }
        FuzzTarget.retentionPolicy.run(try Self.corpusFile(.retentionPolicy, "regress-removed-policy-expires-all"))
    }

    /// Found while extracting the rules for the target (the oracle checks it on every input):
    /// `created + days` and `requested + window` trapped on times near the end of UInt64
    /// milliseconds, and purge trapped on a PENDING_DELETION entry without a request time
    /// (`(requested ?? UInt64.max) + window`). A time past the end never comes now.
    func testLifecycleTimesNearTheEndOfTimeDoNotTrap() throws {
        func entry(_ state: BackupState, created: UInt64, requested: UInt64?) -> BackupEntry {
            BackupEntry(backupId: "b\(created)", clusterId: "c", hsmId: "h", manufacturer: "m", state: state,
                        createdMillis: created, updatedMillis: 0, deleteRequestedMillis: requested, objectKey: "backups/b\(created)/archive")
        }
        let week = 7 * Millis.day
        let late = [entry(.ready, created: UInt64.max - 5, requested: nil), entry(.ready, created: UInt64.max, requested: nil),
                    entry(.ready, created: 0, requested: nil)]
        XCTAssertEqual(RetentionRules.expired(late, policy: RetentionPolicy(clusterId: "c", days: 379, generation: 1), nowMillis: UInt64.max), ["b0"])
        XCTAssertFalse(RetentionRules.purgeDue(entry(.pendingDeletion, created: 0, requested: nil), nowMillis: UInt64.max, windowMillis: week))
        XCTAssertFalse(RetentionRules.purgeDue(entry(.pendingDeletion, created: 0, requested: UInt64.max - 1), nowMillis: UInt64.max, windowMillis: week))
        XCTAssertTrue(RetentionRules.restorable(entry(.pendingDeletion, created: 0, requested: UInt64.max - 1), nowMillis: UInt64.max, windowMillis: week))
        XCTAssertTrue(RetentionRules.purgeDue(entry(.pendingDeletion, created: 0, requested: 0), nowMillis: week, windowMillis: week))
        XCTAssertFalse(RetentionRules.restorable(entry(.pendingDeletion, created: 0, requested: 0), nowMillis: week, windowMillis: week))
    }
}
