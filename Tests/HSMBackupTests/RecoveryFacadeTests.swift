import BackupCrypto
import Envelope
import Foundation
import HSMArchive
import HSMBackup
import ObjectStore
import SimulatedHSM
import XCTest

/// Issue 14, part A, through the facade: recovery judges an abandoned create's archive by
/// structure verification, and rewraps leave no archive behind.
final class RecoveryFacadeTests: XCTestCase {
    /// A create killed after its archive was stored: finished when the archive is this backup's
    /// and whole; rolled back when it is another backup's archive.
    func testRecoverFinishesAVerifiedArchiveAndRollsBackAForeignOne() throws {
        let w = try World(keys: 10, users: 2)
        let a = w.root + "/a.hsmb", b = w.root + "/b.hsmb"
        let sa = try BackupWriter.writeArchive(of: try w.hsm("prod"), keyrings: [try w.keyring()], toFile: a)
        let sb = try BackupWriter.writeArchive(of: try w.hsm("prod"), keyrings: [try w.keyring()], toFile: b)
        let catalog = w.service.catalog
        for (summary, file) in [(sa, a), (sb, a)] { // b's entry gets a's archive
            let m = summary.metadata
            let e = try catalog.create(NewBackup(backupId: m.backupID, clusterId: m.clusterID, hsmId: m.hsmID, manufacturer: m.manufacturer))
            _ = try w.service.store.put(e.objectKey, from: try FileSource(path: file))
        }
        let actions = try w.service.recover()
        XCTAssertEqual(Set(actions.map { "\($0.backupId) \($0.action.rawValue)" }),
                       ["\(sa.metadata.backupID) finished", "\(sb.metadata.backupID) rolledBack"])
        XCTAssertEqual(try w.service.list().map(\.backupId), [sa.metadata.backupID])
        XCTAssertTrue(try w.service.verify(sa.metadata.backupID, level: .envelope,
                                           keys: VerificationKeys(keyrings: [w.kms.decryptionKeyring])).passed)
        XCTAssertEqual(try w.service.recover(), [])
        XCTAssertEqual(try catalog.check(), [])
    }

    /// Rewraps and tags of one backup in parallel (the issue saw orphans in 3 of 4 trials): the
    /// backup keeps exactly one archive object, and delete + purge leaves none.
    func testParallelRewrapsAndTagsLeaveNoOrphanAndPurgeRemovesEverything() throws {
        let w = try World(keys: 10, users: 2)
        let id = try w.service.createBackup(of: try w.hsm("prod"), keyrings: [try w.keyring()]).entry.backupId
        let opener = w.kms.decryptionKeyring
        let keys = [try w.keyring("other-key"), try w.keyring("backup-key")]
        let errors = ErrorLog()
        // The service is shared by the threads on purpose (each operation takes its flocks).
        let shared = Unchecked((w.service, opener, keys))
        DispatchQueue.concurrentPerform(iterations: 12) { i in
            let (service, opener, keys) = shared.value
            do {
                if i % 3 == 0 {
                    try service.rewrap(id, keyrings: [opener], newKeyrings: [keys[i % 2]])
                } else {
                    try service.tag(id, set: ["t\(i)": "v"], remove: [])
                }
            } catch {
                errors.add("\(error)") // a rewrap may lose a race (alreadyExists, notFound): allowed
            }
        }
        let entry = try w.service.resolve(id)
        let archives = try w.service.store.list(prefix: "backups/\(id)/archive")
        XCTAssertTrue(entry.objectKey.contains("/archive-g"), "at least one rewrap switched over (errors: \(errors.all))")
        XCTAssertEqual(archives, [entry.objectKey], "one archive, the entry's (errors: \(errors.all))")
        XCTAssertEqual(try w.service.catalog.check(), [])
        XCTAssertTrue(try w.service.verify(id, level: .envelope, keys: VerificationKeys(keyrings: [opener])).passed)
        try w.service.delete(id)
        w.service.catalog.recoveryWindowMillis = 0
        XCTAssertEqual(try w.service.purge().purged, [id])
        XCTAssertEqual(try w.service.store.list(prefix: "backups/\(id)/archive"), [])
        XCTAssertEqual(try w.service.catalog.check(), [])
    }

    func testRewrapAtTheLastGenerationIsRefusedWithoutOverflow() throws {
        let w = try World(keys: 4, users: 1)
        let id = try w.service.createBackup(of: try w.hsm("prod"), keyrings: [try w.keyring()]).entry.backupId
        var e = try w.service.resolve(id)
        e.generation = BackupEntry.maxGeneration
        try w.service.catalog.mutate { $0.entries[id] = e }
        XCTAssertThrowsError(try w.service.rewrap(id, keyrings: [w.kms.decryptionKeyring], newKeyrings: [try w.keyring("other-key")])) {
            XCTAssertEqual(($0 as? StoreError)?.code, .limitExceeded)
        }
        XCTAssertEqual(try w.service.store.list(prefix: "backups/\(id)/archive"), [e.objectKey])
    }
}

private final class ErrorLog: @unchecked Sendable {
    private let lock = NSLock()
    private var errors: [String] = []
    func add(_ e: String) { lock.lock(); errors.append(e); lock.unlock() }
    var all: [String] { lock.lock(); defer { lock.unlock() }; return errors }
}

private struct Unchecked<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
