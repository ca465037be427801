import BackupCrypto
import ByteCoding
import Envelope
import XCTest

/// Every truncation and a flipped byte in every field fail with the specific error code
/// (spec/FORMAT.md §3.9).
final class RobustnessTests: XCTestCase {
    let ring = testKeyring()
    let frameLength: UInt32 = 16
    let plaintext = pattern(40) // 16 + 16 + final 8

    private func message(signed: Bool) throws -> [UInt8] {
        try EnvelopeEncryptor.encrypt(plaintext, keyrings: [ring], context: try EncryptionContext(["purpose": "test", "tenant": "acme"]),
                                      suite: signed ? .committingSigned : .committing, frameLength: frameLength)
    }

    private func decrypt(_ m: [UInt8]) throws -> [UInt8] {
        try EnvelopeDecryptor.decrypt(m, keyrings: [ring]).plaintext
    }

    private func expectedTruncation(_ length: Int, header h: Int, bodyEnd: Int) -> (EnvelopeError.Code, UInt32?) {
        if length < h { return (.truncatedHeader, nil) }
        let regular = Int(frameLength) + 32
        if length >= bodyEnd { return (.truncatedFooter, nil) }
        let inBody = length - h
        let frame = UInt32(inBody / regular + 1)
        if inBody <= 2 * regular && inBody % regular == 0 { return (.missingFinalFrame, frame) }
        return (.truncatedFrame, min(frame, 3))
    }

    func testEveryTruncationFailsWithTheSpecificError() throws {
        for signed in [false, true] {
            let m = try message(signed: signed)
            let h = try HeaderReader.read(from: MemorySource(m)).byteCount
            let bodyEnd = h + 2 * (Int(frameLength) + 32) + 40 + 8
            XCTAssertEqual(signed ? m.count > bodyEnd : m.count == bodyEnd, true)
            XCTAssertEqual(try decrypt(m), plaintext)
            for n in 0..<m.count {
                let (code, frame) = expectedTruncation(n, header: h, bodyEnd: bodyEnd)
                let e = assertEnvelopeError(code, "signed=\(signed) prefix \(n)") { try decrypt(Array(m.prefix(n))) }
                if let frame { XCTAssertEqual(e?.frame, frame, "prefix \(n)") }
            }
            let e = assertEnvelopeError(.trailingBytes, "appended byte") { try decrypt(m + [0]) }
            XCTAssertEqual(e?.offset, m.count)
        }
    }

