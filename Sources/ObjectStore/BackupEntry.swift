// A backup's catalog entry and its binary encoding, shared by the catalog file and the per-backup
// metadata objects (spec/FORMAT.md section 5.8):
//
//   entry = backupId, clusterId, hsmId, manufacturer, objectKey (each u16-prefixed UTF-8)
//           || state u8 || flags u8 || createdMillis u64 || updatedMillis u64 || size u64
//           || generation u64 || [deleteRequestedMillis u64]            (flags bit 1)
//           || [sourceStore, sourceBackupId, sourceCluster (u16-prefixed) || copiedMillis u64] (bit 2)
//           || tagCount u8 || (tagKey, tagValue: u16-prefixed UTF-8)[tagCount], keys ascending
//   flags: bit 0 never-expires, bit 1 deletion requested, bit 2 copied; other bits MUST be 0.
import ByteCoding

public enum BackupState: String, Codable, Sendable, CaseIterable {
    case createInProgress = "CREATE_IN_PROGRESS"
    case ready = "READY"
    case pendingDeletion = "PENDING_DELETION"
    case deleted = "DELETED"

    var code: UInt8 {
        switch self {
        case .createInProgress: return 1
        case .ready: return 2
        case .pendingDeletion: return 3
        case .deleted: return 4
        }
    }

    init?(code: UInt8) {
        guard let s = Self.allCases.first(where: { $0.code == code }) else { return nil }
        self = s
    }
}

/// Where a copied backup came from.
public struct CopySource: Codable, Equatable, Sendable {
    /// The source store's id (hex).
    public let sourceStore: String
    public let sourceBackupId: String
    public let sourceCluster: String
    public let copiedMillis: UInt64

    public init(sourceStore: String, sourceBackupId: String, sourceCluster: String, copiedMillis: UInt64) {
        self.sourceStore = sourceStore
        self.sourceBackupId = sourceBackupId
        self.sourceCluster = sourceCluster
        self.copiedMillis = copiedMillis
    }
}

public struct BackupEntry: Codable, Equatable, Sendable {
    public static let maxTags = 50
    /// The tag `schedule run` sets on a backup whose scheduled verification failed
    /// (`verification=failed`, spec/FORMAT.md section 5.8): the backup stays READY for inspection,
    /// but retention does not take it for the cluster's newest backup (`RetentionRules`).
    public static let verificationTag = "verification"
    public static let verificationFailed = "failed"
    public static let maxTagKeyLength = 128
    public static let maxTagValueLength = 256
    public static let maxNameLength = 128
    /// The highest generation a writer produces: an update of this generation is refused
    /// (`limitExceeded`), so `generation + 1` (and an `archive-g<n>` name after it) never overflows.
    /// A reader refuses anything higher (spec 5.8).
    public static let maxGeneration = UInt64.max - 1

    public var backupId: String
    public var clusterId: String
    public var hsmId: String
    public var manufacturer: String
    public var state: BackupState
    public var createdMillis: UInt64
    public var updatedMillis: UInt64
    public var size: UInt64
    public var tags: [String: String]
    public var neverExpires: Bool
    /// When the backup entered pending deletion.
    public var deleteRequestedMillis: UInt64?
    public var copySource: CopySource?
    /// The key of the archive object.
    public var objectKey: String
    /// Bumped on every change; the metadata object of the highest generation is the truth.
    public var generation: UInt64

    public init(backupId: String, clusterId: String, hsmId: String, manufacturer: String, state: BackupState,
                createdMillis: UInt64, updatedMillis: UInt64, size: UInt64 = 0, tags: [String: String] = [:],
                neverExpires: Bool = false, deleteRequestedMillis: UInt64? = nil, copySource: CopySource? = nil,
                objectKey: String, generation: UInt64 = 1) {
        self.backupId = backupId
        self.clusterId = clusterId
        self.hsmId = hsmId
        self.manufacturer = manufacturer
        self.state = state
        self.createdMillis = createdMillis
        self.updatedMillis = updatedMillis
        self.size = size
        self.tags = tags
        self.neverExpires = neverExpires
        self.deleteRequestedMillis = deleteRequestedMillis
        self.copySource = copySource
        self.objectKey = objectKey
        self.generation = generation
    }

    /// Whether its verification failed (the tag `verification=failed`).
    public var failedVerification: Bool { tags[Self.verificationTag] == Self.verificationFailed }

    static func validateTags(_ tags: [String: String]) throws {
        guard tags.count <= maxTags else { throw StoreError(.limitExceeded, "at most \(maxTags) tags") }
        for (k, v) in tags {
            guard !k.isEmpty, k.utf8.count <= maxTagKeyLength, v.utf8.count <= maxTagValueLength else {
                throw StoreError(.invalidArgument, key: k, "a tag key has 1...\(maxTagKeyLength) bytes, a value at most \(maxTagValueLength)")
            }
        }
    }

