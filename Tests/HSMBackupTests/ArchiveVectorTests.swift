import BackupCrypto
import ByteCoding
import Envelope
import Foundation
import HSMArchive
import HSMBackup
import ObjectStore
import SimulatedHSM
import XCTest

/// spec/vectors/archive and spec/vectors/store (spec/FORMAT.md §3.10, §5.10): the committed files
/// are what `make samples` makes now, every archive gives its labelled outcome through the
/// library with the intermediates it states, and the store reads as expected.json says.
final class ArchiveVectorTests: XCTestCase {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    static let archiveDir = root + "/spec/vectors/archive"
    static let storeDir = root + "/spec/vectors/store"

    func read(_ path: String) throws -> [UInt8] { Array(try Data(contentsOf: URL(fileURLWithPath: path))) }

    func tempDir() throws -> String {
        let d = NSTemporaryDirectory() + "archive-vectors-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: d) }
        return d
    }

    func loadVectors() throws -> ArchiveVectors.VectorFile {
        try JSONDecoder().decode(ArchiveVectors.VectorFile.self, from: Data(read(Self.archiveDir + "/" + ArchiveVectors.vectorsFileName)))
    }

    func assertSameTree(_ fresh: String, _ committed: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let names = try ArchiveVectors.files(under: fresh)
        XCTAssertEqual(try ArchiveVectors.files(under: committed), names, "\(committed) holds exactly the generated files (run `make samples`)",
                       file: file, line: line)
        for n in names where FileManager.default.fileExists(atPath: committed + "/" + n) {
            // Compared as a whole (a byte-array diff would print every byte).
            XCTAssertTrue(try read(fresh + "/" + n) == read(committed + "/" + n), "\(committed)/\(n) is stale: run `make samples`",
                          file: file, line: line)
        }
    }

    /// Regenerated next to a copy of the committed signed archive (whose footer the generator
    /// keeps), every file is byte-identical to the committed one.
    func testCommittedArchiveAndStoreVectorsAreCurrent() throws {
        let tmp = try tempDir()
        try FileManager.default.createDirectory(atPath: tmp + "/archive", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: Self.archiveDir + "/ok-signed.hsmbak", toPath: tmp + "/archive/ok-signed.hsmbak")
        try ArchiveVectors.generateArchives(directory: tmp + "/archive")
        try ArchiveVectors.generateStore(directory: tmp + "/store")
        try assertSameTree(tmp + "/archive", Self.archiveDir)
        try assertSameTree(tmp + "/store", Self.storeDir)
        // Twice into the same directory (as `make samples` does over the committed files): unchanged.
        try ArchiveVectors.generateStore(directory: tmp + "/store")
        try assertSameTree(tmp + "/store", Self.storeDir)
    }

    /// With no committed footer to keep, the signed archive gets a fresh signature: every byte
    /// before the footer is the same and the new signature verifies; nothing else changes.
    func testSignedVectorWithoutItsFooterDiffersOnlyInAValidSignature() throws {
        let tmp = try tempDir()
        try ArchiveVectors.generateArchives(directory: tmp)
        let v = try XCTUnwrap(try loadVectors().vectors.first { $0.name == "ok-signed" })
        let env = try XCTUnwrap(v.envelope)
        let footer = try XCTUnwrap(env.footerOffset)
        let fresh = try read(tmp + "/ok-signed.hsmbak")
        let committed = try read(Self.archiveDir + "/ok-signed.hsmbak")
        XCTAssertTrue(fresh.prefix(footer) == committed.prefix(footer))
        let point = try XCTUnwrap(Data(base64Encoded: try XCTUnwrap(env.publicKey)))
        let key = try P384PublicKey(encodedPoint: [UInt8](point))
        XCTAssertTrue(key.isValidSignature(Array(fresh[(footer + 2)...]), for: Array(fresh.prefix(footer))))
        XCTAssertTrue(key.isValidSignature(Array(committed[(footer + 2)...]), for: Array(committed.prefix(footer))))
        for name in try ArchiveVectors.files(under: tmp) where !["ok-signed.hsmbak", "reject-signature-flipped.hsmbak", "vectors.json"].contains(name) {
            XCTAssertTrue(try read(tmp + "/" + name) == read(Self.archiveDir + "/" + name), name)
        }
    }

