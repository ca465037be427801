import BackupCrypto
import ByteCoding
@testable import Envelope
import Foundation
import XCTest

/// Issue 12: the attack on a rewrap that wrote a second header tag under the old (content key,
/// all-zero IV), run as an attacker would, from two versions of a message and no key. The test
/// first shows that the procedure finds the old behaviour (it forges a frame the decryptor
/// accepts), then that it finds nothing in what `Rewrap` writes now (spec/FORMAT.md §3.7, §7).
final class RewrapNonceReuseAttackTests: XCTestCase {
    private let frameLength: UInt32 = 512
    private let plain = pattern(5000)
    private let context = try! EncryptionContext(["tenant": "acme", "purpose": "nonce-reuse regression"])
    private let k1 = testKeyring("k1", byte: 1)
    private let k2 = testKeyring("k2", byte: 2)
    private let k3 = testKeyring("k3", byte: 3)

    /// The GHASH arithmetic against the GCM specification's test case 2 (McGrew and Viega):
    /// K = 0^128, IV = 0^96, P = 0^128 gives H, C and T below, and E_K(J0) is test case 1's tag.
    func testGHASHMatchesTheGCMSpecificationTestCase() {
        let h = GF128(block: Hex.decode("66e94bd4ef8a2c3b884cfa59ca342b2e")!)
        let c = Hex.decode("0388dace60b6a392f328c2b971b2fe78")!
        let mask = GF128(block: Hex.decode("58e2fccefa7e3061367f1d57a4e7455a")!)
        XCTAssertEqual((ghash(h: h, aad: [], ciphertext: c) + mask).bytes, Hex.decode("ab6e47d42cec13bdf53a67b21257bddf")!)
        let a = GF128.random()
        XCTAssertEqual(a * a.inverse, .one)
        // A polynomial with known roots gives them back.
        let r1 = GF128.random(), r2 = GF128.random(), r3 = GF128.random()
        let f = GFPoly([r1, .one]) * GFPoly([r2, .one]) * GFPoly([r3, .one]) * GFPoly([.random(), .random(), .one])
        let found = f.roots
        for r in [r1, r2, r3] { XCTAssertTrue(found.contains(r)) }
        for r in found { XCTAssertEqual(f.evaluate(r), .zero) }
    }

    /// What stop 10 shipped: same message ID, data key and commitment key, new EDKs, a new header
    /// tag under the old content key and the all-zero IV, the body bytes copied. Built here only
    /// to show that the attack test can find the bug.
    private func oldStyleRewrap(_ m: [UInt8], dataKey: DataKey, to keyring: Keyring) throws -> [UInt8] {
        let old = try HeaderReader.read(from: MemorySource(m))
        let keys = try KeyDerivation.derive(suite: old.suite, dataKey: dataKey, messageID: old.messageID)
        let unsigned = try MessageHeader.makeV2(suite: old.suite, messageID: old.messageID, context: old.context,
                                                edks: [try keyring.wrap(dataKey, context: old.context)],
                                                frameLength: old.frameLength, commitKey: old.suiteData, contentType: old.contentType)
        let tag = try KeyDerivation.headerTag(body: unsigned.bodyBytes, key: keys.contentKey, iv: [UInt8](repeating: 0, count: 12))
        return unsigned.withTag(tag).bytes + Array(m[old.byteCount...])
    }

