/// The one cursor every parser in the project reads with: big-endian integers, length-prefixed
/// fields, named limits, and an exact-consumption check. A failed read throws a `ByteCodingError`
/// that carries the offset and leaves the cursor where it was.
public struct ByteReader: Sendable {
    public let bytes: ArraySlice<UInt8>
    /// Offset of `bytes.startIndex` in the enclosing structure, so errors name absolute offsets.
    public let baseOffset: Int
    public private(set) var position: Int

    public init(_ bytes: [UInt8], baseOffset: Int = 0) {
        self.init(bytes[...], baseOffset: baseOffset)
    }

    public init(_ bytes: ArraySlice<UInt8>, baseOffset: Int = 0) {
        self.bytes = bytes
        self.baseOffset = baseOffset
        self.position = bytes.startIndex
    }

    /// Absolute offset of the next byte to read.
    public var offset: Int { baseOffset + (position - bytes.startIndex) }
    public var remaining: Int { bytes.endIndex - position }
    public var isAtEnd: Bool { position == bytes.endIndex }

    public mutating func readUInt8(_ field: String) throws -> UInt8 {
        try need(1, field)
        defer { position += 1 }
        return bytes[position]
    }

    public mutating func readUInt16(_ field: String) throws -> UInt16 {
        UInt16(try readInteger(2, field))
    }

    public mutating func readUInt32(_ field: String) throws -> UInt32 {
        UInt32(try readInteger(4, field))
    }

    public mutating func readUInt64(_ field: String) throws -> UInt64 {
        try readInteger(8, field)
    }

    public mutating func readBytes(_ count: Int, _ field: String) throws -> [UInt8] {
        Array(try readSlice(count, field))
    }

    public mutating func readSlice(_ count: Int, _ field: String) throws -> ArraySlice<UInt8> {
        guard count >= 0 else { throw ByteCodingError(.invalidLength, field: field, offset: offset, "negative length \(count)") }
        try need(count, field)
        defer { position += count }
        return bytes[position..<(position + count)]
    }

    /// A u16 length then that many bytes; the length may not exceed `limit`.
    public mutating func readLengthPrefixed16(_ field: String, limit: Int = Int(UInt16.max)) throws -> [UInt8] {
        let start = position
        let n = Int(try readUInt16("\(field) length"))
        return try readPrefixedBody(n, field, limit: limit, rewindTo: start)
    }

    /// A u32 length then that many bytes; the length may not exceed `limit`.
    public mutating func readLengthPrefixed32(_ field: String, limit: Int) throws -> [UInt8] {
        let start = position
        let n = Int(try readUInt32("\(field) length"))
        return try readPrefixedBody(n, field, limit: limit, rewindTo: start)
    }

    /// A UTF-8 string behind a u16 length. Invalid UTF-8 is refused, not repaired.
    public mutating func readString16(_ field: String, limit: Int = Int(UInt16.max)) throws -> String {
        let start = offset
        let raw = try readLengthPrefixed16(field, limit: limit)
        guard let s = String(validating: raw, as: UTF8.self) else {
            throw ByteCodingError(.invalidUTF8, field: field, offset: start, "not valid UTF-8")
        }
        return s
    }

    /// Reads a count and checks it against a named limit.
    public mutating func readCount16(_ field: String, limit: Int) throws -> Int {
        let at = offset
        let n = Int(try readUInt16(field))
        guard n <= limit else { throw ByteCodingError(.limitExceeded, field: field, offset: at, "\(n) exceeds the limit of \(limit)") }
        return n
    }

    public mutating func readCount32(_ field: String, limit: Int) throws -> Int {
        let at = offset
        let n = Int(try readUInt32(field))
        guard n <= limit else { throw ByteCodingError(.limitExceeded, field: field, offset: at, "\(n) exceeds the limit of \(limit)") }
        return n
    }

    /// Expects exactly these bytes (magic numbers, fixed markers).
    public mutating func expect(_ expected: [UInt8], _ field: String) throws {
        let at = offset
        let got = try readSlice(expected.count, field)
        guard got.elementsEqual(expected) else {
            position -= expected.count
            throw ByteCodingError(.unexpectedValue, field: field, offset: at, "unexpected bytes")
        }
    }

    /// The structure must consume every byte it was given.
    public func expectEnd(_ structure: String) throws {
        guard isAtEnd else {
            throw ByteCodingError(.trailingBytes, field: structure, offset: offset, "\(remaining) bytes after the end")
        }
    }

    // MARK: private

    private func need(_ count: Int, _ field: String) throws {
        guard count <= remaining else {
            throw ByteCodingError(.truncated, field: field, offset: offset,
                                  "needs \(count) bytes, \(remaining) left")
        }
    }

    private mutating func readInteger(_ width: Int, _ field: String) throws -> UInt64 {
        try need(width, field)
        var v: UInt64 = 0
        for i in 0..<width { v = (v << 8) | UInt64(bytes[position + i]) }
        position += width
        return v
    }

