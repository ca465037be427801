import BackupCrypto
import ByteCoding
import Envelope
import Foundation
import HSMArchive
import HSMBackup
import SimulatedHSM
import XCTest

/// Corruption sweeps (issue 8, item 2) over small real archives made through the facade: every
/// truncation length and every byte flipped under several masks (0xFF: all bits), at each
/// layer, through `Verifier`.
///
/// - structure level (no key): catches every change of a structural byte of the envelope (a
///   length, count, type, sequence number, suite, frame length…), passes a change of a byte it
///   cannot see (IV, ciphertext, tag, message ID, commitment, EDK provider info/ciphertext,
///   signature), and may go either way on bytes it parses but that are content (context, EDK
///   provider ID);
/// - envelope level (KMS key): catches every change at all;
/// - full level (HSM): every change of the inner blob, re-encrypted under the envelope so that
///   the envelope passes, is caught, never in the envelope layer; structural bytes of the inner
///   blob (prelude, chunk frame types and lengths) are caught already at the envelope level by
///   the keyless inner structure check.
/// No case may crash, hang, or pass silently.
final class CorruptionSweepTests: XCTestCase {
    /// Every byte gets 0xFF (all its bits) and one single-bit mask: 0x01 at even offsets,
    /// 0x80 at odd ones (two cases per byte keep the sweeps under a minute in debug).
    static func masks(at i: Int) -> [UInt8] { [0xFF, i % 2 == 0 ? 0x01 : 0x80] }

    /// A small world: 3 keys, 1 user; the KMS key as a raw AES keyring over its exported bytes
    /// (the same EDK, without re-reading the keystore for every case).
    struct Sample {
        let world: World
        let archive: [UInt8]
        let keyring: Keyring
        let keys: VerificationKeys
    }

    func makeSample(signed: Bool, frameLength: UInt32 = 256) throws -> Sample {
        let w = try World(keys: 3, users: 1)
        var options = ArchiveOptions(signed: signed)
        options.frameLength = frameLength
        options.chunkSize = InnerFormat.minimumChunkSize
        let sink = MemorySink()
        _ = try BackupWriter.writeArchive(of: try w.hsm("prod"), keyrings: [try w.keyring()], options: options, to: sink)
        let exported = try w.kms.exportKey("backup-key")
        let ring = try RawAESKeyring(namespace: LocalKMS.namespace, name: "backup-key/v\(exported.version)", wrappingKey: exported.key)
        let keys = VerificationKeys(keyrings: [ring], hsm: try w.hsm("prod"))
        let s = Sample(world: w, archive: sink.bytes, keyring: ring, keys: keys)
        // The clean archive passes every level.
        for level in VerificationLevel.allCases {
            let r = try Verifier.verify(MemorySource(s.archive), name: "clean", level: level, keys: keys)
            XCTAssertTrue(r.passed, "clean archive at \(level): \(r.findings)")
        }
        return s
    }

    enum ByteClass { case structural, opaque, content }

    /// Classifies every byte of a v2 framed envelope message from its own layout.
    static func classify(_ m: [UInt8]) throws -> [ByteClass] {
        var c = [ByteClass](repeating: .opaque, count: m.count)
        var r = ByteReader(m)
        func mark(_ n: Int, _ k: ByteClass) throws { let at = r.offset; _ = try r.readBytes(n, "field"); for i in at..<(at + n) { c[i] = k } }
        func u16(_ k: ByteClass) throws -> Int { let at = r.offset; let v = Int(try r.readUInt16("u16")); c[at] = k; c[at + 1] = k; return v }
        func u32(_ k: ByteClass) throws -> UInt32 { let at = r.offset; let v = try r.readUInt32("u32"); for i in at..<(at + 4) { c[i] = k }; return v }
        try mark(1, .structural)                       // version
        let suite = try u16(.structural)               // suite
        try mark(32, .opaque)                          // message ID
        let aad = try u16(.structural)
        let ctxEnd = r.offset + aad
        if aad > 0 {
            let pairs = try u16(.structural)
            for _ in 0..<pairs {
                try mark(try u16(.structural), .content)
                try mark(try u16(.structural), .content)
            }
        }
        precondition(r.offset == ctxEnd)
        let edks = try u16(.structural)
        for _ in 0..<edks {
            try mark(try u16(.structural), .content)  // provider ID (parsed as UTF-8)
            try mark(try u16(.structural), .opaque)   // provider info
            try mark(try u16(.structural), .opaque)   // EDK ciphertext
        }
        try mark(1, .structural)                       // content type
        let frameLength = try u32(.structural)
        try mark(32, .opaque)                          // commitment key
        try mark(16, .opaque)                          // header tag
        while true {
            let first = try u32(.structural)
            let final = first == 0xFFFF_FFFF
            if final { _ = try u32(.structural) }
            try mark(12, .opaque)                      // IV
            let length = final ? Int(try u32(.structural)) : Int(frameLength)
            try mark(length + 16, .opaque)             // ciphertext and tag
            if final { break }
        }
        if suite == 0x0578 {
            let n = try u16(.structural)
            try mark(n, .opaque)
        }
        try r.expectEnd("message")
        return c
    }