    func encode(into w: inout ByteWriter) throws {
        for (s, f) in [(backupId, "backup id"), (clusterId, "cluster id"), (hsmId, "HSM id"), (manufacturer, "manufacturer")] {
            try w.writeString16(s, f, limit: Self.maxNameLength)
        }
        try w.writeString16(objectKey, "object key", limit: ObjectKey.maxLength)
        w.writeUInt8(state.code)
        var flags: UInt8 = 0
        if neverExpires { flags |= 1 }
        if deleteRequestedMillis != nil { flags |= 2 }
        if copySource != nil { flags |= 4 }
        w.writeUInt8(flags)
        w.writeUInt64(createdMillis)
        w.writeUInt64(updatedMillis)
        w.writeUInt64(size)
        w.writeUInt64(generation)
        if let d = deleteRequestedMillis { w.writeUInt64(d) }
        if let c = copySource {
            try w.writeString16(c.sourceStore, "source store", limit: Self.maxNameLength)
            try w.writeString16(c.sourceBackupId, "source backup id", limit: Self.maxNameLength)
            try w.writeString16(c.sourceCluster, "source cluster", limit: Self.maxNameLength)
            w.writeUInt64(c.copiedMillis)
        }
        guard tags.count <= Self.maxTags else { throw StoreError(.limitExceeded, key: backupId, "at most \(Self.maxTags) tags") }
        w.writeUInt8(UInt8(tags.count))
        for k in tags.keys.sorted(by: Self.utf8Less) {
            try w.writeString16(k, "tag key", limit: Self.maxTagKeyLength)
            try w.writeString16(tags[k]!, "tag value", limit: Self.maxTagValueLength)
        }
    }

    static func utf8Less(_ a: String, _ b: String) -> Bool { a.utf8.lexicographicallyPrecedes(b.utf8) }

    /// A u16-prefixed UTF-8 string, read without copying or formatting (the catalog reads
    /// hundreds of thousands of them per listing).
    static func readString(_ r: inout ByteReader, _ field: StaticString, limit: Int) throws -> String {
        let at = r.offset
        let n = Int(try r.readUInt16("string length"))
        guard n <= limit else {
            throw ByteCodingError(.limitExceeded, field: "\(field)", offset: at, "length \(n) exceeds the limit of \(limit)")
        }
        let slice = try r.readSlice(n, "string")
        guard let s = String(validating: slice, as: UTF8.self) else {
            throw ByteCodingError(.invalidUTF8, field: "\(field)", offset: at + 2, "not valid UTF-8")
        }
        return s
    }

    /// A string field that must also pass `rule` (what the catalog's writer enforces), so a
    /// reader accepts only what a writer could have written.
    static func readString(_ r: inout ByteReader, _ field: StaticString, limit: Int, _ rule: (String) -> Bool) throws -> String {
        let at = r.offset
        let s = try readString(&r, field, limit: limit)
        guard rule(s) else { throw ByteCodingError(.unexpectedValue, field: "\(field)", offset: at, "not a value a writer produces") }
        return s
    }

    static func isName(_ s: String) -> Bool { (try? ObjectKey.validateName(s, what: "")) != nil }
    static func isNonEmpty(_ s: String) -> Bool { !s.isEmpty }
    static func isStoreId(_ s: String) -> Bool {
        s.utf8.count == 32 && s.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
    }

    static func parse(_ r: inout ByteReader) throws -> BackupEntry {
        let id = try Self.readString(&r, "backup id", limit: maxNameLength, isName)
        let cluster = try Self.readString(&r, "cluster id", limit: maxNameLength, isName)
        let hsm = try Self.readString(&r, "HSM id", limit: maxNameLength, isNonEmpty)
        let manufacturer = try Self.readString(&r, "manufacturer", limit: maxNameLength, isNonEmpty)
        // The archive lives under the backup's own prefix ("archive", or "archive-g<n>" after a
        // rewrap), so no entry can point at (and purge) another backup's archive.
        let objectKey = try Self.readString(&r, "object key", limit: ObjectKey.maxLength) {
            $0.hasPrefix("backups/\(id)/") && (try? ObjectKey.validate($0)) != nil
                && BackupCatalog.isArchiveName($0.dropFirst("backups/\(id)/".count))
        }
        let stateOffset = r.offset
        guard let state = BackupState(code: try r.readUInt8("state")) else {
            throw ByteCodingError(.unexpectedValue, field: "state", offset: stateOffset, "unknown state")
        }
        let flagsOffset = r.offset
        let flags = try r.readUInt8("flags")
        guard flags & ~7 == 0 else { throw ByteCodingError(.unexpectedValue, field: "flags", offset: flagsOffset, "reserved flag bits set") }
        let created = try r.readUInt64("created")
        let updated = try r.readUInt64("updated")
        let size = try r.readUInt64("size")
        let generationAt = r.offset
        let generation = try r.readUInt64("generation")
        guard generation <= maxGeneration else {
            throw ByteCodingError(.unexpectedValue, field: "generation", offset: generationAt, "generation \(generation) is past the last one a writer makes")
        }
        let deleteRequested = flags & 2 != 0 ? try r.readUInt64("delete requested") : nil
        var copy: CopySource?
        if flags & 4 != 0 {
            copy = CopySource(sourceStore: try Self.readString(&r, "source store", limit: maxNameLength, isStoreId),
                              sourceBackupId: try Self.readString(&r, "source backup id", limit: maxNameLength, isName),
                              sourceCluster: try Self.readString(&r, "source cluster", limit: maxNameLength, isName),
                              copiedMillis: try r.readUInt64("copied"))
        }
        let countOffset = r.offset
        let count = Int(try r.readUInt8("tag count"))
        guard count <= maxTags else { throw ByteCodingError(.limitExceeded, field: "tag count", offset: countOffset, "\(count) tags exceeds \(maxTags)") }
        var tags: [String: String] = [:]
        var previous: String?
        for _ in 0..<count {
            let at = r.offset
            let k = try Self.readString(&r, "tag key", limit: maxTagKeyLength, isNonEmpty)
            if let p = previous, !utf8Less(p, k) {
                throw ByteCodingError(.unexpectedValue, field: "tag key", offset: at, "tag keys not in ascending order")
            }
            previous = k
            tags[k] = try Self.readString(&r, "tag value", limit: maxTagValueLength)
        }
        return BackupEntry(backupId: id, clusterId: cluster, hsmId: hsm, manufacturer: manufacturer, state: state,
                           createdMillis: created, updatedMillis: updated, size: size, tags: tags,
                           neverExpires: flags & 1 != 0, deleteRequestedMillis: deleteRequested, copySource: copy,
                           objectKey: objectKey, generation: generation)
    }

