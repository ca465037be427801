import BackupCrypto
import Envelope
import Foundation
import HSMArchive
import HSMBackup
import ObjectStore
import SimulatedHSM
import XCTest

/// A home with a local KMS, a 3-replica store, two manufacturers and HSMs of each.
final class World {
    let root: String
    let kms: LocalKMS
    let service: BackupService
    let acmeMKBK: ManufacturerBackupKey
    let akbk: OperatorBackupKey

    init(keys: Int = 40, users: Int = 6) throws {
        root = FileManager.default.temporaryDirectory.appendingPathComponent("facade-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        kms = LocalKMS(directory: root + "/kms")
        _ = try kms.createKey("backup-key")
        _ = try kms.createKey("other-key")
        try LocalObjectStore.create(at: root + "/store")
        service = try BackupService(storeRoot: root + "/store")
        acmeMKBK = try ManufacturerBackupKey.random()
        akbk = try OperatorBackupKey.random()
        let source = try makeHSM("prod", manufacturer: "acme")
        try source.populate(keys: keys, users: users, seed: 1)
    }

    @discardableResult
    func makeHSM(_ name: String, manufacturer: String, akbk: OperatorBackupKey? = nil) throws -> SimulatedHSM {
        let mkbk = manufacturer == "acme" ? acmeMKBK : try ManufacturerBackupKey.random()
        return try SimulatedHSM.create(at: root + "/" + name,
                                       identity: HSMIdentity(manufacturerId: manufacturer, model: "M1", serialNumber: name,
                                                             hsmId: "hsm-" + name, clusterId: "cluster-1"),
                                       mkbk: mkbk, akbk: akbk ?? self.akbk)
    }

    func hsm(_ name: String) throws -> SimulatedHSM { try SimulatedHSM.open(at: root + "/" + name) }
    func keyring(_ name: String = "backup-key") throws -> Keyring { try kms.keyring(name) }

    /// Every file of a directory with its bytes, to prove a failed operation changed nothing.
    func snapshot(_ name: String) throws -> [String: Data] {
        let dir = root + "/" + name
        var out: [String: Data] = [:]
        for f in try FileManager.default.contentsOfDirectory(atPath: dir) { out[f] = try Data(contentsOf: URL(fileURLWithPath: dir + "/" + f)) }
        return out
    }

    deinit { try? FileManager.default.removeItem(atPath: root) }
}

final class FacadeTests: XCTestCase {
    func testStoredBackupRoundTripsThroughEveryLevelAndRestoresIdenticalContents() throws {
        let w = try World()
        let created = try w.service.createBackup(of: try w.hsm("prod"), keyrings: [try w.keyring()], tags: ["env": "test"])
        XCTAssertEqual(created.entry.state, .ready)
        XCTAssertEqual(created.entry.tags, ["env": "test"])
        XCTAssertEqual(created.archive.metadata.keyCount, 40)
        let id = created.entry.backupId
        XCTAssertTrue(BackupID.isValid(id))

        let info = try w.service.inspect(String(id.prefix(8)))
        XCTAssertEqual(info.metadata.backupID, id)
        XCTAssertNil(info.inner)
        XCTAssertLessThan(info.bytesRead, 4096)
        let withKey = try w.service.inspect(id, keyrings: [w.kms.decryptionKeyring])
        XCTAssertEqual(withKey.inner?.backupId, id)

        for level in VerificationLevel.allCases {
            let report = try w.service.verify(id, level: level, keys: VerificationKeys(keyrings: [w.kms.decryptionKeyring], hsm: try w.hsm("prod")))
            XCTAssertTrue(report.passed, "\(level): \(report.findings)")
            XCTAssertEqual(report.levelsChecked.last, level)
        }

        let target = try w.makeHSM("new", manufacturer: "acme")
        let dry = try w.service.restore(id, onto: target, keyrings: [w.kms.decryptionKeyring], dryRun: true)
        XCTAssertTrue(dry.dryRun)
        XCTAssertEqual(try w.hsm("new").contents, HSMContents())
        _ = try w.service.restore(id, onto: target, keyrings: [w.kms.decryptionKeyring], dryRun: false)
        XCTAssertEqual(try w.hsm("new").contents, try w.hsm("prod").contents)
    }

