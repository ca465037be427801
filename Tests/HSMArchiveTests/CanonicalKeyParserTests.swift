import ByteCoding
import Foundation
@testable import SimulatedHSM
import XCTest

/// The restore's fast path for key objects must never accept what the general check (JSON
/// decode, then re-encode to the same bytes) refuses, nor read other values than it does.
final class CanonicalKeyParserTests: XCTestCase {
    /// Fast accepts ⇒ the slow path accepts the same bytes and decodes the same values.
    private func assertAgrees(_ bytes: [UInt8], _ what: String, file: StaticString = #filePath, line: UInt = #line) -> Bool {
        guard let fast = CanonicalKeyParser.parse(bytes) else { return false }
        guard let slow = try? CanonicalJSON.decode(HSMKey.self, bytes, path: "k") else {
            XCTFail("fast path accepted what the canonical check refuses: \(what): \(String(decoding: bytes, as: UTF8.self))", file: file, line: line)
            return true
        }
        XCTAssertEqual(fast.handle, slow.handle, what, file: file, line: line)
        XCTAssertEqual(fast.type, slow.type, what, file: file, line: line)
        XCTAssertEqual(fast.bits, slow.bits, what, file: file, line: line)
        XCTAssertEqual(String(decoding: bytes[fast.material], as: UTF8.self), slow.material, what, file: file, line: line)
        // The in-place hex check gives Hex.decode's verdict and length.
        XCTAssertEqual(fast.materialBytes, Hex.decode(slow.material)?.count, "material hex: \(what)", file: file, line: line)
        return true
    }

    func testEveryKeyShapeTakesTheFastPathWithTheSameValues() throws {
        let contents = try SimulatedHSM.makeContents(keys: 64, users: 5, seed: 7, options: PopulateOptions(rsaBits: 1024, nonASCIIEvery: 3))
        XCTAssertEqual(Set(contents.keys.map(\.type)).count, KeyType.allCases.count)
        for k in contents.keys {
            let bytes = try CanonicalJSON.encode(k)
            XCTAssertTrue(assertAgrees(bytes, k.label), "a canonical key did not take the fast path: \(k.label)")
        }
    }

    /// Material that is not even-length hex (odd, a non-hex digit, upper case, empty) still
    /// takes the fast path, and its verdict matches `Hex.decode`'s.
    /// The parser names the key type from its bytes: the same as `KeyType(rawValue:)` for every
    /// type, and nothing for near misses.
    func testKeyTypeFromBytesAgreesWithRawValue() {
        let names = KeyType.allCases.map(\.rawValue) + ["", "aes", "AE", "AESX", "GENERIC_SECRE", "EC ", "DES"]
        for name in names {
            let parsed = Array(name.utf8).withUnsafeBufferPointer { CanonicalKeyParser.keyType($0) }
            XCTAssertEqual(parsed, KeyType(rawValue: name), name)
        }
    }

    func testMaterialHexVerdictMatchesHexDecode() throws {
        var k = try SimulatedHSM.makeContents(keys: 1, users: 1, seed: 8, options: .deterministic).keys[0]
        let good = k.material
        for material in [good, good.uppercased(), String(good.dropLast()), good + "g", "zz" + good, "", "0", "00", "ab cd", "0x1f", "ключ"] {
            k.material = material
            XCTAssertTrue(assertAgrees(try CanonicalJSON.encode(k), "material \(material.prefix(8))"), "fast path for material \(material.prefix(8))")
        }
    }

    /// The eight-bytes-at-a-time checks agree with the byte-at-a-time rules: every byte value
    /// at every position, and random words.
    func testWordChecksAgreeWithTheByteRules() {
        let plain = { (c: UInt8) in c >= 0x20 && c < 0x7F && c != 0x22 && c != 0x5C }
        let hex = { (c: UInt8) in (0x30...0x39).contains(c) || (0x61...0x66).contains(c) || (0x41...0x46).contains(c) }
        func word(_ bytes: [UInt8]) -> UInt64 { bytes.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) } }
        for b in 0...255 {
            for k in 0..<8 {
                var w = [UInt8](repeating: UInt8(ascii: "a"), count: 8)
                w[k] = UInt8(b)
                XCTAssertEqual(CanonicalKeyParser.allPlain(word(w)), plain(UInt8(b)), "plain \(b) at \(k)")
                XCTAssertEqual(CanonicalKeyParser.allHex(word(w)), hex(UInt8(b)), "hex \(b) at \(k)")
                XCTAssertEqual(CanonicalKeyParser.isHexDigit(UInt8(b)), hex(UInt8(b)), "hex digit \(b)")
            }
        }
        var rng = SystemRandomNumberGenerator()
        let alphabet = Array("0123456789abcdefABCDEF\"\\ gG/:@`\u{7f}".utf8) + [0x00, 0x1F, 0x80, 0xFF, 0x2F, 0x3A, 0x40, 0x47, 0x60, 0x67]
        for _ in 0..<200_000 {
            let w = (0..<8).map { _ in alphabet.randomElement(using: &rng)! }
            XCTAssertEqual(CanonicalKeyParser.allPlain(word(w)), w.allSatisfy(plain), "\(w)")
            XCTAssertEqual(CanonicalKeyParser.allHex(word(w)), w.allSatisfy(hex), "\(w)")
        }
    }

    func testUnusualStringsAreLeftToTheSlowPathOrAgree() throws {
        var k = try SimulatedHSM.makeContents(keys: 1, users: 1, seed: 8, options: .deterministic).keys[0]
        let labels = ["quote\"", "back\\slash", "tab\t", "nul\u{0}", "del\u{7f}", "ls\u{2028}", "ps\u{2029}", "slash/x",
                      "ключ", "🔑 key", "é", "\u{feff}bom", "", "a b"]
        var fast = 0
        for label in labels {
            k.label = label
            k.sharedWith = [label, "x"]
            if assertAgrees(try CanonicalJSON.encode(k), label) { fast += 1 }
        }
        XCTAssertGreaterThanOrEqual(fast, 6, "plain non-ASCII and ASCII labels take the fast path")
    }

    /// Every byte of a few keys changed (three ways): whatever the fast path still accepts, the
    /// slow path accepts with the same values.
    func testMutationsNeverMakeTheFastPathAcceptWhatTheSlowPathRefuses() throws {
        let contents = try SimulatedHSM.makeContents(keys: 6, users: 2, seed: 9, options: PopulateOptions(rsaBits: 1024, nonASCIIEvery: 2))
        var accepted = 0, total = 0
        for k in contents.keys {
            let bytes = try CanonicalJSON.encode(k)
            for i in bytes.indices {
                for x: UInt8 in [0x01, 0x20, 0x80] {
                    var m = bytes
                    m[i] ^= x
                    total += 1
                    if assertAgrees(m, "byte \(i) ^ \(x)") { accepted += 1 }
                }
            }
            // Truncations and one byte more.
            for n in stride(from: 0, to: bytes.count, by: 7) { total += 1; if assertAgrees(Array(bytes.prefix(n)), "prefix \(n)") { accepted += 1 } }
            total += 1
            if assertAgrees(bytes + [0x20], "trailing space") { accepted += 1 }
        }
        print("canonical key parser: \(total) mutated keys, \(accepted) still accepted by both paths")
        XCTAssertGreaterThan(total, 10_000)
    }
}
