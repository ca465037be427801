import XCTest
@testable import PayloadCodec

/// The tar reader's UTF-8 check (issue 17: no generic `String(validating:)` per header field):
/// exactly the strings `String(validating:as:)` accepts, as the same String.
final class ValidUTF8Tests: XCTestCase {
    private func check(_ bytes: [UInt8], file: StaticString = #filePath, line: UInt = #line) {
        let ours = bytes.withUnsafeBufferPointer { PaxTarReader.validUTF8($0) }
        XCTAssertEqual(ours, String(validating: bytes, as: UTF8.self), "\(bytes)", file: file, line: line)
    }

    func testItAcceptsExactlyWhatTheStandardLibraryAccepts() {
        let cases: [[UInt8]] = [
            [], Array("keys/000001.json".utf8), Array("keys/clé-🔑-ключ.json".utf8),
            [0xEF, 0xBF, 0xBD],             // U+FFFD itself: valid
            [0x80], [0x41, 0xBF],           // lone continuation bytes
            [0xEF, 0xBF], [0x41, 0xE2, 0x82], // truncated sequences
            [0xC0, 0x80], [0xE0, 0x80, 0x80], // overlong forms
            [0xED, 0xA0, 0x80],             // a surrogate
            [0xF4, 0x90, 0x80, 0x80],       // beyond U+10FFFF
            [0xFF], [0x41, 0xFE, 0x42],
        ]
        for c in cases { check(c) }
        // Every one- and two-byte input.
        for a in 0...255 {
            check([UInt8(a)])
            for b in stride(from: 0, through: 255, by: 3) { check([UInt8(a), UInt8(b)]) }
        }
        // Random short inputs, biased to the multi-byte range.
        var g = SystemRandomNumberGenerator()
        for _ in 0..<20_000 {
            let n = Int.random(in: 1...6, using: &g)
            check((0..<n).map { _ in UInt8.random(in: 0x7E...0xFF, using: &g) })
        }
    }
}