    func testRestoreOntoAnotherManufacturerOrOperatorIsRefusedAndChangesNothing() throws {
        let w = try World()
        let id = try w.service.createBackup(of: try w.hsm("prod"), keyrings: [try w.keyring()]).entry.backupId
        let other = try w.makeHSM("globex", manufacturer: "globex")
        try other.populate(keys: 3, users: 1, seed: 2)
        let before = try w.snapshot("globex")
        XCTAssertThrowsError(try w.service.restore(id, onto: other, keyrings: [w.kms.decryptionKeyring], dryRun: false)) {
            XCTAssertEqual(($0 as? HSMBackupError)?.code, .incompatibleHSM)
        }
        XCTAssertEqual(try w.snapshot("globex"), before)

        let otherOperator = try w.makeHSM("acme-other-op", manufacturer: "acme", akbk: try OperatorBackupKey.random())
        let before2 = try w.snapshot("acme-other-op")
        XCTAssertThrowsError(try w.service.restore(id, onto: otherOperator, keyrings: [w.kms.decryptionKeyring], dryRun: false)) {
            XCTAssertEqual(($0 as? ArchiveError)?.code, .pbkMismatch)
        }
        XCTAssertEqual(try w.snapshot("acme-other-op"), before2)
    }

    func testFileArchiveFlipsAreFoundAtTheRightLevelWithLocations() throws {
        let w = try World(keys: 100)
        let path = w.root + "/a.hsmbak"
        var options = ArchiveOptions(signed: true)
        options.frameLength = 1024
        let summary = try BackupWriter.writeArchive(of: try w.hsm("prod"), keyrings: [try w.keyring()], options: options, toFile: path)
        let good = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        XCTAssertEqual(UInt64(good.count), summary.archiveBytes)
        let keys = VerificationKeys(keyrings: [w.kms.decryptionKeyring], hsm: try w.hsm("prod"))
        // A byte inside a middle frame's ciphertext: the structure level cannot see it, the
        // envelope level names the frame.
        var bad = good
        bad[good.count / 2] ^= 0xFF
        let structure = try Verifier.verify(MemorySource(bad), name: "a", level: .structure)
        XCTAssertTrue(structure.passed, "a ciphertext byte is not structural")
        let envelope = try Verifier.verify(MemorySource(bad), name: "a", level: .envelope, keys: keys)
        XCTAssertFalse(envelope.passed)
        XCTAssertEqual(envelope.errors.first?.code, "frameAuthenticationFailed")
        XCTAssertNotNil(envelope.errors.first?.location.frame)
        // Truncation: caught with no key at all.
        let cut = Array(good.prefix(good.count - 10))
        let report = try Verifier.verify(MemorySource(cut), name: "a", level: .structure)
        XCTAssertFalse(report.passed)
        XCTAssertEqual(report.findings.first?.layer, .envelope)
        // The full level passes on the good archive and counts every object.
        let full = try Verifier.verify(MemorySource(good), name: "a", level: .full, keys: keys)
        XCTAssertTrue(full.passed, "\(full.findings)")
        XCTAssertEqual(full.objectsChecked, 100 + 6 + 2)
    }

    func testEnvelopeMetadataThatDisagreesWithTheInnerHeaderIsRefused() throws {
        let w = try World()
        let blob = try w.hsm("prod").backup()
        var metadata = ArchiveMetadata(innerHeader: try InnerHeader.parse(prefix: blob))
        metadata.clusterID = "cluster-forged"
        let message = try EnvelopeEncryptor.encrypt(blob, keyrings: [try w.keyring()], context: try metadata.merged())
        XCTAssertThrowsError(try Inspector.inspect(MemorySource(message), keyrings: [w.kms.decryptionKeyring])) {
            XCTAssertEqual(($0 as? HSMBackupError)?.code, .metadataMismatch)
        }
        let report = try Verifier.verify(MemorySource(message), name: "forged", level: .envelope,
                                         keys: VerificationKeys(keyrings: [w.kms.decryptionKeyring]))
        XCTAssertEqual(report.errors.map(\.code), ["metadataMismatch"])
        let target = try w.makeHSM("t", manufacturer: "acme")
        XCTAssertThrowsError(try Restorer.restore(MemorySource(message), onto: target, keyrings: [w.kms.decryptionKeyring], dryRun: false))
        XCTAssertEqual(try w.hsm("t").contents, HSMContents())
    }

