import BackupCrypto
import ByteCoding
import Envelope
import Foundation
import HSMBackup
import ObjectStore
import SimulatedHSM
import XCTest

/// Issue 12's audit: every path that writes an envelope header uses a message ID no other header
/// uses (spec/FORMAT.md §3.7, §7). One message ID, one header: a second header under the same
/// (data key, message ID) reuses the content key with the all-zero header IV.
final class EnvelopeWriterAuditTests: XCTestCase {
    /// Every writer, run twice on the same input where it can be: no message ID comes back.
    func testEveryEnvelopeWriterGivesEveryHeaderItsOwnMessageID() throws {
        let w = try World(keys: 6, users: 2)
        var ids: [String: [UInt8]] = [:]
        func record(_ name: String, _ message: [UInt8]) throws {
            ids[name] = try HeaderReader.read(from: MemorySource(message)).messageID
        }
        func file(_ path: String) throws -> [UInt8] { [UInt8](try Data(contentsOf: URL(fileURLWithPath: path))) }
        let ring = try w.keyring()

        // EnvelopeEncryptor (one call, and streaming), twice on the same plaintext and context.
        let plain = [UInt8](repeating: 0x5a, count: 3000)
        try record("encrypt-1", try EnvelopeEncryptor.encrypt(plain, keyrings: [ring]))
        try record("encrypt-2", try EnvelopeEncryptor.encrypt(plain, keyrings: [ring]))
        // `envelope encrypt` (EnvelopeFile), twice on the same file.
        let input = w.root + "/plain.bin"
        try Data(plain).write(to: URL(fileURLWithPath: input))
        try EnvelopeFile.encrypt(input: input, output: w.root + "/e1", keyrings: [ring], context: .empty)
        try EnvelopeFile.encrypt(input: input, output: w.root + "/e2", keyrings: [ring], context: .empty)
        try record("envelope-file-1", try file(w.root + "/e1"))
        try record("envelope-file-2", try file(w.root + "/e2"))
        // `envelope rewrap` (Rewrap.rewrapFile), twice in place.
        try Rewrap.rewrapFile(at: w.root + "/e1", keyrings: [ring], newKeyrings: [try w.keyring("other-key")])
        try record("envelope-rewrap-1", try file(w.root + "/e1"))
        try Rewrap.rewrapFile(at: w.root + "/e1", keyrings: [try w.keyring("other-key")], newKeyrings: [ring])
        try record("envelope-rewrap-2", try file(w.root + "/e1"))
        // `backup create --out` (BackupWriter), twice from the same HSM.
        _ = try BackupWriter.writeArchive(of: try w.hsm("prod"), keyrings: [ring], toFile: w.root + "/a1.hsmbak")
        _ = try BackupWriter.writeArchive(of: try w.hsm("prod"), keyrings: [ring], toFile: w.root + "/a2.hsmbak")
        try record("archive-file-1", try file(w.root + "/a1.hsmbak"))
        try record("archive-file-2", try file(w.root + "/a2.hsmbak"))
        // `backup create` into the store, then `backup rewrap` of it twice.
        let entry = try w.service.createBackup(of: try w.hsm("prod"), keyrings: [ring]).entry
        try record("stored", try w.service.store.getAll(entry.objectKey))
        let r1 = try w.service.rewrap(entry.backupId, keyrings: [ring], newKeyrings: [try w.keyring("other-key")])
        try record("stored-rewrap-1", try w.service.store.getAll(r1.objectKey))
        let r2 = try w.service.rewrap(entry.backupId, keyrings: [try w.keyring("other-key")], newKeyrings: [ring])
        try record("stored-rewrap-2", try w.service.store.getAll(r2.objectKey))

        XCTAssertEqual(ids.count, 11)
        XCTAssertEqual(Set(ids.values).count, ids.count, "a message ID was used twice: \(ids.mapValues { Hex.encode($0) })")

        // `backup copy` writes no header: the destination holds the source's message, byte for byte.
        try LocalObjectStore.create(at: w.root + "/store2")
        let second = try BackupService(storeRoot: w.root + "/store2")
        let copy = try w.service.copy(entry.backupId, to: second)
        XCTAssertEqual(try second.store.getAll(copy.objectKey), try w.service.store.getAll(r2.objectKey))
    }

    /// The writers, found in the source: only `EnvelopeEncryptor` makes and tags a header, and
    /// the files that make an encryptor are the audited ones. A new writer fails this test until
    /// it is audited for message-ID reuse and added here.
    func testOnlyTheAuditedWritersMakeEnvelopeHeaders() throws {
        let sources = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Sources")
        var files: [String: String] = [:]
        let walker = FileManager.default.enumerator(atPath: sources.path)
        while let rel = walker?.nextObject() as? String {
            guard rel.hasSuffix(".swift") else { continue }
            files[rel] = try String(contentsOf: sources.appendingPathComponent(rel), encoding: .utf8)
        }
        XCTAssertGreaterThan(files.count, 50, "the source tree was not found at \(sources.path)")
        func using(_ needle: String) -> Set<String> { Set(files.filter { $0.value.contains(needle) }.keys) }

        // Header bytes and header tags are made in one place (and tags are checked in the decryptor).
        XCTAssertEqual(using("makeV2("), ["Envelope/MessageHeader.swift", "Envelope/EnvelopeEncryptor.swift"])
        XCTAssertEqual(using("headerTag(body:"), ["Envelope/KeyDerivation.swift", "Envelope/EnvelopeEncryptor.swift",
                                                  "Envelope/EnvelopeDecryptor.swift"])
        // Who makes an encryptor, and why each is safe:
        XCTAssertEqual(using("EnvelopeEncryptor("), [
            "Envelope/EnvelopeEncryptor.swift",  // random message ID unless a caller in this package gives one
            "Envelope/EnvelopeFile.swift",       // envelope encrypt: fresh data key, random ID
            "Envelope/Rewrap.swift",             // rewrap: fresh data key, random ID (§3.7)
            "HSMBackup/BackupWriter.swift",      // backup create: fresh data key, random ID
            "FuzzTargets/FuzzSeeds.swift",       // fuzz seeds: ID derived from everything the message holds
            "HSMBackup/ArchiveVectors.swift",    // spec/vectors/archive and store: data key from the vector's name, ID
                                                 // derived from everything the message holds (§3.10); ArchiveVectorTests
                                                 // checks no two vectors share a (data key, ID) pair
        ])
        // A given message ID is not public API, and only the fuzz seeds and the spec vectors pass one (derived).
        XCTAssertEqual(using("messageID: messageID)"), ["FuzzTargets/FuzzSeeds.swift", "HSMBackup/ArchiveVectors.swift"])
        XCTAssertTrue(files["Envelope/EnvelopeEncryptor.swift"]!.contains("package init(sink: ByteSink, materials: EncryptionMaterials, frameLength: UInt32, messageID: [UInt8]?)"))
        XCTAssertTrue(files["Envelope/Keyring.swift"]!.contains("package func wrap(_ dataKey: DataKey, context: EncryptionContext, nonce: GCMNonce)"))
    }
}
