// Implements the tar rules of spec/FORMAT.md section 4.7 as a push parser, so a payload is
// checked as its chunks authenticate, in memory bounded by one 512-byte block, one pax
// extended header and whatever the visitor keeps. Grammar (IEEE Std 1003.1-2001 pax):
//
//   tar    = entry* end zero*
//   entry  = [pax-header] ustar-header data pad
//   pax-header = ustar-header(typeflag 'x') records pad      records = *("<len> <key>=<value>\n")
//   ustar-header = 512 bytes, magic "ustar\0" version "00", octal fields, valid checksum
//   data   = size bytes; pad = zero bytes to the next 512 boundary
//   end    = two all-zero 512-byte blocks; only zero bytes may follow
//
// Only regular files (typeflag '0' or NUL) are entries; every other type is refused, and so
// are global pax headers, GNU extensions, base-256 sizes and pax keywords other than the ones
// in `PaxTarReader.allowedPaxKeywords`.

/// What the reader tells its visitor: an entry begins (path checked, size within the limit),
/// its data arrives in pieces (exactly `size` bytes in all), then it ends.
public protocol TarVisitor: AnyObject {
    func beginEntry(index: Int, path: String, size: Int, offset: Int) throws
    func entryData(_ bytes: UnsafeRawBufferPointer) throws
    func endEntry() throws
}

public final class PaxTarReader {
    public static let blockBytes = 512
    /// A pax extended header is buffered whole; ours hold one path of at most 1024 bytes.
    public static let maximumPaxHeaderBytes = 64 * 1024
    /// Pax keywords a reader accepts: the path and size it uses, and metadata it ignores.
    public static let allowedPaxKeywords: Set<String> = ["path", "size", "mtime", "atime", "ctime", "uid", "gid",
                                                         "uname", "gname", "comment"]

    private static let magicAndVersion: [UInt8] = Array("ustar\u{0}00".utf8)

    private enum State {
        case header
        case paxData(remaining: Int, padding: Int)
        case entryData(remaining: Int, padding: Int)
        case padding(remaining: Int)
        case secondEndBlock
        case trailer
    }

    private let limits: TarLimits
    private unowned let visitor: TarVisitor
    private var state = State.header
    private var block: [UInt8] = []
    private var pax: [UInt8] = []
    private var paxPath: String?
    private var paxSize: Int?
    private var havePax = false
    private var seen = Set<String>()
    private var failure: PayloadCodecError?
    public private(set) var entryCount = 0
    /// Bytes consumed so far: the offset of the next input byte within the tar.
    public private(set) var offset = 0

    public init(limits: TarLimits = TarLimits(), visitor: TarVisitor) {
        self.limits = limits
        self.visitor = visitor
        block.reserveCapacity(Self.blockBytes)
    }

    public func feed(_ bytes: UnsafeRawBufferPointer) throws {
        if let failure { throw failure }
        do { try feedUnchecked(bytes) } catch let e as PayloadCodecError { failure = e; throw e } catch {
            failure = PayloadCodecError(.malformedTar, "the visitor failed: \(error)", offset: offset)
            throw error
        }
    }

    public func feed(_ bytes: [UInt8]) throws { try bytes.withUnsafeBytes { try feed($0) } }

    /// The input has ended: it must have ended after the end-of-archive blocks.
    public func finish() throws {
        if let failure { throw failure }
        guard case .trailer = state else {
            let e = PayloadCodecError(.malformedTar, "the tar ends without its two end-of-archive blocks", entryIndex: entryCount, offset: offset)
            failure = e
            throw e
        }
    }

    private func feedUnchecked(_ input: UnsafeRawBufferPointer) throws {
        var at = 0
        while at < input.count {
            switch state {
            case .header, .secondEndBlock:
                let take = min(Self.blockBytes - block.count, input.count - at)
                block.append(contentsOf: input[at..<(at + take)])
                at += take
                guard block.count == Self.blockBytes else { continue }
                let headerAt = offset
                offset += Self.blockBytes
                try headerBlock(at: headerAt)
                block.removeAll(keepingCapacity: true)
            case .paxData(let remaining, let padding):
                let take = min(remaining, input.count - at)
                pax.append(contentsOf: input[at..<(at + take)])
                at += take
                offset += take
                if take == remaining {
                    try parsePax()
                    state = padding > 0 ? .padding(remaining: padding) : .header
                } else {
                    state = .paxData(remaining: remaining - take, padding: padding)
                }
            case .entryData(let remaining, let padding):
                let take = min(remaining, input.count - at)
                if take > 0 { try visitor.entryData(UnsafeRawBufferPointer(rebasing: input[at..<(at + take)])) }
                at += take
                offset += take
                if take == remaining {
                    try visitor.endEntry()
                    state = padding > 0 ? .padding(remaining: padding) : .header
                } else {
                    state = .entryData(remaining: remaining - take, padding: padding)
                }
            case .padding(let remaining):
                let take = min(remaining, input.count - at)
                for i in at..<(at + take) where input[i] != 0 {
                    throw PayloadCodecError(.malformedTar, "non-zero padding after an entry's data", entryIndex: entryCount - 1, offset: offset + i - at)
                }
                at += take
                offset += take
                state = take == remaining ? .header : .padding(remaining: remaining - take)
            case .trailer:
                for i in at..<input.count where input[i] != 0 {
                    throw PayloadCodecError(.malformedTar, "non-zero bytes after the end of the archive", offset: offset + i - at)
                }
                offset += input.count - at
                at = input.count
            }
        }
    }