    /// Every truncation and every flipped byte of the whole archive, at the structure and the
    /// envelope level.
    func sweepEnvelope(_ s: Sample, masks: (Int) -> [UInt8]) throws -> (cases: Int, structureBlind: Int) {
        let classes = try Self.classify(s.archive)
        var cases = 0, blind = 0
        func levels(_ bad: [UInt8], _ what: String, expectStructure: Bool?) throws {
            cases += 1
            let st = try Verifier.verify(MemorySource(bad), name: what, level: .structure)
            if let expectStructure {
                XCTAssertEqual(st.passed, !expectStructure, "\(what): structure level \(st.passed ? "passed" : "failed: \(st.findings)")")
            }
            if st.passed { blind += 1 } else { XCTAssertFalse(st.errors.isEmpty, "\(what): failed without a finding") }
            do {
                let env = try Verifier.verify(MemorySource(bad), name: what, level: .envelope, keys: s.keys)
                XCTAssertFalse(env.passed, "\(what): envelope level passed")
                XCTAssertFalse(env.errors.isEmpty, "\(what): envelope level failed without a finding")
            } catch let e as EnvelopeError where e.code == .noUsableKey {
                // A damaged EDK: no key opens the archive any more, a typed refusal (exit 67).
            }
        }
        for n in 0..<s.archive.count {
            try levels(Array(s.archive.prefix(n)), "truncated to \(n)", expectStructure: true)
        }
        try levels(s.archive + [0], "one trailing byte", expectStructure: true)
        for i in 0..<s.archive.count {
            for mask in masks(i) {
                var bad = s.archive
                bad[i] ^= mask
                let expect: Bool? = classes[i] == .structural ? true : classes[i] == .opaque ? false : nil
                try levels(bad, "byte \(i) ^ 0x\(String(mask, radix: 16)) (\(classes[i]))", expectStructure: expect)
            }
        }
        return (cases, blind)
    }

    func testUnsignedArchiveEveryTruncationAndFlipIsCaughtAtTheRightLevel() throws {
        let s = try makeSample(signed: false)
        let (cases, blind) = try sweepEnvelope(s, masks: Self.masks)
        XCTAssertEqual(cases, s.archive.count * 3 + 1)
        XCTAssertGreaterThan(blind, 0, "some flips are inside ciphertext")
    }

    func testSignedArchiveEveryTruncationAndFlipIsCaughtAtTheRightLevel() throws {
        let s = try makeSample(signed: true, frameLength: 512)
        let (cases, _) = try sweepEnvelope(s, masks: { _ in [0xFF] })
        XCTAssertEqual(cases, s.archive.count * 2 + 1)
    }

    /// Every byte of the inner blob flipped (every mask) and every truncation, re-encrypted
    /// under the envelope: the envelope layer passes, the full level catches each one.
    func testEveryChangeInsideTheInnerBlobIsCaughtAtFullLevel() throws {
        let s = try makeSample(signed: false)
        let d = try EnvelopeDecryptor.decrypt(s.archive, keyrings: [s.keyring])
        let blob = d.plaintext
        let context = d.header.context
        // Inner structural bytes: prelude (magic, major version, body length), chunk frame
        // types and lengths.
        let header = try InnerHeader.parse(prefix: blob)
        var structural = Set<Int>(0..<9)
        structural.formUnion(10..<14)
        var at = header.byteCount
        while at < blob.count {
            structural.formUnion(at..<(at + 5))
            let length = Int(blob[at + 1]) << 24 | Int(blob[at + 2]) << 16 | Int(blob[at + 3]) << 8 | Int(blob[at + 4])
            at += 5 + length
        }
        XCTAssertEqual(at, blob.count)

        var cases = 0
        func check(_ inner: [UInt8], _ what: String, innerStructural: Bool) throws {
            cases += 1
            let message = try EnvelopeEncryptor.encrypt(inner, keyrings: [s.keyring], context: context, suite: .committing, frameLength: 256)
            do {
                let full = try Verifier.verify(MemorySource(message), name: what, level: .full, keys: s.keys)
                XCTAssertFalse(full.passed, "\(what): full level passed")
                XCTAssertFalse(full.errors.isEmpty, "\(what): full level failed without a finding")
                XCTAssertTrue(full.errors.allSatisfy { $0.layer != .envelope }, "\(what): the envelope is intact: \(full.errors)")
            } catch let e as HSMBackupError where e.code == .incompatibleHSM {
                // The changed inner header names another manufacturer or PBK: the HSM refuses to
                // judge it (exit 68), a typed refusal, never a pass.
            }
            if innerStructural {
                let env = try Verifier.verify(MemorySource(message), name: what, level: .envelope, keys: s.keys)
                XCTAssertFalse(env.passed, "\(what): the keyless inner structure check missed a structural change")
            }
        }
        for i in 0..<blob.count {
            for mask in Self.masks(at: i) {
                var bad = blob
                bad[i] ^= mask
                try check(bad, "inner byte \(i) ^ 0x\(String(mask, radix: 16))", innerStructural: structural.contains(i))
            }
        }
        for n in stride(from: 0, to: blob.count, by: 1) {
            try check(Array(blob.prefix(n)), "inner truncated to \(n)", innerStructural: true)
        }
        XCTAssertEqual(cases, blob.count * 3)
    }
}