    /// The fields of a v2 message made by `message(signed:)`, with the codes a flip may give.
    private func fields(_ m: [UInt8], signed: Bool) throws -> [(name: String, range: Range<Int>, codes: Set<EnvelopeError.Code>, frame: UInt32?)] {
        let h = try HeaderReader.read(from: MemorySource(m))
        let structure: Set<EnvelopeError.Code> = [.truncatedHeader, .malformedHeader, .invalidEncryptionContext, .noEncryptedDataKeys,
                                                  .tooManyEncryptedDataKeys, .invalidContentType, .invalidFrameLength, .reservedContextKey]
        var out: [(String, Range<Int>, Set<EnvelopeError.Code>, UInt32?)] = []
        var o = 0
        func add(_ name: String, _ n: Int, _ codes: Set<EnvelopeError.Code>, frame: UInt32? = nil) { out.append((name, o..<(o + n), codes, frame)); o += n }
        add("version", 1, [.unsupportedVersion, .malformedHeader])
        // 0x0478 ^ 0x0100 = 0x0578 (and back): a suite swap shows as the verification-key rule.
        add("suite", 2, [.unsupportedSuite, .suiteVersionMismatch, .nonCommittingSuiteRefused, .reservedContextKey])
        add("message id", 32, [.commitmentMismatch])
        add("aad length", 2, structure)
        add("context pair count", 2, [.invalidEncryptionContext])
        for p in h.context.pairs {
            add("context key length", 2, [.invalidEncryptionContext])
            let keyCodes: Set<EnvelopeError.Code> = p.keyString == EncryptionContext.publicKeyKey
                ? [.reservedContextKey, .invalidEncryptionContext] : [.invalidEncryptionContext, .noUsableKey, .reservedContextKey]
            add("context key \(p.keyString)", p.key.count, keyCodes)
            add("context value length", 2, [.invalidEncryptionContext])
            add("context value of \(p.keyString)", p.value.count, [.invalidEncryptionContext, .noUsableKey, .reservedContextKey])
        }
        add("edk count", 2, structure)
        for e in h.encryptedDataKeys {
            add("provider id length", 2, structure)
            add("provider id", e.providerID.utf8.count, [.noUsableKey, .malformedHeader])
            add("provider info length", 2, structure)
            add("provider info", e.providerInfo.count, [.noUsableKey])
            add("edk ciphertext length", 2, structure)
            add("edk ciphertext", e.ciphertext.count, [.noUsableKey])
        }
        add("content type", 1, [.invalidContentType])
        add("frame length", 4, [.headerAuthenticationFailed, .invalidFrameLength])
        add("commitment key", 32, [.commitmentMismatch])
        add("header tag", 16, [.headerAuthenticationFailed])
        XCTAssertEqual(o, h.byteCount)
        for f in UInt32(1)...2 {
            add("frame \(f) sequence", 4, [.frameOutOfSequence], frame: f)
            add("frame \(f) iv", 12, [.frameAuthenticationFailed], frame: f)
            add("frame \(f) content", Int(frameLength), [.frameAuthenticationFailed], frame: f)
            add("frame \(f) tag", 16, [.frameAuthenticationFailed], frame: f)
        }
        add("final marker", 4, [.frameOutOfSequence], frame: 3)
        add("final sequence", 4, [.frameOutOfSequence], frame: 3)
        add("final iv", 12, [.frameAuthenticationFailed], frame: 3)
        add("final length", 4, [.frameAuthenticationFailed, .finalFrameTooLong, .truncatedFrame], frame: 3)
        add("final content", 8, [.frameAuthenticationFailed], frame: 3)
        add("final tag", 16, [.frameAuthenticationFailed], frame: 3)
        if signed {
            add("signature length", 2, [.invalidSignature, .truncatedFooter])
            add("signature", m.count - o, [.invalidSignature])
        }
        XCTAssertEqual(o, m.count)
        return out.map { (name: $0.0, range: $0.1, codes: $0.2, frame: $0.3) }
    }

    func testAFlippedByteInEveryFieldFailsWithTheSpecificError() throws {
        var checked = 0
        for signed in [false, true] {
            let m = try message(signed: signed)
            for field in try fields(m, signed: signed) {
                for i in field.range {
                    for mask: UInt8 in [0x01, 0xFF] {
                        var bad = m
                        bad[i] ^= mask
                        do {
                            _ = try decrypt(bad)
                            XCTFail("\(field.name) byte \(i) ^ \(mask) decrypted")
                        } catch let e as EnvelopeError {
                            XCTAssertTrue(field.codes.contains(e.code), "\(field.name) byte \(i) ^ \(mask): \(e)")
                            if let f = field.frame, e.code != .truncatedFrame { XCTAssertEqual(e.frame, f, "\(field.name): \(e)") }
                            checked += 1
                        }
                    }
                }
            }
        }
        XCTAssertGreaterThan(checked, 1000)
    }

    func testFramesOutOfOrderAndDroppedFramesAreNamed() throws {
        let m = try message(signed: false)
        let h = try HeaderReader.read(from: MemorySource(m)).byteCount
        let r = Int(frameLength) + 32
        let f1 = Array(m[h..<(h + r)]), f2 = Array(m[(h + r)..<(h + 2 * r)]), rest = Array(m[(h + 2 * r)...])
        let head = Array(m.prefix(h))
        var e = assertEnvelopeError(.frameOutOfSequence) { try decrypt(head + f2 + f1 + rest) }
        XCTAssertEqual(e?.frame, 1)
        e = assertEnvelopeError(.frameOutOfSequence) { try decrypt(head + f1 + rest) }
        XCTAssertEqual(e?.frame, 2)
        e = assertEnvelopeError(.missingFinalFrame) { try decrypt(head + f1 + f2) }
        XCTAssertEqual(e?.frame, 3)
    }