    func testEveryArchiveVectorGivesItsLabelledOutcome() throws {
        let file = try loadVectors()
        XCTAssertEqual(file.vectors.filter { $0.expect == "ok" }.count, 5)
        XCTAssertGreaterThanOrEqual(file.vectors.filter { $0.expect != "ok" }.count, 8)
        var messageIDs = Set<String>()
        for v in file.vectors {
            let bytes = try read(Self.archiveDir + "/" + v.file)
            let keyrings = try ArchiveVectors.keyrings(for: v.openWith)
            let keys = VerificationKeys(keyrings: keyrings, backupKeyring: try v.backupKeys.keyring())
            if v.expect == EnvelopeError.Code.noUsableKey.rawValue {
                XCTAssertThrowsError(try Verifier.verify(MemorySource(bytes), name: v.name, level: .full, keys: keys), v.name) {
                    XCTAssertEqual(($0 as? EnvelopeError)?.code.rawValue, v.expect, v.name)
                }
                continue
            }
            let report = try Verifier.verify(MemorySource(bytes), name: v.name, level: .full, keys: keys)
            if v.expect != "ok" {
                XCTAssertEqual(report.errors.first?.code, v.expect, "\(v.name): \(report.errors)")
                continue
            }
            XCTAssertEqual(report.errors, [], v.name)
            XCTAssertEqual(report.levelsChecked, [.structure, .envelope, .full], v.name)
            // Every key given opens it alone, to the inner blob given.
            let env = try XCTUnwrap(v.envelope, v.name)
            let inner = try XCTUnwrap(v.inner, v.name)
            let blob = try read(Self.archiveDir + "/" + inner.file)
            XCTAssertEqual(Hex.encode(SHA256Hasher.hash(blob)), inner.sha256, v.name)
            for k in keyrings {
                let d = try EnvelopeDecryptor(source: MemorySource(bytes), keyrings: [k])
                var plain: [UInt8] = []
                while let piece = try d.nextChunk() { plain += piece }
                XCTAssertTrue(plain == blob, v.name)
                XCTAssertEqual(d.framesRead, UInt32(env.frames.count), v.name)
                guard case .opened(let dk) = try k.unwrap(d.openedEDK, context: d.header.context) else { return XCTFail(v.name) }
                XCTAssertEqual(Hex.encode(dk.secret.unsafeCopy()), env.dataKey, v.name)
            }
            // The header's intermediates.
            let h = try HeaderReader.read(from: MemorySource(bytes))
            XCTAssertEqual(Hex.encode(h.messageID), env.messageID, v.name)
            XCTAssertTrue(messageIDs.insert(env.dataKey + env.messageID).inserted, "\(v.name): a (data key, message ID) pair heads one message")
            XCTAssertEqual(Hex.encode(h.suiteData), env.commitKey, v.name)
            XCTAssertEqual(Hex.encode(h.headerTag), env.headerTag, v.name)
            XCTAssertEqual(h.bodyBytes.count, env.headerBodyBytes, v.name)
            XCTAssertEqual(h.frameLength, env.frameLength, v.name)
            XCTAssertEqual(h.context.pairs.map { [$0.keyString, $0.valueString] }, env.context, v.name)
            XCTAssertEqual(Hex.encode(try h.context.serialized(canonical: true)), env.contextBytes, v.name)
            XCTAssertEqual(h.encryptedDataKeys.map { Hex.encode($0.ciphertext) }, env.edks.map(\.ciphertext), v.name)
            XCTAssertEqual(h.encryptedDataKeys.map { Hex.encode($0.providerInfo.suffix(12)) }, env.edks.map(\.iv), v.name)
            // The content key opens the header tag (GCM, zero IV, empty plaintext, AAD = header body).
            let ck = try ContentKey(bytes: try XCTUnwrap(Hex.decode(env.contentKey)))
            XCTAssertEqual(try AESGCM.seal([], key: ck, nonce: try GCMNonce([UInt8](repeating: 0, count: 12)), aad: h.bodyBytes).tag, h.headerTag, v.name)
            // Frames: sequence, IV, length and tag where the index says.
            var total = 0
            for (i, f) in env.frames.enumerated() {
                XCTAssertEqual(f.sequence, UInt32(i + 1), v.name)
                XCTAssertEqual(f.final, i == env.frames.count - 1, v.name)
                XCTAssertEqual(f.iv, "0000000000000000" + String(format: "%08x", f.sequence), v.name)
                let tagAt = f.offset + (f.final ? 24 : 16) + f.plaintextBytes
                XCTAssertEqual(Hex.encode(bytes[tagAt..<(tagAt + 16)]), f.tag, v.name)
                total += f.plaintextBytes
            }
            XCTAssertEqual(total, blob.count, v.name)
            XCTAssertEqual(Hex.encode(SHA256Hasher.hash(bytes)), env.archiveSha256, v.name)
            XCTAssertEqual(env.footerOffset.map { $0 + 2 + (env.signature?.count ?? 0) / 2 } ?? bytes.count, bytes.count, v.name)
        }
        // The shapes the spec promises are all there.
        let ok = file.vectors.compactMap(\.envelope)
        XCTAssertTrue(ok.contains { $0.suite == "0578" })
        XCTAssertTrue(ok.contains { $0.edks.count == 2 })
        XCTAssertTrue(ok.contains { $0.frames.count > 2 && $0.frames.last!.plaintextBytes > 0 && $0.frames.last!.plaintextBytes < Int($0.frameLength) })
        XCTAssertTrue(ok.contains { $0.frames.count > 2 && $0.frames.last!.plaintextBytes == 0 })
    }