    private func headerBlock(at headerAt: Int) throws {
        // One pass for "all zero" and the checksum (the checksum field counts as spaces).
        // Eight bytes at a time: the bytes of each word are added in four 16-bit fields (at most
        // 128 bytes of 255 each per field over a block: no carry between fields).
        let (isZero, sum) = block.withUnsafeBytes { b -> (Bool, Int) in
            var any: UInt64 = 0
            var fields: UInt64 = 0
            let evenBytes: UInt64 = 0x00FF_00FF_00FF_00FF
            for w in 0..<(Self.blockBytes / 8) {
                let x = b.loadUnaligned(fromByteOffset: 8 * w, as: UInt64.self)
                any |= x
                fields &+= (x & evenBytes) &+ ((x >> 8) & evenBytes)
            }
            var sum = Int((fields & 0xFFFF) &+ ((fields >> 16) & 0xFFFF) &+ ((fields >> 32) & 0xFFFF) &+ (fields >> 48))
            for i in 148..<156 { sum &-= Int(b[i]) }
            return (any == 0, sum &+ 8 * 0x20)
        }
        if case .secondEndBlock = state {
            guard isZero else {
                throw PayloadCodecError(.malformedTar, "one zero block inside the archive (the end needs two)", offset: headerAt)
            }
            state = .trailer
            return
        }
        if isZero {
            guard !havePax else { throw PayloadCodecError(.malformedTar, "a pax header with no entry after it", offset: headerAt) }
            state = .secondEndBlock
            return
        }
        let index = entryCount
        func malformed(_ why: String) -> PayloadCodecError {
            PayloadCodecError(.malformedTar, why, entryIndex: index, offset: headerAt)
        }
        guard block[257..<265].elementsEqual(Self.magicAndVersion) else {
            throw malformed("not a POSIX ustar header (magic and version)")
        }
        guard let stored = octal(148, 8) else { throw malformed("the header checksum is not octal") }
        guard stored == sum else { throw malformed("header checksum \(stored), computed \(sum)") }
        guard let headerSize = octal(124, 12) else { throw malformed("the size field is not octal") }
        let type = block[156]
        if type == UInt8(ascii: "x") {
            guard !havePax else { throw malformed("two pax headers in a row") }
            guard headerSize <= Self.maximumPaxHeaderBytes else { throw malformed("a pax header of \(headerSize) bytes") }
            havePax = true
            pax.removeAll(keepingCapacity: true)
            let padding = (Self.blockBytes - headerSize % Self.blockBytes) % Self.blockBytes
            state = headerSize > 0 ? .paxData(remaining: headerSize, padding: padding) : .header
            if headerSize == 0 { try parsePax() }
            return
        }
        guard type == UInt8(ascii: "0") || type == 0 else {
            let what: String
            switch type {
            case UInt8(ascii: "1"): what = "a hard link"
            case UInt8(ascii: "2"): what = "a symbolic link"
            case UInt8(ascii: "3"), UInt8(ascii: "4"): what = "a device"
            case UInt8(ascii: "5"): what = "a directory"
            case UInt8(ascii: "6"): what = "a FIFO"
            case UInt8(ascii: "g"): what = "a global pax header"
            default: what = "entry type 0x\(String(type, radix: 16))"
            }
            throw PayloadCodecError(.unsupportedEntryType, "\(what): only regular files are allowed", entryIndex: index, offset: headerAt)
        }
        guard index < limits.maximumEntries else {
            throw PayloadCodecError(.tooManyEntries, "more than \(limits.maximumEntries) entries", entryIndex: index, offset: headerAt)
        }
        let path: String
        if let p = paxPath { path = p } else {
            guard let name = field(0, 100), let prefix = field(345, 155) else { throw malformed("the name is not valid UTF-8") }
            path = prefix.isEmpty ? name : prefix + "/" + name
        }
        let size = paxSize ?? headerSize
        havePax = false
        paxPath = nil
        paxSize = nil
        try PaxTar.checkPath(path, index: index, limits: limits)
        guard !limits.refusesDuplicatePaths || seen.insert(path).inserted else {
            throw PayloadCodecError(.duplicatePath, "path appears twice", entryIndex: index, entryPath: path)
        }
        guard size <= limits.maximumEntryBytes else {
            throw PayloadCodecError(.entryTooLarge, "\(size) bytes exceed the limit of \(limits.maximumEntryBytes)", entryIndex: index, entryPath: path)
        }
        entryCount += 1
        try visitor.beginEntry(index: index, path: path, size: size, offset: headerAt)
        let padding = (Self.blockBytes - size % Self.blockBytes) % Self.blockBytes
        if size == 0 {
            try visitor.endEntry()
            state = .header
        } else {
            state = .entryData(remaining: size, padding: padding)
        }
    }

