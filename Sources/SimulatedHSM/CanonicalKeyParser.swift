import ByteCoding
import Foundation
import HSMArchive

/// A fast path for the one object kind a restore sees by the hundred thousand: a key object in
/// canonical JSON (spec 4.7). The grammar is the canonical encoding itself:
///
///   key  = `{"attributes":{"decrypt":` bool `,"derive":` bool `,"encrypt":` bool
///          `,"extractable":` bool `,"sensitive":` bool `,"sign":` bool `,"token":` bool
///          `,"unwrap":` bool `,"verify":` bool `,"wrap":` bool `},"bits":` int
///          [`,"curve":` str] `,"handle":` uint `,"label":` str `,"material":` str
///          `,"owner":` str `,"sharedWith":[` [str *("," str)] `],"type":"` type `"}`
///   str  = `"` *(UTF-8 without `"`, `\`, controls, DEL, U+2028, U+2029) `"`
///   int  = "0" / ["-"] [1-9] *DIGIT (within Int);  bool = "true" / "false"
///
/// It is deliberately narrower than JSON: whatever it accepts, `JSONDecoder` decodes to the same
/// key and `JSONEncoder` re-encodes to the same bytes (a test checks both on every key shape
/// and on mutations). Anything else — an escape, an unusual character, another order — returns
/// nil and goes to the general (slow) decode-and-re-encode check, which decides.
enum CanonicalKeyParser {
    struct Key {
        let handle: UInt64
        let type: KeyType
        let bits: Int
        let material: Range<Int>
    }

    static func parse(_ b: [UInt8]) -> Key? {
        b.withUnsafeBufferPointer { parse($0) }
    }

    /// Bytes a string may hold with no further look: 0x20...0x7E but `"` and `\`.
    private static let plain: [Bool] = (0..<256).map { c in c >= 0x20 && c < 0x7F && c != 0x22 && c != 0x5C }

    private static let attributeNames = ["decrypt", "derive", "encrypt", "extractable", "sensitive", "sign", "token",
                                         "unwrap", "verify", "wrap"]

    static func parse(_ b: UnsafeBufferPointer<UInt8>) -> Key? {
        var at = 0
        func lit(_ s: StaticString) -> Bool {
            let n = s.utf8CodeUnitCount
            guard at + n <= b.count else { return false }
            let ok = s.withUTF8Buffer { l in memcmp(b.baseAddress! + at, l.baseAddress!, n) == 0 }
            if ok { at += n }
            return ok
        }
        func bool() -> Bool {
            lit("true") || lit("false")
        }
        func int(allowNegative: Bool) -> (negative: Bool, magnitude: UInt64)? {
            var negative = false
            if allowNegative, at < b.count, b[at] == UInt8(ascii: "-") { negative = true; at += 1 }
            let start = at
            var v: UInt64 = 0
            while at < b.count, b[at] >= 0x30, b[at] <= 0x39 {
                let (m, o1) = v.multipliedReportingOverflow(by: 10)
                let (a, o2) = m.addingReportingOverflow(UInt64(b[at] - 0x30))
                guard !o1, !o2 else { return nil }
                v = a
                at += 1
            }
            guard at > start, !(b[start] == 0x30 && at - start > 1), !(negative && v == 0) else { return nil }
            return (negative, v)
        }
        /// A string body up to its closing quote; nil on anything the slow path should judge.
        func str() -> Range<Int>? {
            guard at < b.count, b[at] == UInt8(ascii: "\"") else { return nil }
            at += 1
            let start = at
            var ascii = true
            while at < b.count {
                let c = b[at]
                // One table load per byte for the common case (printable ASCII but `"` and `\`).
                if plain[Int(c)] { at += 1; continue }
                if c == UInt8(ascii: "\"") { break }
                if c < 0x20 || c == UInt8(ascii: "\\") || c == 0x7F { return nil }
                if c == 0xE2, at + 2 < b.count, b[at + 1] == 0x80, b[at + 2] == 0xA8 || b[at + 2] == 0xA9 { return nil }
                ascii = false
                at += 1
            }
            guard at < b.count else { return nil }
            let r = start..<at
            at += 1
            if !ascii, String(validating: b[r], as: UTF8.self) == nil { return nil }
            return r
        }
        guard lit(#"{"attributes":{"#) else { return nil }
        for (i, name) in attributeNames.enumerated() {
            guard (i == 0 || lit(",")), lit("\""), at + name.utf8.count <= b.count,
                  b[at..<(at + name.utf8.count)].elementsEqual(name.utf8) else { return nil }
            at += name.utf8.count
            guard lit("\":"), bool() else { return nil }
        }
        guard lit(#"},"bits":"#), let bitsValue = int(allowNegative: true), bitsValue.magnitude <= UInt64(Int.max) else { return nil }
        let bits = bitsValue.negative ? -Int(bitsValue.magnitude) : Int(bitsValue.magnitude)
        if lit(#","curve":"#) { guard str() != nil else { return nil } }
        guard lit(#","handle":"#), let handle = int(allowNegative: false) else { return nil }
        guard lit(#","label":"#), str() != nil else { return nil }
        guard lit(#","material":"#), let material = str() else { return nil }
        guard lit(#","owner":"#), str() != nil else { return nil }
        guard lit(#","sharedWith":["#) else { return nil }
        if !lit("]") {
            repeat { guard str() != nil else { return nil } } while lit(",")
            guard lit("]") else { return nil }
        }
        guard lit(#","type":"#), let typeRange = str(),
              let type = KeyType(rawValue: String(decoding: b[typeRange], as: UTF8.self)), lit("}"), at == b.count else { return nil }
        return Key(handle: handle.magnitude, type: type, bits: bits, material: material)
    }
}