    /// The metadata-mismatch archive is also refused by a restore, and before the HSM changes.
    func testMetadataMismatchArchiveIsRefusedByRestoreToo() throws {
        let tmp = try tempDir()
        let hsm = try SimulatedHSM.create(at: tmp + "/hsm", identity: HSMIdentity(manufacturerId: SpecVectors.manufacturerId, model: "EX-1000",
                                                                                  serialNumber: "t", hsmId: "hsm-t", clusterId: "c"),
                                          mkbk: try ManufacturerBackupKey(bytes: SpecVectors.mkbkBytes),
                                          akbk: try OperatorBackupKey(bytes: SpecVectors.akbkBytes))
        let v = try XCTUnwrap(try loadVectors().vectors.first { $0.name == "reject-metadata-mismatch" })
        let bytes = try read(Self.archiveDir + "/" + v.file)
        XCTAssertThrowsError(try Restorer.restore(MemorySource(bytes), onto: hsm, keyrings: try ArchiveVectors.keyrings(for: v.openWith), dryRun: false)) {
            XCTAssertEqual(($0 as? HSMBackupError)?.code, .metadataMismatch)
        }
        let ok = try read(Self.archiveDir + "/ok-unsigned.hsmbak")
        let summary = try Restorer.restore(MemorySource(ok), onto: hsm, keyrings: try ArchiveVectors.keyrings(for: v.openWith), dryRun: true)
        XCTAssertEqual(summary.keys, 3)
    }

    // MARK: store