    /// The inner version is public (spec 3.8, `hsmbackup.inner-version`) and must agree with the
    /// inner header like every other field; `created` never needs more than a 4-digit year.
    func testInnerVersionIsPublishedAndMustAgree() throws {
        let w = try World(keys: 2, users: 1)
        let blob = try w.hsm("prod").backup()
        let inner = try InnerHeader.parse(prefix: blob)
        var metadata = ArchiveMetadata(innerHeader: inner)
        XCTAssertEqual(metadata.innerVersion, "2.0")
        XCTAssertEqual(try metadata.merged().value(forKey: "hsmbackup.inner-version"), "2.0")
        XCTAssertNoThrow(try metadata.check(against: inner))
        XCTAssertEqual(try ArchiveMetadata(context: try metadata.merged()).innerVersion, "2.0", "read back from the context")
        metadata.innerVersion = "2.1"
        XCTAssertThrowsError(try metadata.check(against: inner)) {
            XCTAssertEqual(($0 as? HSMBackupError)?.code, .metadataMismatch)
            XCTAssertTrue("\($0)".contains("hsmbackup.inner-version"), "\($0)")
        }
        // Archives written before the key existed still open: absent is not compared.
        metadata.innerVersion = nil
        XCTAssertNoThrow(try metadata.check(against: inner))
        for bad in ["2", "2.", "02.0", "2.00", "2.256", "v2.0", "2.0.1", "+2.0"] {
            metadata.innerVersion = bad
            XCTAssertThrowsError(try metadata.merged(), bad) { XCTAssertEqual(($0 as? EnvelopeError)?.code, .archiveMetadataInvalid, bad) }
        }
        XCTAssertEqual(Timestamp.rfc3339(InnerFormat.maximumCreatedAt), "9999-12-31T23:59:59Z")
    }

    func testAFailedCreateLeavesNoEntryAndNoObject() throws {
        let w = try World()
        let noOperator = try SimulatedHSM.create(at: w.root + "/bare",
                                                 identity: HSMIdentity(manufacturerId: "acme", model: "M1", serialNumber: "b",
                                                                       hsmId: "hsm-b", clusterId: "cluster-1"),
                                                 mkbk: w.acmeMKBK)
        XCTAssertThrowsError(try w.service.createBackup(of: noOperator, keyrings: [try w.keyring()]))
        XCTAssertEqual(try w.service.list().count, 0)
        XCTAssertEqual(try w.service.store.list(prefix: "backups/").filter { $0.hasSuffix("/archive") }, [])
        let path = w.root + "/never.hsmbak"
        XCTAssertThrowsError(try BackupWriter.writeArchive(of: noOperator, keyrings: [try w.keyring()], toFile: path))
        XCTAssertFalse(FileManager.default.fileExists(atPath: path))
        XCTAssertFalse(try FileManager.default.contentsOfDirectory(atPath: w.root).contains { $0.contains(".tmp-") })
    }

