import BackupCrypto
import ByteCoding
@testable import Envelope
import Foundation
import XCTest

/// Rules a second implementation had to guess (issue 13 items 2, 3 and 13), each pinned to its
/// code (spec/FORMAT.md §3.1, §3.2.2, §3.3.2, §3.9).
final class HeaderAndFrameRuleTests: XCTestCase {
    private let ring = testKeyring()

    private func firstIndex(of needle: [UInt8], in bytes: [UInt8]) throws -> Int {
        try XCTUnwrap((0...(bytes.count - needle.count)).first { Array(bytes[$0..<($0 + needle.count)]) == needle })
    }

    /// §3.1: version, then a known suite, then the suite's format version, then the policy. A v1
    /// suite in a v2 header is `suiteVersionMismatch` whatever the policy allows.
    func testASuiteOfTheOtherFormatVersionIsAMismatchUnderEveryPolicy() throws {
        var v2 = try EnvelopeEncryptor.encrypt(pattern(10), keyrings: [ring])
        v2[1] = 0x01; v2[2] = 0x78                                   // 01 78: a v1 suite
        for policy in [CommitmentPolicy.requireCommitment, .allowLegacyDecrypt] {
            let e = assertEnvelopeError(.suiteVersionMismatch) { try HeaderReader.read(from: MemorySource(v2), policy: policy) }
            XCTAssertEqual(e?.offset, 1)
        }
        var v1 = try Vector("v1_0178_rawaes").message
        v1[2] = 0x04; v1[3] = 0x78                                   // 04 78 in a v1 header
        for policy in [CommitmentPolicy.requireCommitment, .allowLegacyDecrypt] {
            assertEnvelopeError(.suiteVersionMismatch) { try HeaderReader.read(from: MemorySource(v1), policy: policy) }
        }
        // A v1 suite in a v1 header is the policy's call.
        assertEnvelopeError(.nonCommittingSuiteRefused) { try HeaderReader.read(from: MemorySource(try Vector("v1_0178_rawaes").message)) }
    }

    /// §3.2, §3.9: a header that ends early is `truncatedHeader` at every length; a provider ID
    /// that is not UTF-8 is `malformedHeader`.
    func testAShortHeaderAndANonUTF8ProviderIDHaveTheirCodes() throws {
        let m = try EnvelopeEncryptor.encrypt(pattern(10), keyrings: [ring])
        let h = try HeaderReader.read(from: MemorySource(m))
        for n in 0..<h.byteCount {
            let e = assertEnvelopeError(.truncatedHeader, "prefix \(n)") { try HeaderReader.read(from: MemorySource(Array(m.prefix(n)))) }
            if n > 0 { XCTAssertNotNil(e?.offset) }
        }
        var bad = m
        let at = try firstIndex(of: Array(ring.namespace.utf8), in: bad)
        bad[at] = 0xFF
        assertEnvelopeError(.malformedHeader) { try HeaderReader.read(from: MemorySource(bad)) }
    }

    /// §3.2.2: `aws-crypto-public-key` is the standard Base64 of a 49-byte compressed point. Its
    /// syntax is checked with the header (no key needed); that it is a point on P-384 is checked
    /// by the decryptor. Both are `reservedContextKey`.
    func testAMalformedVerificationKeyIsAReservedContextKeyError() throws {
        let m = try EnvelopeEncryptor.encrypt(pattern(10), keyrings: [ring], suite: .committingSigned)
        let header = try HeaderReader.read(from: MemorySource(m))
        let value = try XCTUnwrap(header.context.value(forKey: EncryptionContext.publicKeyKey))
        let at = try firstIndex(of: Array(value.utf8), in: m)
        func with(_ replacement: String) -> [UInt8] {
            precondition(replacement.utf8.count == 68)
            var b = m
            b.replaceSubrange(at..<(at + 68), with: Array(replacement.utf8))
            return b
        }
        var raw = [UInt8](Data(base64Encoded: value)!)
        raw[0] = 0x04                                                // not a compressed point
        let uncompressedPrefix = Data(raw).base64EncodedString()
        let notBase64 = "!" + value.dropFirst()
        let urlSafe = String(repeating: "_", count: 68)
        for bad in [uncompressedPrefix, notBase64, urlSafe] {
            let e = assertEnvelopeError(.reservedContextKey, bad) { try HeaderReader.read(from: MemorySource(with(bad))) }
            XCTAssertNotNil(e?.offset)
        }
        // Well formed, but x = 2^384 − 1 is no field element: the decryptor refuses it.
        let offCurve = Data([0x02] + [UInt8](repeating: 0xFF, count: 48)).base64EncodedString()
        XCTAssertNoThrow(try HeaderReader.read(from: MemorySource(with(offCurve))))
        assertEnvelopeError(.reservedContextKey) { try EnvelopeDecryptor.decrypt(with(offCurve), keyrings: [ring]) }
    }

    /// §3.3.2: regular frames carry 1…FFFFFFFE and the final frame may carry FFFFFFFF, so a message
    /// holds at most 2^32 − 1 frames by construction: readers have no frame limit to check (no
    /// `tooManyFrames`), a message that ends on frame FFFFFFFF reads, and no counter overflows.
    /// Writers refuse a regular frame FFFFFFFF (`tooManyFrames`). A short message stands for the
    /// end of a long one by starting the counters near the end.
    func testTheLastPossibleFramesReadAndAWriterStopsAtTheMarker() throws {
        let materials = try EncryptionMaterials.generate(keyrings: [ring], context: .empty)
        let sink = MemorySink()
        let e = try EnvelopeEncryptor(sink: sink, materials: materials, frameLength: 128)
        e.sequence = 0xFFFF_FFFE
        try e.write(pattern(200))                                    // regular frame FFFFFFFE
        try e.finish()                                               // final frame FFFFFFFF, 72 bytes
        let m = sink.bytes
        let h = try HeaderReader.read(from: MemorySource(m))
        XCTAssertEqual(Array(m[h.byteCount..<(h.byteCount + 4)]), [0xFF, 0xFF, 0xFF, 0xFE])
        let finalAt = h.byteCount + 4 + 12 + 128 + 16
        XCTAssertEqual(Array(m[finalAt..<(finalAt + 8)]), [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])

        let d = try EnvelopeDecryptor(source: MemorySource(m), keyrings: [ring])
        d.expected = 0xFFFF_FFFE
        let out = MemorySink()
        try d.decryptAll(to: out)
        XCTAssertEqual(out.bytes, pattern(200))
        XCTAssertEqual(d.framesRead, 0xFFFF_FFFF)
        let s = try EnvelopeStructure.walk(MemorySource(m), policy: .requireCommitment, limits: HeaderLimits(), firstSequence: 0xFFFF_FFFE)
        XCTAssertEqual(s.frameCount, 0xFFFF_FFFF)

        // A writer that would need a regular frame FFFFFFFF stops.
        let w = try EnvelopeEncryptor(sink: MemorySink(), materials: materials, frameLength: 128)
        w.sequence = 0xFFFF_FFFF
        assertEnvelopeError(.tooManyFrames) { try w.write(pattern(128)) }
        // ... but may still end with the final frame FFFFFFFF.
        let last = try EnvelopeEncryptor(sink: MemorySink(), materials: materials, frameLength: 128)
        last.sequence = 0xFFFF_FFFF
        try last.write(pattern(100))
        XCTAssertNoThrow(try last.finish())
    }
}
