import Foundation
import HSMArchive
import HSMBackup
import ObjectStore
import SimulatedHSM
import XCTest

/// FleetVerifier (issue 17, `verify --all`): several archives at once in one process.
final class FleetVerifierTests: XCTestCase {
    /// Counts the dry-run sessions open at once on a real simulated HSM it passes everything to.
    final class SessionCounter: RestoreTarget {
        let hsm: SimulatedHSM
        private let lock = NSLock()
        private var open = 0
        private(set) var most = 0
        private(set) var sessions = 0
        init(_ hsm: SimulatedHSM) { self.hsm = hsm }
        var metadata: ManufacturerMetadata { hsm.metadata }

        func beginRestore(dryRun: Bool, archiveContext: [String: String]) throws -> any HSMRestoreSession {
            XCTAssertTrue(dryRun, "verification restores nothing")
            lock.lock(); open += 1; sessions += 1; most = max(most, open); lock.unlock()
            // Hold the session a moment, so that sessions that could overlap do.
            Thread.sleep(forTimeInterval: 0.02)
            return Session(try hsm.beginRestore(dryRun: dryRun, archiveContext: archiveContext), counter: self)
        }

        func ended() { lock.lock(); open -= 1; lock.unlock() }

        final class Session: HSMRestoreSession {
            let inner: any HSMRestoreSession
            let counter: SessionCounter
            init(_ inner: any HSMRestoreSession, counter: SessionCounter) { self.inner = inner; self.counter = counter }
            deinit { counter.ended() }
            var header: InnerHeader? { inner.header }
            func feed(_ bytes: [UInt8]) throws { try inner.feed(bytes) }
            func finish() throws -> RestoreSummary { try inner.finish() }
        }
    }

    func testAnHSMOtherThanTheSimulatedOneHasOneDryRunAtATime() throws {
        let w = try World(keys: 10, users: 2)
        for _ in 0..<4 { _ = try w.service.createBackup(of: try w.hsm("prod"), keyrings: [try w.keyring()]) }
        let counter = SessionCounter(try w.makeHSM("spare", manufacturer: "acme"))
        let entries = try w.service.list(CatalogQuery(states: [.ready]))
        let run = try FleetVerifier.verify(entries, in: w.service, level: .full,
                                           keys: VerificationKeys(keyrings: [w.kms.decryptionKeyring], hsm: counter), jobs: 4)
        XCTAssertEqual(run.results.map(\.outcome), Array(repeating: .passed, count: 4))
        XCTAssertEqual(run.results.map(\.backupId), entries.map(\.backupId), "the catalog's order")
        XCTAssertEqual(counter.sessions, 4)
        XCTAssertEqual(counter.most, 1, "sessions on an HSM not known to be safe take turns")
    }

    /// A backup rewrapped after the listing (its archive object replaced) is verified as it is
    /// now; one whose archive is gone from every replica fails; the others pass.
    func testABackupChangedSinceTheListingIsVerifiedAsItIsNow() throws {
        let w = try World(keys: 10, users: 2)
        for _ in 0..<3 { _ = try w.service.createBackup(of: try w.hsm("prod"), keyrings: [try w.keyring()]) }
        let entries = try w.service.list(CatalogQuery(states: [.ready]))
        try w.service.rewrap(entries[0].backupId, keyrings: [w.kms.decryptionKeyring], newKeyrings: [try w.keyring()])
        XCTAssertNotEqual(try w.service.resolve(entries[0].backupId).objectKey, entries[0].objectKey)
        _ = try w.service.store.delete(entries[2].objectKey)
        var seen: [Int] = []
        let run = try FleetVerifier.verify(entries, in: w.service, level: .envelope,
                                           keys: VerificationKeys(keyrings: [w.kms.decryptionKeyring]), jobs: 2) { i, _ in seen.append(i) }
        XCTAssertEqual(seen.sorted(), [0, 1, 2], "one call per archive")
        XCTAssertEqual(run.results.map(\.outcome), [.passed, .passed, .failed])
        let gone = try XCTUnwrap(run.results[2].report)
        XCTAssertEqual(gone.findings.last?.code, StoreError.Code.notFound.rawValue)
        XCTAssertEqual(gone.findings.last?.location.object, entries[2].objectKey)
        XCTAssertEqual([run.passed, run.failed, run.notJudged], [2, 1, 0])
    }

    func testJobsOutOfRangeAndMissingKeysAreRefusedBeforeAnyArchive() throws {
        let w = try World(keys: 4, users: 1)
        _ = try w.service.createBackup(of: try w.hsm("prod"), keyrings: [try w.keyring()])
        let entries = try w.service.list()
        for jobs in [0, FleetVerifier.maximumJobs + 1] {
            XCTAssertThrowsError(try FleetVerifier.verify(entries, in: w.service, level: .structure, jobs: jobs)) {
                XCTAssertEqual(($0 as? HSMBackupError)?.code, .invalidArgument)
            }
        }
        XCTAssertThrowsError(try FleetVerifier.verify(entries, in: w.service, level: .envelope, jobs: 1)) {
            XCTAssertEqual(($0 as? HSMBackupError)?.code, .invalidArgument, "no KMS key for the envelope level")
        }
        // A callback that fails stops the run: no archive after it starts, and its error comes back.
        struct Stop: Error {}
        for _ in 0..<3 { _ = try w.service.createBackup(of: try w.hsm("prod"), keyrings: [try w.keyring()]) }
        var calls = 0
        XCTAssertThrowsError(try FleetVerifier.verify(try w.service.list(), in: w.service, level: .structure, jobs: 1) { _, _ in
            calls += 1
            throw Stop()
        }) { XCTAssertTrue($0 is Stop) }
        XCTAssertEqual(calls, 1)
    }
}