    func testLifecycleRewrapAndCopyThroughTheFacade() throws {
        let w = try World()
        let id = try w.service.createBackup(of: try w.hsm("prod"), keyrings: [try w.keyring()]).entry.backupId
        // Rewrap for another key: the old key no longer opens it, the new one does, the payload is the same.
        let before = try w.service.inspect(id, keyrings: [w.kms.decryptionKeyring])
        try w.service.rewrap(id, keyrings: [w.kms.decryptionKeyring], newKeyrings: [try w.keyring("other-key")])
        let after = try w.service.inspect(id)
        XCTAssertEqual(after.envelope.keys.map(\.key), ["other-key/v1"])
        XCTAssertThrowsError(try w.service.verify(id, level: .envelope, keys: VerificationKeys(keyrings: [try w.keyring("backup-key")]))) {
            XCTAssertEqual(($0 as? EnvelopeError)?.code, .noUsableKey)
        }
        let report = try w.service.verify(id, level: .full, keys: VerificationKeys(keyrings: [try w.keyring("other-key")], hsm: try w.hsm("prod")))
        XCTAssertTrue(report.passed, "\(report.findings)")
        XCTAssertEqual(try w.service.inspect(id, keyrings: [w.kms.decryptionKeyring]).inner?.headerDigest, before.inner?.headerDigest)

        // Copy to a second store keeps id and creation time and records the source.
        try LocalObjectStore.create(at: w.root + "/store2")
        let second = try BackupService(storeRoot: w.root + "/store2")
        let copy = try w.service.copy(id, to: second)
        XCTAssertEqual(copy.backupId, id)
        XCTAssertEqual(copy.createdMillis, try w.service.resolve(id).createdMillis)
        XCTAssertEqual(copy.copySource?.sourceBackupId, id)
        XCTAssertTrue(try second.verify(id, level: .envelope, keys: VerificationKeys(keyrings: [w.kms.decryptionKeyring])).passed)

        // Delete, undelete, and a pending backup cannot be restored.
        try w.service.delete(id)
        XCTAssertThrowsError(try w.service.restore(id, onto: try w.makeHSM("t", manufacturer: "acme"), keyrings: [w.kms.decryptionKeyring], dryRun: true)) {
            XCTAssertEqual(($0 as? HSMBackupError)?.code, .backupNotReady)
        }
        XCTAssertEqual(try w.service.undelete(id).state, .ready)
    }

    /// Two backups, a and b, with b's archive put in place of a's (what a store writer could do).
    func worldWithSwappedArchive() throws -> (w: World, a: BackupEntry, b: BackupEntry, bBytes: [UInt8]) {
        let w = try World(keys: 4, users: 1)
        let a = try w.service.createBackup(of: try w.hsm("prod"), keyrings: [try w.keyring()]).entry
        let b = try w.service.createBackup(of: try w.hsm("prod"), keyrings: [try w.keyring()]).entry
        let bBytes = try w.service.store.getAll(b.objectKey)
        _ = try w.service.store.delete(a.objectKey)
        _ = try w.service.store.put(a.objectKey, bytes: bBytes)
        return (w, a, b, bBytes)
    }

    /// Whoever can write the store could swap two valid archives (an old backup in place of a
    /// new one); the catalog id is checked against the archive's own.
    func testAnArchiveSwappedUnderAnotherBackupsIdIsRefused() throws {
        let (w, a, _, _) = try worldWithSwappedArchive()
        XCTAssertThrowsError(try w.service.inspect(a.backupId)) { XCTAssertEqual(($0 as? HSMBackupError)?.code, .metadataMismatch) }
        let report = try w.service.verify(a.backupId, level: .structure)
        XCTAssertEqual(report.errors.map(\.code), ["metadataMismatch"])
        let target = try w.makeHSM("t", manufacturer: "acme")
        let before = try w.snapshot("t")
        XCTAssertThrowsError(try w.service.restore(a.backupId, onto: target, keyrings: [w.kms.decryptionKeyring], dryRun: false)) {
            XCTAssertEqual(($0 as? HSMBackupError)?.code, .metadataMismatch)
        }
        XCTAssertEqual(try w.snapshot("t"), before)
    }

    /// `backup rewrap` checks the archive's backup id as inspect, verify and restore do, before
    /// it writes anything: else backup B's archive, put at A's key, would become A's archive for
    /// good (re-encrypted under the new keys, the entry pointing at it). Nothing in the store changes.
    func testRewrapOfAnArchiveSwappedUnderAnotherBackupsIdIsRefusedAndChangesNothing() throws {
        let (w, a, b, bBytes) = try worldWithSwappedArchive()
        let before = try storeFiles(w)
        let entry = try w.service.resolve(a.backupId)
        XCTAssertThrowsError(try w.service.rewrap(a.backupId, keyrings: [w.kms.decryptionKeyring], newKeyrings: [try w.keyring("other-key")])) {
            XCTAssertEqual(($0 as? HSMBackupError)?.code, .metadataMismatch, "\($0)")
        }
        XCTAssertEqual(try storeFiles(w), before, "a refused rewrap changes nothing in the store")
        XCTAssertEqual(try w.service.resolve(a.backupId), entry)
        XCTAssertEqual(try w.service.store.getAll(a.objectKey), bBytes)
        // Its own archive is rewrapped as ever.
        XCTAssertNotEqual(try w.service.rewrap(b.backupId, keyrings: [w.kms.decryptionKeyring], newKeyrings: [try w.keyring("other-key")]).objectKey,
                          b.objectKey)
        XCTAssertTrue(try w.service.verify(b.backupId, level: .envelope, keys: VerificationKeys(keyrings: [try w.keyring("other-key")])).passed)
    }

