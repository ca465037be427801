import BackupCrypto
import Foundation

/// Takes a secret string field (KMS's `"Plaintext":"<base64 of the data key>"`) out of a JSON
/// answer from its bytes where they lie, decoding the base64 straight into `SecureBytes`:
/// `JSONSerialization` would turn it into a Foundation `String`, which is never wiped. The rest of
/// the answer goes to the JSON parser as a copy with that value emptied (`"Plaintext":""`), so the
/// parser never sees the key.
///
/// The scan is strict: the body must be one JSON object (whitespace around it), every key and
/// value well formed (strings with valid escapes and no raw control characters, numbers, `true`,
/// `false`, `null`, nested objects and arrays up to a depth of 64); the field is looked for among
/// the object's own keys only (escaped key spellings included) and must appear at most once, as a
/// string of padded standard base64 (`\/` and `\u00XX` escapes allowed). Anything else is an
/// error, never a silent success.
enum SecretJSONField {
    struct Malformed: Error, CustomStringConvertible {
        let description: String
    }

    /// The field `name` of the object in `body`, decoded from base64 (nil when the object has no
    /// such field), and the body to parse for the other fields (`body` itself when the field is
    /// absent, else a copy without the value's bytes).
    static func extract(_ name: String, from body: Data) throws -> (secret: SecureBytes?, rest: Data) {
        try body.withUnsafeBytes { (b: UnsafeRawBufferPointer) throws -> (SecureBytes?, Data) in
            var scanner = Scanner(bytes: b, name: Array(name.utf8))
            guard let range = try scanner.findTopLevelString() else { return (nil, body) }
            let value = UnsafeRawBufferPointer(rebasing: b[range])
            guard let secret = try decodeBase64(escaped: value) else {
                throw Malformed(description: "the \(name) field is not base64")
            }
            var rest = Data(capacity: b.count - range.count)
            rest.append(contentsOf: UnsafeRawBufferPointer(rebasing: b[0..<range.lowerBound]))
            rest.append(contentsOf: UnsafeRawBufferPointer(rebasing: b[range.upperBound...]))
            return (secret, rest)
        }
    }

    /// A JSON string's contents (between the quotes, escapes as written) decoded from base64. Without
    /// escapes (what KMS sends) straight from the bytes; with them, unescaped first into a wiped buffer.
    static func decodeBase64(escaped value: UnsafeRawBufferPointer) throws -> SecureBytes? {
        guard value.contains(0x5C) else { return secretFromBase64(bytes: value) }
        let buffer = SecretBuffer(capacity: value.count)
        defer { buffer.wipe() }
        return try buffer.withUnsafeMutableBytes { out -> SecureBytes? in
            var n = 0
            var i = 0
            while i < value.count {
                var c = value[i]
                i += 1
                if c == 0x5C {
                    guard i < value.count else { throw Malformed(description: "a string ends inside an escape") }
                    let e = value[i]
                    i += 1
                    switch e {
                    case 0x2F: c = 0x2F
                    case 0x75:
                        guard i + 4 <= value.count, let v = hex4(value, i), v < 0x80 else { return nil } // not base64
                        c = UInt8(v)
                        i += 4
                    default: return nil // \" \\ \b \f \n \r \t: never base64
                    }
                }
                out[n] = c
                n += 1
            }
            return secretFromBase64(bytes: UnsafeRawBufferPointer(rebasing: out[0..<n]))
        }
    }

    static func hex4(_ b: UnsafeRawBufferPointer, _ at: Int) -> UInt32? {
        var v: UInt32 = 0
        for k in at..<(at + 4) {
            let c = b[k]
            let d: UInt32
            switch c {
            case 0x30...0x39: d = UInt32(c - 0x30)
            case 0x41...0x46: d = UInt32(c - 0x41 + 10)
            case 0x61...0x66: d = UInt32(c - 0x61 + 10)
            default: return nil
            }
            v = v << 4 | d
        }
        return v
    }

    private struct Scanner {
        let b: UnsafeRawBufferPointer
        let name: [UInt8]
        var i = 0

        init(bytes: UnsafeRawBufferPointer, name: [UInt8]) {
            b = bytes
            self.name = name
        }

        static let maximumDepth = 64

        func fail(_ why: String) -> Malformed { Malformed(description: "\(why) at byte \(i)") }

        mutating func skipSpace() {
            while i < b.count, b[i] == 0x20 || b[i] == 0x09 || b[i] == 0x0A || b[i] == 0x0D { i += 1 }
        }

        mutating func expect(_ c: UInt8) throws {
            guard i < b.count, b[i] == c else { throw fail("expected '\(Character(Unicode.Scalar(c)))'") }
            i += 1
        }