    func testStoreVectorReadsAsExpected() throws {
        let expected = try JSONDecoder().decode(ArchiveVectors.StoreExpectation.self,
                                                from: Data(read(Self.storeDir + "/" + ArchiveVectors.expectedFileName)))
        // Read a copy: opening a store may create its on-demand directories and lock files.
        let root = try tempDir() + "/root"
        try FileManager.default.copyItem(atPath: Self.storeDir + "/" + expected.root, toPath: root)
        let clock = ManualClock(millis: expected.clockMillis)
        let service = try BackupService(storeRoot: root, clock: clock)
        let store = service.store as! LocalObjectStore
        XCTAssertEqual(Hex.encode(store.config.storeId), expected.storeId)
        XCTAssertEqual(store.config.replicas, expected.replicas)
        XCTAssertEqual(store.config.writeQuorum, expected.writeQuorum)

        // Objects: the keys, sizes and digests; which replica files hold them.
        let keys = try store.list().sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
        XCTAssertEqual(keys, expected.objects.map(\.key))
        for o in expected.objects {
            let bytes = try store.getAll(o.key)
            XCTAssertEqual(UInt64(bytes.count), o.size, o.key)
            XCTAssertEqual(Hex.encode(SHA256Hasher.hash(bytes)), o.sha256, o.key)
            XCTAssertEqual(try store.stat(o.key).createdMillis, o.created, o.key)
            XCTAssertEqual(o.files.count, 3, o.key)
            for f in o.files { XCTAssertTrue(FileManager.default.fileExists(atPath: root + "/" + f), f) }
        }
        XCTAssertEqual(store.verifyReplicas(expected.objects[0].key), [])

        // The catalog, entry by entry.
        let snapshot = try service.catalog.load()
        XCTAssertEqual(snapshot.writeCount, expected.catalogWriteCount)
        XCTAssertEqual(Hex.encode(SHA256Hasher.hash(try read(root + "/catalog/catalog.bin"))), expected.catalogSha256)
        XCTAssertEqual(snapshot.entries.keys.sorted(), expected.backups.map(\.backupId).sorted())
        for b in expected.backups {
            let e = try XCTUnwrap(snapshot.entries[b.backupId])
            XCTAssertEqual(e.state.rawValue, b.state, b.backupId)
            XCTAssertEqual(e.objectKey, b.objectKey, b.backupId)
            XCTAssertEqual(e.generation, b.generation, b.backupId)
            XCTAssertEqual(e.createdMillis, b.created, b.backupId)
            XCTAssertEqual(e.updatedMillis, b.updated, b.backupId)
            XCTAssertEqual(e.size, b.size, b.backupId)
            XCTAssertEqual(e.tags, b.tags, b.backupId)
            XCTAssertEqual(e.neverExpires, b.neverExpires, b.backupId)
            XCTAssertEqual(e.deleteRequestedMillis, b.deleteRequested, b.backupId)
            XCTAssertEqual(try store.stat(b.objectKey).size, b.size, b.backupId)
        }
        XCTAssertEqual(snapshot.policies.values.map { "\($0.clusterId) \($0.days) \($0.generation)" }.sorted(),
                       expected.policies.map { "\($0.clusterId) \($0.days) \($0.generation)" })
        XCTAssertEqual(Set(expected.backups.map(\.state)), ["READY", "PENDING_DELETION"])
        XCTAssertTrue(expected.backups.contains { $0.objectKey.hasSuffix("archive-g3") }, "one backup is rewrapped")
        // The metadata objects are the truth: the catalog rebuilt from them is the same catalog.
        XCTAssertEqual(try service.catalog.check(), [])

        // Each archive at level full: ok, or the code expected.json names (the swap).
        let backupKeys = try expected.backupKeys.keyring()
        var failures = 0
        for b in expected.backups {
            let report = try service.verify(b.backupId, level: .full,
                                            keys: VerificationKeys(keyrings: try ArchiveVectors.keyrings(for: b.openWith), backupKeyring: backupKeys))
            if b.expect == "ok" {
                XCTAssertEqual(report.errors, [], b.backupId)
                XCTAssertEqual(report.levelsChecked, [.structure, .envelope, .full], b.backupId)
            } else {
                failures += 1
                XCTAssertEqual(report.errors.map(\.code), [b.expect], b.backupId)
                XCTAssertThrowsError(try service.inspect(b.backupId)) { XCTAssertEqual(($0 as? HSMBackupError)?.code.rawValue, b.expect) }
            }
        }
        XCTAssertEqual(failures, 1, "exactly one must-fail backup (the swap)")
    }
}