    /// Every file of the store with its bytes; lock files are made on demand and are not content (spec 5.10).
    private func storeFiles(_ w: World) throws -> [String: Data] {
        let root = w.root + "/store"
        var out: [String: Data] = [:]
        for case let rel as String in FileManager.default.enumerator(atPath: root)! where !rel.hasPrefix("locks/") {
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: root + "/" + rel, isDirectory: &isDir), !isDir.boolValue {
                out[rel] = try Data(contentsOf: URL(fileURLWithPath: root + "/" + rel))
            }
        }
        return out
    }

    func testIdPrefixesResolveOnlyWhenUnique() throws {
        let w = try World(keys: 2, users: 1)
        let a = try w.service.createBackup(of: try w.hsm("prod"), keyrings: [try w.keyring()]).entry.backupId
        XCTAssertEqual(try w.service.resolve(String(a.prefix(6))).backupId, a)
        XCTAssertThrowsError(try w.service.resolve("abc")) { XCTAssertEqual(($0 as? HSMBackupError)?.code, .backupNotFound) }
        XCTAssertThrowsError(try w.service.resolve("ffffffffffff0000")) { XCTAssertEqual(($0 as? HSMBackupError)?.code, .backupNotFound) }
    }

    /// The README's library example, as written there (it must keep compiling and working).
    func testReadmeLibraryExample() throws {
        let w = try World()
        let home = w.root
        try LocalObjectStore.create(at: home + "/store-readme")
        try FileManager.default.createSymbolicLink(atPath: "./hsm-prod-\(getpid())", withDestinationPath: home + "/prod")
        defer { try? FileManager.default.removeItem(atPath: "./hsm-prod-\(getpid())") }

        let kms = LocalKMS(directory: home + "/kms")
        let service = try BackupService(storeRoot: home + "/store-readme")
        let hsm = try SimulatedHSM.open(at: "./hsm-prod-\(getpid())")
        let created = try service.createBackup(of: hsm, keyrings: [try kms.keyring("backup-key")])
        let id = created.entry.backupId
        let info = try service.inspect(id)
        let report = try service.verify(id, level: .full, keys: VerificationKeys(keyrings: [kms.decryptionKeyring], hsm: hsm))
        let target = try w.makeHSM("new", manufacturer: "acme")
        let summary = try service.restore(id, onto: target, keyrings: [kms.decryptionKeyring], dryRun: false)
        XCTAssertEqual(info.metadata.backupID, id)
        XCTAssertTrue(report.passed)
        XCTAssertEqual(summary.keys, 40)
    }
}

final class TimestampTests: XCTestCase {
    func testRFC3339MatchesFoundationAndRoundTrips() {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "UTC")
        f.dateFormat = "yyyy-MM-dd'T'HH:mm:ss'Z'"
        var rng = SystemRandomNumberGenerator()
        for s in [0, 59, 86_399, 86_400, 951_782_400, 1_709_164_800, 4_102_444_800] + (0..<2000).map({ _ in UInt64.random(in: 0...8_000_000_000, using: &rng) }) {
            let text = Timestamp.rfc3339(s)
            XCTAssertEqual(text, f.string(from: Date(timeIntervalSince1970: TimeInterval(s))), "\(s)")
            XCTAssertEqual(Timestamp.seconds(rfc3339: text), s)
        }
        for bad in ["2026-02-30T00:00:00Z", "2026-13-01T00:00:00Z", "2026-01-01T24:00:00Z", "2026-01-01 00:00:00Z", "1969-12-31T23:59:59Z", "2026-01-01T00:00:00+01:00"] {
            XCTAssertNil(Timestamp.seconds(rfc3339: bad), bad)
        }
    }
}