        /// The range of the string's contents (escapes as written); `i` after its closing quote.
        mutating func string() throws -> Range<Int> {
            try expect(0x22)
            let start = i
            while i < b.count {
                let c = b[i]
                if c == 0x22 {
                    i += 1
                    return start..<(i - 1)
                }
                if c == 0x5C {
                    guard i + 1 < b.count else { break }
                    switch b[i + 1] {
                    case 0x22, 0x5C, 0x2F, 0x62, 0x66, 0x6E, 0x72, 0x74: i += 2
                    case 0x75:
                        guard i + 6 <= b.count, SecretJSONField.hex4(b, i + 2) != nil else { throw fail("a bad \\u escape") }
                        i += 6
                    default: throw fail("a bad escape")
                    }
                } else if c < 0x20 {
                    throw fail("a control character in a string")
                } else {
                    i += 1
                }
            }
            throw fail("an unterminated string")
        }

        /// Whether the key whose contents are `r` (escapes as written) is `name`.
        func keyIsName(_ r: Range<Int>) -> Bool {
            var k = r.lowerBound
            var n = 0
            while k < r.upperBound {
                var c = b[k]
                k += 1
                if c == 0x5C {
                    let e = b[k]
                    k += 1
                    switch e {
                    case 0x75:
                        guard let v = SecretJSONField.hex4(b, k), v < 0x80 else { return false }
                        c = UInt8(v)
                        k += 4
                    case 0x62: c = 0x08
                    case 0x66: c = 0x0C
                    case 0x6E: c = 0x0A
                    case 0x72: c = 0x0D
                    case 0x74: c = 0x09
                    default: c = e // \" \\ \/
                    }
                }
                guard n < name.count, name[n] == c else { return false }
                n += 1
            }
            return n == name.count
        }

        /// Skips one value of any kind.
        mutating func value(depth: Int) throws {
            guard depth <= Self.maximumDepth else { throw fail("nesting deeper than \(Self.maximumDepth)") }
            skipSpace()
            guard i < b.count else { throw fail("a missing value") }
            switch b[i] {
            case 0x22:
                _ = try string()
            case 0x7B:
                i += 1
                skipSpace()
                if i < b.count, b[i] == 0x7D { i += 1; return }
                while true {
                    skipSpace()
                    _ = try string()
                    skipSpace()
                    try expect(0x3A)
                    try value(depth: depth + 1)
                    skipSpace()
                    if i < b.count, b[i] == 0x2C { i += 1; continue }
                    try expect(0x7D)
                    return
                }
            case 0x5B:
                i += 1
                skipSpace()
                if i < b.count, b[i] == 0x5D { i += 1; return }
                while true {
                    try value(depth: depth + 1)
                    skipSpace()
                    if i < b.count, b[i] == 0x2C { i += 1; continue }
                    try expect(0x5D)
                    return
                }
            case 0x74: try literal("true")
            case 0x66: try literal("false")
            case 0x6E: try literal("null")
            case 0x2D, 0x30...0x39:
                let start = i
                while i < b.count, (0x30...0x39).contains(b[i]) || b[i] == 0x2D || b[i] == 0x2B || b[i] == 0x2E || b[i] == 0x45 || b[i] == 0x65 {
                    i += 1
                }
                guard i > start, b[i - 1] >= 0x30 && b[i - 1] <= 0x39 else { throw fail("a bad number") }
            default:
                throw fail("an unexpected byte")
            }
        }

        mutating func literal(_ word: String) throws {
            for c in word.utf8 { try expect(c) }
        }

        /// The whole body as one object; the range of the contents of its `name` string field, if any.
        mutating func findTopLevelString() throws -> Range<Int>? {
            var found: Range<Int>?
            skipSpace()
            try expect(0x7B)
            skipSpace()
            if i < b.count, b[i] == 0x7D {
                i += 1
            } else {
                while true {
                    skipSpace()
                    let key = try string()
                    skipSpace()
                    try expect(0x3A)
                    skipSpace()
                    if keyIsName(key) {
                        guard found == nil else { throw fail("a second \(String(decoding: name, as: UTF8.self)) field") }
                        guard i < b.count, b[i] == 0x22 else { throw fail("\(String(decoding: name, as: UTF8.self)) is not a string") }
                        found = try string()
                    } else {
                        try value(depth: 1)
                    }
                    skipSpace()
                    if i < b.count, b[i] == 0x2C { i += 1; continue }
                    try expect(0x7D)
                    break
                }
            }
            skipSpace()
            guard i == b.count else { throw fail("bytes after the object") }
            return found
        }
    }
}