    /// Pax records: "<length> <keyword>=<value>\n", the length counting the whole record.
    private func parsePax() throws {
        let index = entryCount
        var at = 0
        func malformed(_ why: String) -> PayloadCodecError {
            PayloadCodecError(.malformedTar, "pax header: \(why)", entryIndex: index, offset: offset)
        }
        while at < pax.count {
            var digits = 0
            var length = 0
            while at + digits < pax.count, pax[at + digits] != UInt8(ascii: " ") {
                let d = pax[at + digits]
                guard d >= 0x30, d <= 0x39, digits < 7, !(digits == 0 && d == 0x30) else { throw malformed("bad record length") }
                length = length * 10 + Int(d - 0x30)
                digits += 1
            }
            guard digits > 0, length > digits + 1, at + length <= pax.count, pax[at + length - 1] == 0x0A else {
                throw malformed("bad record framing")
            }
            let record = pax[(at + digits + 1)..<(at + length - 1)]
            guard let eq = record.firstIndex(of: UInt8(ascii: "=")),
                  let key = String(validating: record[record.startIndex..<eq], as: UTF8.self),
                  let value = String(validating: record[(eq + 1)...], as: UTF8.self) else {
                throw malformed("bad record")
            }
            guard Self.allowedPaxKeywords.contains(key) else { throw malformed("keyword \"\(key)\" is not allowed") }
            if key == "path" {
                guard paxPath == nil else { throw malformed("path given twice") }
                paxPath = value
            } else if key == "size" {
                guard paxSize == nil, let n = Int(value), n >= 0, String(n) == value else { throw malformed("bad size") }
                paxSize = n
            }
            at += length
        }
    }

    /// An octal field: digits, then NUL or space terminators only (POSIX allows both).
    private func octal(_ at: Int, _ length: Int) -> Int? {
        var value = 0
        var i = at
        while i < at + length, block[i] == 0x20 { i += 1 }
        var digits = 0
        while i < at + length, block[i] >= 0x30, block[i] <= 0x37 {
            value = value * 8 + Int(block[i] - 0x30)
            digits += 1
            i += 1
        }
        guard digits > 0 else { return nil }
        while i < at + length {
            guard block[i] == 0 || block[i] == 0x20 else { return nil }
            i += 1
        }
        return value
    }

    /// A NUL-terminated (or full-width) UTF-8 field.
    private func field(_ at: Int, _ length: Int) -> String? {
        block.withUnsafeBufferPointer { b in
            let raw = UnsafeBufferPointer(rebasing: b[at..<(at + length)])
            let end = raw.firstIndex(of: 0) ?? raw.endIndex
            return Self.validUTF8(UnsafeBufferPointer(rebasing: raw[..<end]))
        }
    }

    /// The bytes as a String when they are valid UTF-8, else nil. (`String(validating:as:)` over
    /// an array slice is generic and looked its metadata up at run time on every call: issue 17.)
    static func validUTF8(_ bytes: UnsafeBufferPointer<UInt8>) -> String? {
        var any: UInt8 = 0
        for b in bytes { any |= b }
        let s = String(decoding: bytes, as: UTF8.self)
        if any < 0x80 { return s } // ASCII
        // Decoding replaces every invalid sequence with U+FFFD, so valid input is exactly the
        // input that decodes to its own bytes.
        return s.utf8.elementsEqual(bytes) ? s : nil
    }
}
