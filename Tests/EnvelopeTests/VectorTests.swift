import BackupCrypto
import ByteCoding
import Envelope
import XCTest

/// The 18 SDK-made messages (Vectors/README.md): decode, policy, canonical header, re-encoding.
final class VectorTests: XCTestCase {
    func testAllEighteenVectorsArePresent() {
        XCTAssertEqual(Vector.names.count, 18)
    }

    func testEveryVectorDecodesToItsPlaintext() throws {
        for name in Vector.names {
            let v = try Vector(name)
            if v.isV1 {
                assertEnvelopeError(.nonCommittingSuiteRefused, name) {
                    try EnvelopeDecryptor.decrypt(v.message, keyrings: v.keyrings)
                }
                let out = try EnvelopeDecryptor.decrypt(v.message, keyrings: v.keyrings, options: DecryptOptions(policy: .allowLegacyDecrypt))
                XCTAssertEqual(out.plaintext, v.plaintext, name)
                XCTAssertEqual(out.header.version, 1, name)
            } else {
                let out = try EnvelopeDecryptor.decrypt(v.message, keyrings: v.keyrings)
                XCTAssertEqual(out.plaintext, v.plaintext, name)
                XCTAssertEqual(out.header.suite.id, v.suiteID, name)
                XCTAssertEqual(out.header.messageID, v.messageID, name)
                // Also under the legacy option (it only widens what is accepted).
                let legacy = try EnvelopeDecryptor.decrypt(v.message, keyrings: v.keyrings, options: DecryptOptions(policy: .allowLegacyDecrypt))
                XCTAssertEqual(legacy.plaintext, v.plaintext, name)
            }
        }
    }

    func testHeadersReencodeToTheSameBytes() throws {
        for name in Vector.names {
            let v = try Vector(name)
            let h = try HeaderReader.read(from: MemorySource(v.message), policy: .allowLegacyDecrypt)
            XCTAssertEqual(try h.serializeBody(), h.bodyBytes, name)
            XCTAssertEqual(h.bytes, Array(v.message.prefix(h.byteCount)), name)
            XCTAssertEqual(h.byteCount, v.expected["header_length"] as? Int, name)
            let again = try MessageHeader.parse(h.bytes, policy: .allowLegacyDecrypt)
            XCTAssertEqual(again.bodyBytes, h.bodyBytes, name)
        }
    }

    func testHeaderReaderReadsOnlyTheHeader() throws {
        for name in Vector.names {
            let v = try Vector(name)
            let src = MemorySource(v.message)
            let h = try HeaderReader.read(from: src, policy: .allowLegacyDecrypt)
            XCTAssertEqual(src.bytesRead, h.byteCount, name)
        }
    }

    /// From the recorded message ID, data key and EDK IVs the encoder reproduces the SDK's
    /// bytes: whole messages for the unsigned suite, every byte before the footer for the signed.
    func testEncoderReproducesVectorsByteForByte() throws {
        var reproduced = 0
        for name in Vector.names where !name.hasPrefix("v1_") && !name.contains("nonframed") {
            let v = try Vector(name)
            let parsed = try HeaderReader.read(from: MemorySource(v.message))
            let edks: [EncryptedDataKey]
            if name.contains("kms") {
                edks = parsed.encryptedDataKeys // opaque KMS blob: reuse as recorded
            } else {
                let rings = v.keyrings.map { $0 as! RawAESKeyring }
                edks = try zip(rings, v.recordedEDKIVs).map { try $0.wrap(v.dataKey, context: parsed.context, nonce: $1) }
            }
            let signed = parsed.suite.signs
            let materials = EncryptionMaterials(suite: parsed.suite, dataKey: v.dataKey, encryptedDataKeys: edks,
                                                // A Swift dictionary merges the NFC/NFD keys of that vector: take its pairs from the header.
                                                context: signed || name.contains("nfc") ? parsed.context : v.context,
                                                signingKey: signed ? try P384PrivateKey() : nil)
            let sink = MemorySink()
            let e = try EnvelopeEncryptor(sink: sink, materials: materials, frameLength: v.frameLength, messageID: v.messageID)
            // Feed in odd pieces to exercise the streaming path.
            var rest = v.plaintext[...]
            while !rest.isEmpty { let n = min(13, rest.count); try e.write(Array(rest.prefix(n))); rest = rest.dropFirst(n) }
            try e.finish()
            if signed {
                let footer = v.expected["footer_offset"] as! Int
                XCTAssertEqual(Array(sink.bytes.prefix(footer)), Array(v.message.prefix(footer)), name)
            } else {
                XCTAssertEqual(sink.bytes, v.message, name)
            }
            reproduced += 1
        }
        XCTAssertEqual(reproduced, 14)
    }

    func testContextOrderIsRawUTF8Bytes() throws {
        let v = try Vector("v2_0478_rawaes_utf8_ec")
        let h = try HeaderReader.read(from: MemorySource(v.message))
        XCTAssertEqual(h.context.pairs.map(\.keyString), ["Zeta", "alpha", "été", "ж", "～ tilde", "😀 grin"])
        XCTAssertTrue(h.context.isSorted)
        let nfc = try Vector("v2_0478_rawaes_nfc_nfd_ec")
        let h2 = try HeaderReader.read(from: MemorySource(nfc.message))
        XCTAssertEqual(h2.context.count, 2)
        XCTAssertEqual(h2.context.pairs[0].key, [0x63, 0x61, 0x66, 0x65, 0xcc, 0x81]) // NFD first
        XCTAssertEqual(h2.context.pairs[1].key, [0x63, 0x61, 0x66, 0xc3, 0xa9])
    }
}

/// Damage on the SDK-made messages: every prefix and every flipped byte fails with a typed error.
final class VectorDamageTests: XCTestCase {
    func testEveryPrefixOfEveryV2VectorFails() throws {
        let truncations: Set<EnvelopeError.Code> = [.truncatedHeader, .truncatedFrame, .missingFinalFrame, .truncatedFooter]
        for name in Vector.names where !name.hasPrefix("v1_") {
            let v = try Vector(name)
            for n in 0..<v.message.count {
                do {
                    _ = try EnvelopeDecryptor.decrypt(Array(v.message.prefix(n)), keyrings: v.keyrings)
                    XCTFail("\(name) prefix \(n) decrypted")
                } catch let e as EnvelopeError {
                    XCTAssertTrue(truncations.contains(e.code), "\(name) prefix \(n): \(e)")
                }
            }
        }
    }

    func testEveryFlippedByteOfEveryV2VectorFails() throws {
        for name in Vector.names where !name.hasPrefix("v1_") && !name.contains("kms") {
            let v = try Vector(name)
            for i in 0..<v.message.count {
                var bad = v.message
                bad[i] ^= 0x01
                XCTAssertThrowsError(try EnvelopeDecryptor.decrypt(bad, keyrings: v.keyrings), "\(name) byte \(i)") { e in
                    XCTAssertTrue(e is EnvelopeError, "\(name) byte \(i): \(e)")
                }
            }
        }
    }
}
