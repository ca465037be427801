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
///
/// Speed (issue 17): a full verification runs this on every key, so it reads through one
/// cursor struct (no closures over a captured index, which cost a runtime exclusivity check per
/// access), scans string bodies eight bytes at a time, and checks the key material's hex digits
/// where they lie, without decoding the secret into a buffer of its own.
enum CanonicalKeyParser {
    struct Key {
        let handle: UInt64
        let type: KeyType
        let bits: Int
        let material: Range<Int>
        /// The material's length in bytes if it is even-length hex (either case), else nil: the
        /// same verdict as `Hex.decode`, without the decode.
        let materialBytes: Int?
    }

    static func parse(_ b: [UInt8]) -> Key? {
        b.withUnsafeBufferPointer { parse($0) }
    }

    static func parse(_ b: UnsafeBufferPointer<UInt8>) -> Key? {
        guard let base = b.baseAddress else { return nil }
        var c = Cursor(base: base, count: b.count)
        guard c.lit(#"{"attributes":{"decrypt":"#), c.bool(), c.lit(#","derive":"#), c.bool(),
              c.lit(#","encrypt":"#), c.bool(), c.lit(#","extractable":"#), c.bool(),
              c.lit(#","sensitive":"#), c.bool(), c.lit(#","sign":"#), c.bool(), c.lit(#","token":"#), c.bool(),
              c.lit(#","unwrap":"#), c.bool(), c.lit(#","verify":"#), c.bool(), c.lit(#","wrap":"#), c.bool()
        else { return nil }
        guard c.lit(#"},"bits":"#), let bitsValue = c.int(allowNegative: true), bitsValue.magnitude <= UInt64(Int.max) else { return nil }
        let bits = bitsValue.negative ? -Int(bitsValue.magnitude) : Int(bitsValue.magnitude)
        if c.lit(#","curve":"#) { guard c.str() != nil else { return nil } }
        guard c.lit(#","handle":"#), let handle = c.int(allowNegative: false) else { return nil }
        guard c.lit(#","label":"#), c.str() != nil else { return nil }
        guard c.lit(#","material":"#), let material = c.hexStr() else { return nil }
        guard c.lit(#","owner":"#), c.str() != nil else { return nil }
        guard c.lit(#","sharedWith":["#) else { return nil }
        if !c.lit("]") {
            repeat { guard c.str() != nil else { return nil } } while c.lit(",")
            guard c.lit("]") else { return nil }
        }
        guard c.lit(#","type":"#), let typeRange = c.str(),
              let type = keyType(UnsafeBufferPointer(rebasing: b[typeRange])), c.lit("}"), c.at == c.count else { return nil }
        return Key(handle: handle.magnitude, type: type, bits: bits, material: material.range,
                   materialBytes: material.isHex ? material.range.count / 2 : nil)
    }

    /// `KeyType(rawValue:)` on the bytes, without making a String for each key (a test checks
    /// that the two agree on every case).
    static func keyType(_ b: UnsafeBufferPointer<UInt8>) -> KeyType? {
        func equals(_ s: StaticString) -> Bool {
            b.count == s.utf8CodeUnitCount && (b.count == 0 || memcmp(b.baseAddress!, s.utf8Start, b.count) == 0)
        }
        if equals("AES") { return .aes }
        if equals("RSA") { return .rsa }
        if equals("EC") { return .ec }
        if equals("GENERIC_SECRET") { return .genericSecret }
        return nil
    }

    @inline(__always) static func isHexDigit(_ c: UInt8) -> Bool {
        (c &- 0x30) < 10 || ((c | 0x20) &- 0x61) < 6
    }

    /// True when all eight bytes are hex digits: each is 0x30...0x39, or 0x61...0x66 once
    /// case is folded (only A-F and a-f fold there). `between` is the exact form of the
    /// bit trick "has a byte between m and n": it flags each byte m < b < n in its top bit.
    @inline(__always) static func allHex(_ x: UInt64) -> Bool {
        let ones: UInt64 = 0x0101_0101_0101_0101
        let high: UInt64 = 0x8080_8080_8080_8080
        @inline(__always) func between(_ x: UInt64, _ m: UInt64, _ n: UInt64) -> UInt64 {
            let low7 = x & (ones &* 127)
            return ((ones &* (127 &+ n)) &- low7) & ~x & (low7 &+ ones &* (127 &- m)) & high
        }
        return (between(x, 0x2F, 0x3A) | between(x | (ones &* 0x20), 0x60, 0x67)) == high
    }

    /// True when none of the eight bytes is below 0x20, above 0x7E, `"` or `\` (the
    /// classic has-less / has-byte bit tricks: exact for "any byte matches").
    @inline(__always) static func allPlain(_ x: UInt64) -> Bool {
        let ones: UInt64 = 0x0101_0101_0101_0101
        let high: UInt64 = 0x8080_8080_8080_8080
        let below20 = (x &- ones &* 0x20) & ~x & high
        let above7E = ((x &+ ones &* (127 - 0x7E)) | x) & high
        let q = x ^ (ones &* 0x22), s = x ^ (ones &* 0x5C)
        let quote = (q &- ones) & ~q & high
        let slash = (s &- ones) & ~s & high
        return (below20 | above7E | quote | slash) == 0
    }

    /// The one index into the bytes; every method advances it only on success.
    private struct Cursor {
        let base: UnsafePointer<UInt8>
        let count: Int
        var at = 0

        init(base: UnsafePointer<UInt8>, count: Int) {
            self.base = base
            self.count = count
        }

        mutating func lit(_ s: StaticString) -> Bool {
            let n = s.utf8CodeUnitCount
            guard at + n <= count else { return false }
            let l = s.utf8Start
            var i = 0
            while i < n {
                if base[at + i] != l[i] { return false }
                i += 1
            }
            at += n
            return true
        }

        mutating func bool() -> Bool { lit("true") || lit("false") }

        mutating func int(allowNegative: Bool) -> (negative: Bool, magnitude: UInt64)? {
            var p = at
            var negative = false
            if allowNegative, p < count, base[p] == UInt8(ascii: "-") { negative = true; p += 1 }
            let start = p
            var v: UInt64 = 0
            while p < count, base[p] >= 0x30, base[p] <= 0x39 {
                let (m, o1) = v.multipliedReportingOverflow(by: 10)
                let (a, o2) = m.addingReportingOverflow(UInt64(base[p] - 0x30))
                guard !o1, !o2 else { return nil }
                v = a
                p += 1
            }
            guard p > start, !(base[start] == 0x30 && p - start > 1), !(negative && v == 0) else { return nil }
            at = p
            return (negative, v)
        }

        /// A string body up to its closing quote; nil on anything the slow path should judge.
        mutating func str() -> Range<Int>? {
            guard at < count, base[at] == UInt8(ascii: "\"") else { return nil }
            let start = at + 1
            var p = start
            // Eight bytes at a time while all are plain (0x20...0x7E but `"` and `\`).
            while p + 8 <= count, CanonicalKeyParser.allPlain(UnsafeRawPointer(base + p).loadUnaligned(as: UInt64.self)) { p += 8 }
            var ascii = true
            while p < count {
                let c = base[p]
                if c >= 0x20 && c < 0x7F && c != 0x22 && c != 0x5C { p += 1; continue }
                if c == UInt8(ascii: "\"") { break }
                if c < 0x20 || c == UInt8(ascii: "\\") || c == 0x7F { return nil }
                if c == 0xE2, p + 2 < count, base[p + 1] == 0x80, base[p + 2] == 0xA8 || base[p + 2] == 0xA9 { return nil }
                ascii = false
                p += 1
            }
            guard p < count else { return nil }
            let r = start..<p
            if !ascii, String(validating: UnsafeBufferPointer(start: base + start, count: p - start), as: UTF8.self) == nil { return nil }
            at = p + 1
            return r
        }

        /// A string (by `str()`'s rule) and whether it is even-length hex of either case. The
        /// material is most of a key's bytes: the closing quote is found with `memchr`, and the
        /// digits are checked eight at a time with no data-dependent branch.
        mutating func hexStr() -> (range: Range<Int>, isHex: Bool)? {
            guard at < count, base[at] == UInt8(ascii: "\"") else { return nil }
            let start = at + 1
            guard let q = memchr(base + start, Int32(UInt8(ascii: "\"")), count - start) else { return nil }
            let end = start + (UnsafeRawPointer(q) - UnsafeRawPointer(base + start))
            var p = start
            var ok = true
            while p + 8 <= end {
                ok = ok && CanonicalKeyParser.allHex(UnsafeRawPointer(base + p).loadUnaligned(as: UInt64.self))
                p += 8
            }
            while p < end {
                ok = ok && CanonicalKeyParser.isHexDigit(base[p])
                p += 1
            }
            if ok {
                at = end + 1
                return (start..<end, (end - start) % 2 == 0)
            }
            guard let r = str() else { return nil }
            return (r, false)
        }

    }
}