    // MARK: metadata objects: "HSMBMETA" || version u16 || entry

    static let metaMagic: [UInt8] = Array("HSMBMETA".utf8)
    static let metaVersion: UInt16 = 1

    public func encodeMeta() throws -> [UInt8] {
        try VersionedObject.encode(magic: Self.metaMagic, version: Self.metaVersion) { try encode(into: &$0) }
    }

    public static func parseMeta(_ bytes: [UInt8]) throws -> BackupEntry {
        try VersionedObject.parse(bytes, magic: metaMagic, version: metaVersion, name: "metadata", structure: "backup metadata") { try parse(&$0) }
    }
}

/// The framing shared by the store's small objects: magic ‖ u16 version ‖ body, consumed exactly;
/// an unknown version is refused before the body is read.
enum VersionedObject {
    static func encode(magic: [UInt8], version: UInt16, _ body: (inout ByteWriter) throws -> Void) throws -> [UInt8] {
        var w = ByteWriter()
        w.writeBytes(magic)
        w.writeUInt16(version)
        try body(&w)
        return w.bytes
    }

    static func parse<T>(_ bytes: [UInt8], magic: [UInt8], version: UInt16, name: String, structure: String,
                         _ body: (inout ByteReader) throws -> T) throws -> T {
        var r = ByteReader(bytes)
        try r.expect(magic, "\(name) magic")
        let at = r.offset
        let v = try r.readUInt16("\(name) version")
        guard v == version else { throw ByteCodingError(.unexpectedValue, field: "\(name) version", offset: at, "unknown version \(v)") }
        let value = try body(&r)
        try r.expectEnd(structure)
        return value
    }
}

/// A cluster's retention policy (CloudHSM allows 7...379 days).
public struct RetentionPolicy: Codable, Equatable, Sendable {
    public static let allowedDays = 7...379
    public let clusterId: String
    public let days: Int
    public let generation: UInt64

    public init(clusterId: String, days: Int, generation: UInt64) {
        self.clusterId = clusterId
        self.days = days
        self.generation = generation
    }

    static let magic: [UInt8] = Array("HSMBPOLC".utf8)
    static let version: UInt16 = 1

    func encode(into w: inout ByteWriter) throws {
        try w.writeString16(clusterId, "cluster id", limit: BackupEntry.maxNameLength)
        w.writeUInt16(UInt16(days))
        w.writeUInt64(generation)
    }

    static func parse(_ r: inout ByteReader) throws -> RetentionPolicy {
        let cluster = try BackupEntry.readString(&r, "cluster id", limit: BackupEntry.maxNameLength, BackupEntry.isName)
        let at = r.offset
        let days = Int(try r.readUInt16("retention days"))
        guard allowedDays.contains(days) || days == 0 else {
            throw ByteCodingError(.unexpectedValue, field: "retention days", offset: at, "\(days) is outside \(allowedDays)")
        }
        let generationAt = r.offset
        let generation = try r.readUInt64("generation")
        guard generation <= BackupEntry.maxGeneration else {
            throw ByteCodingError(.unexpectedValue, field: "generation", offset: generationAt, "generation \(generation) is past the last one a writer makes")
        }
        return RetentionPolicy(clusterId: cluster, days: days, generation: generation)
    }

    /// Policy objects: "HSMBPOLC" || version u16 || policy. Days 0 records a removed policy.
    public func encodeObject() throws -> [UInt8] {
        try VersionedObject.encode(magic: Self.magic, version: Self.version) { try encode(into: &$0) }
    }

    public static func parseObject(_ bytes: [UInt8]) throws -> RetentionPolicy {
        try VersionedObject.parse(bytes, magic: magic, version: version, name: "policy", structure: "retention policy") { try parse(&$0) }
    }
}
