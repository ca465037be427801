// The checksum record at the end of every replica file (spec/FORMAT.md section 5.3):
//
//   replica file = data[size] || record || recordLength u32 || "HSOE"
//   record       = "HSOR" || version u8 (=1) || key (u16-prefixed UTF-8) || size u64
//                  || createdMillis u64 || chunkSize u32 || chunkCount u32
//                  || chunkDigest[chunkCount] (32 bytes each) || objectDigest (32)
//                  || recordDigest (32) = SHA-256 of every record byte before it
import BackupCrypto
import ByteCoding

public struct ObjectRecord: Equatable, Sendable {
    public static let magic: [UInt8] = Array("HSOR".utf8)
    public static let endMagic: [UInt8] = Array("HSOE".utf8)
    public static let version: UInt8 = 1
    /// Bytes after the record: its length (u32) and the end magic.
    public static let footerLength = 8
    /// The chunk size every writer of version 1 uses.
    public static let defaultChunkSize = 1 << 20
    /// Chunk sizes a reader accepts: powers of two in this range.
    public static let chunkSizeRange = (1 << 12)...(1 << 24)
    /// Largest object: 64 GiB (65,536 chunks of 1 MiB; a 2 MiB record).
    public static let maxObjectSize: UInt64 = 1 << 36
    public static let maxChunkCount = 1 << 16
    /// Largest record: fixed fields, the longest key, the most chunk digests.
    public static let maxRecordLength = 4 + 1 + 2 + ObjectKey.maxLength + 8 + 8 + 4 + 4 + 32 * (maxChunkCount + 2)

    public let key: String
    public let size: UInt64
    public let createdMillis: UInt64
    public let chunkSize: Int
    public let chunkDigests: [[UInt8]]
    public let objectDigest: [UInt8]

    public init(key: String, size: UInt64, createdMillis: UInt64, chunkSize: Int, chunkDigests: [[UInt8]], objectDigest: [UInt8]) {
        self.key = key
        self.size = size
        self.createdMillis = createdMillis
        self.chunkSize = chunkSize
        self.chunkDigests = chunkDigests
        self.objectDigest = objectDigest
    }

    public static func chunkCount(size: UInt64, chunkSize: Int) -> Int {
        Int((size + UInt64(chunkSize) - 1) / UInt64(chunkSize))
    }

    /// Length of chunk `index` of this object.
    public func chunkLength(_ index: Int) -> Int {
        let start = UInt64(index) * UInt64(chunkSize)
        return Int(Swift.min(UInt64(chunkSize), size - start))
    }

    /// The record bytes (without the footer).
    public func encode() throws -> [UInt8] {
        var w = ByteWriter(capacity: 128 + 32 * chunkDigests.count)
        w.writeBytes(Self.magic)
        w.writeUInt8(Self.version)
        try w.writeString16(key, "key", limit: ObjectKey.maxLength)
        w.writeUInt64(size)
        w.writeUInt64(createdMillis)
        w.writeUInt32(UInt32(chunkSize))
        w.writeUInt32(UInt32(chunkDigests.count))
        for d in chunkDigests { w.writeBytes(d) }
        w.writeBytes(objectDigest)
        let digest = SHA256Hasher.hash(w.bytes)
        w.writeBytes(digest)
        return w.bytes
    }

    /// The record and its footer, as appended to a replica file.
    public func encodeWithFooter() throws -> [UInt8] {
        var bytes = try encode()
        var w = ByteWriter()
        w.writeUInt32(UInt32(bytes.count))
        w.writeBytes(Self.endMagic)
        bytes.append(contentsOf: w.bytes)
        return bytes
    }

    /// Parses the footer (the last 8 bytes of a file): the record length it declares.
    public static func parseFooter(_ footer: [UInt8], fileSize: Int) throws -> Int {
        var r = ByteReader(footer, baseOffset: fileSize - footer.count)
        let length = try r.readCount32("record length", limit: maxRecordLength)
        try r.expect(endMagic, "end magic")
        try r.expectEnd("record footer")
        guard length + footerLength <= fileSize else {
            throw ByteCodingError(.invalidLength, field: "record length", offset: fileSize - footer.count,
                                  "record of \(length) bytes does not fit a file of \(fileSize)")
        }
        return length
    }

    /// Parses a record exactly; `baseOffset` is its offset in the file (for error offsets).
    public static func parse(_ bytes: [UInt8], baseOffset: Int = 0) throws -> ObjectRecord {
        var r = ByteReader(bytes, baseOffset: baseOffset)
        try r.expect(magic, "record magic")
        let versionOffset = r.offset
        let version = try r.readUInt8("record version")
        guard version == Self.version else {
            throw ByteCodingError(.unexpectedValue, field: "record version", offset: versionOffset, "unknown record version \(version)")
        }
        let key = try r.readString16("key", limit: ObjectKey.maxLength)
        let sizeOffset = r.offset
        let size = try r.readUInt64("size")
        guard size <= maxObjectSize else {
            throw ByteCodingError(.limitExceeded, field: "size", offset: sizeOffset, "\(size) exceeds the limit of \(maxObjectSize)")
        }
        let created = try r.readUInt64("created")
        let csOffset = r.offset
        let chunkSize = Int(try r.readUInt32("chunk size"))
        guard chunkSizeRange.contains(chunkSize), chunkSize & (chunkSize - 1) == 0 else {
            throw ByteCodingError(.unexpectedValue, field: "chunk size", offset: csOffset, "chunk size \(chunkSize) is not a power of two in \(chunkSizeRange)")
        }
        let countOffset = r.offset
        let count = try r.readCount32("chunk count", limit: maxChunkCount)
        guard count == chunkCount(size: size, chunkSize: chunkSize) else {
            throw ByteCodingError(.unexpectedValue, field: "chunk count", offset: countOffset, "\(count) chunks do not fit size \(size)")
        }
        var digests: [[UInt8]] = []
        digests.reserveCapacity(count)
        for _ in 0..<count { digests.append(try r.readBytes(32, "chunk digest")) }
        let objectDigest = try r.readBytes(32, "object digest")
        let coveredEnd = r.offset - baseOffset
        let digestOffset = r.offset
        let recordDigest = try r.readBytes(32, "record digest")
        try r.expectEnd("record")
        guard constantTimeEqual(recordDigest, SHA256Hasher.hash(bytes[0..<coveredEnd])) else {
            throw ByteCodingError(.unexpectedValue, field: "record digest", offset: digestOffset, "record digest does not match")
        }
        return ObjectRecord(key: key, size: size, createdMillis: created, chunkSize: chunkSize,
                            chunkDigests: digests, objectDigest: objectDigest)
    }
}