    func testPlaintextOfAFrameIsReleasedOnlyAfterItsTagAndTheDecryptorStaysFailed() throws {
        var m = try message(signed: false)
        let h = try HeaderReader.read(from: MemorySource(m)).byteCount
        m[h + Int(frameLength) + 32 + 20] ^= 1 // frame 2 content
        let d = try EnvelopeDecryptor(source: MemorySource(m), keyrings: [ring])
        XCTAssertEqual(try d.nextChunk(), Array(plaintext.prefix(16)))
        assertEnvelopeError(.frameAuthenticationFailed) { try d.nextChunk() }
        assertEnvelopeError(.frameAuthenticationFailed) { try d.nextChunk() }
    }

    /// An error of the byte source itself (the object store's own error type, mid-frame or
    /// mid-footer) fails the decryptor for good, as a tag failure does: the first call throws the
    /// source's error as it is, every later call throws it again and no plaintext comes out,
    /// even though the source would now go on (the reader is mid-frame; the signature verifier
    /// stopped at the footer).
    func testASourceErrorOfAnyTypeFailsTheDecryptorForGood() throws {
        struct StoreHiccup: Error, Equatable { let at: Int }
        final class HiccupSource: ByteSource {
            let bytes: [UInt8], failAt: Int
            var position = 0, failed = false
            init(_ bytes: [UInt8], failAt: Int) { self.bytes = bytes; self.failAt = failAt }
            func read(maxCount: Int) throws -> [UInt8] {
                let n = min(maxCount, bytes.count - position)
                if !failed, n > 0, position + n > failAt {
                    failed = true
                    throw StoreHiccup(at: failAt)
                }
                defer { position += n }
                return Array(bytes[position..<(position + n)])
            }
        }
        for signed in [false, true] {
            let m = try message(signed: signed)
            let h = try HeaderReader.read(from: MemorySource(m)).byteCount
            for failAt in h..<m.count {
                let d = try EnvelopeDecryptor(source: HiccupSource(m, failAt: failAt), keyrings: [ring])
                var out: [UInt8] = []
                var first: Error?
                while first == nil {
                    do {
                        guard let chunk = try d.nextChunk() else { break }
                        out += chunk
                    } catch { first = error }
                }
                XCTAssertEqual(first as? StoreHiccup, StoreHiccup(at: failAt), "failing at \(failAt): \(String(describing: first))")
                for _ in 0..<3 {
                    XCTAssertThrowsError(try d.nextChunk(), "failing at \(failAt)") {
                        XCTAssertEqual($0 as? StoreHiccup, StoreHiccup(at: failAt), "failing at \(failAt): later calls throw the first error")
                    }
                }
                XCTAssertTrue(plaintext.starts(with: out), "failing at \(failAt)")
                XCTAssertLessThan(out.count, plaintext.count, "failing at \(failAt): the whole plaintext came out")
            }
        }
    }

    func testHeaderRulesAndPolicy() throws {
        // An unsigned suite whose context holds the public-key pair, and a caller supplying it.
        assertEnvelopeError(.reservedContextKey) {
            try EnvelopeEncryptor.encrypt([], keyrings: [ring], context: try EncryptionContext([EncryptionContext.publicKeyKey: "x"]))
        }
        // v1 messages need the explicit option.
        let v1 = try Vector("v1_0178_rawaes")
        assertEnvelopeError(.nonCommittingSuiteRefused) { try HeaderReader.read(from: MemorySource(v1.message)) }
        XCTAssertNoThrow(try HeaderReader.read(from: MemorySource(v1.message), policy: .allowLegacyDecrypt))
        // A frame length of 0 is refused on encrypt.
        assertEnvelopeError(.invalidFrameLength) { try EnvelopeEncryptor.encrypt([], keyrings: [ring], frameLength: 0) }
        // EDK limit applies as soon as the count is read.
        var options = DecryptOptions()
        options.limits.maximumEncryptedDataKeys = 1
        let two = try EnvelopeEncryptor.encrypt([1], keyrings: [ring, testKeyring("b", byte: 9)])
        assertEnvelopeError(.tooManyEncryptedDataKeys) { try EnvelopeDecryptor.decrypt(two, keyrings: [ring], options: options) }
    }