    private mutating func readPrefixedBody(_ n: Int, _ field: String, limit: Int, rewindTo start: Int) throws -> [UInt8] {
        guard n <= limit else {
            let at = offset - (position - start)
            position = start
            throw ByteCodingError(.limitExceeded, field: field, offset: at, "length \(n) exceeds the limit of \(limit)")
        }
        do {
            return try readBytes(n, field)
        } catch {
            position = start
            throw error
        }
    }
}

/// Builds a byte string with the same conventions as `ByteReader` (big-endian, length prefixes).
public struct ByteWriter: Sendable {
    public private(set) var bytes: [UInt8] = []

    public init(capacity: Int = 0) { bytes.reserveCapacity(capacity) }

    public var count: Int { bytes.count }

    public mutating func writeUInt8(_ v: UInt8) { bytes.append(v) }
    public mutating func writeUInt16(_ v: UInt16) { writeInteger(UInt64(v), 2) }
    public mutating func writeUInt32(_ v: UInt32) { writeInteger(UInt64(v), 4) }
    public mutating func writeUInt64(_ v: UInt64) { writeInteger(v, 8) }
    public mutating func writeBytes<C: Collection>(_ b: C) where C.Element == UInt8 { bytes.append(contentsOf: b) }

    /// A u16 length then the bytes; throws if they do not fit the field or the limit.
    public mutating func writeLengthPrefixed16<C: Collection>(_ b: C, _ field: String, limit: Int = Int(UInt16.max)) throws where C.Element == UInt8 {
        guard b.count <= min(limit, Int(UInt16.max)) else {
            throw ByteCodingError(.limitExceeded, field: field, offset: count, "length \(b.count) exceeds the limit of \(min(limit, Int(UInt16.max)))")
        }
        writeUInt16(UInt16(b.count))
        writeBytes(b)
    }

    public mutating func writeLengthPrefixed32<C: Collection>(_ b: C, _ field: String, limit: Int) throws where C.Element == UInt8 {
        guard b.count <= min(limit, Int(UInt32.max)) else {
            throw ByteCodingError(.limitExceeded, field: field, offset: count, "length \(b.count) exceeds the limit of \(limit)")
        }
        writeUInt32(UInt32(b.count))
        writeBytes(b)
    }

    public mutating func writeString16(_ s: String, _ field: String, limit: Int = Int(UInt16.max)) throws {
        try writeLengthPrefixed16(Array(s.utf8), field, limit: limit)
    }

    private mutating func writeInteger(_ v: UInt64, _ width: Int) {
        for i in stride(from: width - 1, through: 0, by: -1) { bytes.append(UInt8(truncatingIfNeeded: v >> (UInt64(i) * 8))) }
    }
}

/// The error of every `ByteReader`/`ByteWriter` operation: what went wrong, in which field, at
/// which absolute offset.
public struct ByteCodingError: Error, Equatable, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable {
        case truncated, trailingBytes, limitExceeded, invalidLength, invalidUTF8, unexpectedValue
    }
    public let code: Code
    public let field: String
    public let offset: Int
    public let reason: String

    public init(_ code: Code, field: String, offset: Int, _ reason: String) {
        self.code = code
        self.field = field
        self.offset = offset
        self.reason = reason
    }

    public var description: String { "\(field) at offset \(offset): \(reason) [\(code.rawValue)]" }
}

/// Hex helpers used by tests, vectors and the CLI.
public enum Hex {
    public static func encode<C: Collection>(_ bytes: C) -> String where C.Element == UInt8 {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(bytes.count * 2)
        for b in bytes { out.append(digits[Int(b >> 4)]); out.append(digits[Int(b & 0xf)]) }
        return String(decoding: out, as: UTF8.self)
    }

    /// Decodes hex (either case); nil on odd length or a non-hex digit.
    public static func decode(_ s: String) -> [UInt8]? {
        var s = s
        return s.withUTF8 { decode(utf8: UnsafeRawBufferPointer($0)) }
    }

    /// Decodes hex digits given as UTF-8 bytes (a restore decodes every key's material: this is
    /// a table lookup per digit, with no intermediate copies).
    public static func decode(utf8 chars: UnsafeRawBufferPointer) -> [UInt8]? {
        guard chars.count % 2 == 0 else { return nil }
        var ok = true
        let out = [UInt8](unsafeUninitializedCapacity: chars.count / 2) { buffer, initialized in
            var bad: UInt8 = 0
            for i in 0..<(chars.count / 2) {
                let hi = nibbles[Int(chars[2 * i])], lo = nibbles[Int(chars[2 * i + 1])]
                bad |= (hi | lo) & 0x10
                buffer[i] = hi << 4 | (lo & 0x0f)
            }
            initialized = chars.count / 2
            ok = bad == 0
        }
        return ok ? out : nil
    }

    /// 0x00-0x0f for a hex digit, 0x10 for anything else.
    private static let nibbles: [UInt8] = (0..<256).map { c in nibble(UInt8(c)) ?? 0x10 }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: return c - 0x30
        case 0x61...0x66: return c - 0x61 + 10
        case 0x41...0x46: return c - 0x41 + 10
        default: return nil
        }
    }
}