    /// The attack: from two message versions alone, the candidates for H from their header tags;
    /// with each, frame 1 of `target` gets one ciphertext bit flipped and its tag recomputed from
    /// the frame's own valid tag. Returns the forgeries that `keyring` decrypts without error.
    private func forgeries(first: [UInt8], second target: [UInt8], keyring: Keyring) throws -> (candidates: Int, accepted: [[UInt8]]) {
        let h1 = try HeaderReader.read(from: MemorySource(first))
        let h2 = try HeaderReader.read(from: MemorySource(target))
        let candidates = hashKeyCandidates(aad1: h1.bodyBytes, tag1: h1.headerTag, aad2: h2.bodyBytes, tag2: h2.headerTag)
        // Frame 1 of the target: u32 sequence ‖ 12 IV ‖ frame-length bytes ‖ 16 tag.
        let at = h2.byteCount
        let n = Int(h2.frameLength)
        let ctRange = (at + 16)..<(at + 16 + n)
        let tagRange = ctRange.upperBound..<(ctRange.upperBound + 16)
        var aad = ByteWriter()
        aad.writeBytes(h2.messageID)
        aad.writeBytes(Array("AWSKMSEncryptionClient Frame".utf8))
        aad.writeUInt32(1)
        aad.writeUInt64(UInt64(n))
        let ct = Array(target[ctRange])
        let tag = GF128(block: target[tagRange])
        var forgedCT = ct
        forgedCT[0] ^= 0x01
        var accepted: [[UInt8]] = []
        for h in candidates {
            let mask = tag + ghash(h: h, aad: aad.bytes, ciphertext: ct)       // E_K(J0) of frame 1
            var forged = target
            forged.replaceSubrange(ctRange, with: forgedCT)
            forged.replaceSubrange(tagRange, with: (ghash(h: h, aad: aad.bytes, ciphertext: forgedCT) + mask).bytes)
            if let out = try? EnvelopeDecryptor.decrypt(forged, keyrings: [keyring]).plaintext { accepted.append(out) }
        }
        return (candidates.count, accepted)
    }

    func testTheAttackForgesAFrameOfAnOldStyleRewrap() throws {
        let dataKey = try DataKey.random()
        let materials = try EncryptionMaterials.generate(keyrings: [k1], context: context, suite: .committing, dataKey: dataKey)
        let sink = MemorySink()
        let e = try EnvelopeEncryptor(sink: sink, materials: materials, frameLength: frameLength)
        try e.write(plain)
        try e.finish()
        let original = sink.bytes
        let rewrapped = try oldStyleRewrap(original, dataKey: dataKey, to: k2)
        XCTAssertEqual(try EnvelopeDecryptor.decrypt(rewrapped, keyrings: [k2]).plaintext, plain)

        let (candidates, accepted) = try forgeries(first: original, second: rewrapped, keyring: k2)
        XCTAssertGreaterThanOrEqual(candidates, 1)
        XCTAssertFalse(accepted.isEmpty, "the attack should forge a frame of the old-style rewrap")
        for out in accepted {
            XCTAssertEqual(out.count, plain.count)
            XCTAssertEqual(out[0], plain[0] ^ 0x01, "the forged frame decrypts to altered plaintext")
            XCTAssertEqual(Array(out[1...]), Array(plain[1...]))
        }
    }

    func testTheAttackFindsNothingInWhatRewrapWritesNow() throws {
        for suite in [AlgorithmSuite.committing, .committingSigned] {
            let original = try EnvelopeEncryptor.encrypt(plain, keyrings: [k1], context: context, suite: suite, frameLength: frameLength)
            let a = MemorySink(), b = MemorySink()
            try Rewrap.rewrap(source: MemorySource(original), sink: a, keyrings: [k1], newKeyrings: [k2])
            try Rewrap.rewrap(source: MemorySource(original), sink: b, keyrings: [k1], newKeyrings: [k3])
            let versions = [(original, k1), (a.bytes, k2), (b.bytes, k3)]
            var ids = Set<[UInt8]>(), commits = Set<[UInt8]>()
            for (m, _) in versions {
                let h = try HeaderReader.read(from: MemorySource(m))
                ids.insert(h.messageID)
                commits.insert(h.suiteData)
            }
            XCTAssertEqual(ids.count, 3, "every version has its own message ID")
            XCTAssertEqual(commits.count, 3, "every version has its own commitment key")
            // The original against a rewrap, and two rewraps of one original against each other.
            for (i, j) in [(0, 1), (1, 2)] {
                let (_, accepted) = try forgeries(first: versions[i].0, second: versions[j].0, keyring: versions[j].1)
                XCTAssertTrue(accepted.isEmpty, "versions \(i) and \(j) of suite \(suite.idHex) gave a forgery")
            }
        }
    }
}