    func testEncryptionContextRules() throws {
        assertEnvelopeError(.invalidEncryptionContext) {
            try EncryptionContext(pairs: [("a", "1"), ("a", "2")])
        }
        // NFC and NFD spellings are different keys.
        let c = try EncryptionContext(pairs: [("caf\u{e9}", "1"), ("cafe\u{301}", "2")])
        XCTAssertEqual(c.count, 2)
        XCTAssertTrue(c.isSorted)
        XCTAssertEqual(try c.serialized().count, 2 + (2 + 5 + 2 + 1) + (2 + 6 + 2 + 1))
        XCTAssertEqual(try EncryptionContext.empty.serialized(), [])
        assertEnvelopeError(.invalidEncryptionContext) {
            try EncryptionContext(pairs: [("k", String(repeating: "x", count: 70_000))])
        }
    }
}

final class LimitTests: XCTestCase {
    func testAReaderMayLowerTheFrameLengthLimit() throws {
        let m = try EnvelopeEncryptor.encrypt(pattern(10), keyrings: [testKeyring()], frameLength: 4096)
        var options = DecryptOptions()
        options.limits.maximumFrameLength = 1024
        let e = assertEnvelopeError(.invalidFrameLength) { try EnvelopeDecryptor.decrypt(m, keyrings: [testKeyring()], options: options) }
        XCTAssertNotNil(e?.offset)
        options.limits.maximumFrameLength = 4096
        XCTAssertEqual(try EnvelopeDecryptor.decrypt(m, keyrings: [testKeyring()], options: options).plaintext, pattern(10))
    }
}

/// Random multi-byte damage (deterministic seed): decryption and the structure walk only ever
/// throw typed errors, never crash or succeed on a changed message.
final class MutationTests: XCTestCase {
    func testRandomDamageGivesTypedErrors() throws {
        let ring = testKeyring()
        var rng = SplitMix(seed: 0x5eed)
        let messages = [
            try EnvelopeEncryptor.encrypt(pattern(70), keyrings: [ring, testKeyring("b", byte: 3)],
                                          context: try EncryptionContext(["a": "b", "ключ": "😀"]), frameLength: 32),
            try EnvelopeEncryptor.encrypt(pattern(70), keyrings: [ring], suite: .committingSigned, frameLength: 32),
            try Vector("v2_0478_rawaes_nonframed").message,
        ]
        let rings: [Keyring] = [ring, try Vector("v2_0478_rawaes_nonframed").keyrings[0]]
        for m in messages {
            for _ in 0..<700 {
                var bad = m
                for _ in 0..<(1 + Int(rng.next() % 4)) {
                    let i = Int(rng.next() % UInt64(bad.count))
                    let v = UInt8(truncatingIfNeeded: rng.next())
                    bad[i] = v == bad[i] ? v ^ 0x80 : v // always a different byte
                }
                if rng.next() % 4 == 0 { bad = Array(bad.prefix(Int(rng.next() % UInt64(bad.count)))) }
                if bad == m { continue }
                XCTAssertThrowsError(try EnvelopeDecryptor.decrypt(bad, keyrings: rings)) { XCTAssertTrue($0 is EnvelopeError, "\($0)") }
                do { _ = try EnvelopeStructure.walk(MemorySource(bad)) } catch { XCTAssertTrue(error is EnvelopeError, "\(error)") }
            }
        }
    }
}

struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
