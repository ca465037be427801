import ByteCoding

/// The archive envelope's public metadata (spec/FORMAT.md §3.8): reserved encryption-context
/// keys under the `hsmbackup.` prefix. They are readable with no key (the header is cleartext),
/// authenticated by the header tag, and bound into every EDK as AAD. When an archive is opened,
/// the facade compares them with the inner header (`checkAgrees`); a mismatch is an error.
public struct ArchiveMetadata: Sendable, Equatable, Codable {
    public static let prefix = "hsmbackup."
    public static let formatMarker = "hsmbak"
    public static let currentFormatVersion = 1

    /// The reserved keys, in the order of the spec table.
    public enum Key: String, CaseIterable, Sendable {
        case format = "hsmbackup.format"
        case formatVersion = "hsmbackup.format-version"
        case innerVersion = "hsmbackup.inner-version"
        case backupID = "hsmbackup.backup-id"
        case clusterID = "hsmbackup.cluster-id"
        case hsmID = "hsmbackup.hsm-id"
        case manufacturer = "hsmbackup.manufacturer"
        case model = "hsmbackup.model"
        case firmware = "hsmbackup.firmware"
        case created = "hsmbackup.created"
        case payloadBytes = "hsmbackup.payload-bytes"
        case objectCount = "hsmbackup.object-count"
        case userCount = "hsmbackup.user-count"
        case keyCount = "hsmbackup.key-count"

        static let required: [Key] = [.format, .formatVersion, .backupID, .clusterID, .hsmID, .manufacturer, .model, .firmware, .created]
        static let numeric: Set<Key> = [.formatVersion, .payloadBytes, .objectCount, .userCount, .keyCount]
        /// The HSM identity strings and their rules (§4.3.2), the same the inner header obeys.
        static let identity: [Key: IdentityRules.Field] = [.clusterID: .clusterId, .hsmID: .hsmId, .manufacturer: .manufacturerId,
                                                           .model: .model, .firmware: .firmwareVersion]
    }

    public var formatVersion: Int = ArchiveMetadata.currentFormatVersion
    /// The inner blob's `<major>.<minor>` version (spec 4.3), e.g. `2.0`, so that a reader can
    /// tell without a key which inner version it needs. Absent in archives written before it
    /// was published (2026-12-04); writers always set it.
    public var innerVersion: String?
    public var backupID: String
    public var clusterID: String
    public var hsmID: String
    public var manufacturer: String
    public var model: String
    public var firmware: String
    /// RFC 3339 UTC with seconds, e.g. 2026-11-29T19:05:07Z.
    public var created: String
    /// Size of the uncompressed payload, when known.
    public var payloadBytes: UInt64?
    public var objectCount: UInt64?
    public var userCount: UInt64?
    public var keyCount: UInt64?

    public init(backupID: String, clusterID: String, hsmID: String, manufacturer: String, model: String,
                firmware: String, created: String) {
        self.backupID = backupID; self.clusterID = clusterID; self.hsmID = hsmID
        self.manufacturer = manufacturer; self.model = model; self.firmware = firmware; self.created = created
    }

    /// The pairs this metadata contributes, in key order.
    public var pairs: [(Key, String)] {
        var out: [(Key, String)] = [
            (.format, Self.formatMarker), (.formatVersion, String(formatVersion)), (.backupID, backupID),
            (.clusterID, clusterID), (.hsmID, hsmID), (.manufacturer, manufacturer), (.model, model),
            (.firmware, firmware), (.created, created),
        ]
        let optional: [(Key, String?)] = [
            (.innerVersion, innerVersion), (.payloadBytes, payloadBytes.map(String.init)),
            (.objectCount, objectCount.map(String.init)), (.userCount, userCount.map(String.init)),
            (.keyCount, keyCount.map(String.init)),
        ]
        for (k, v) in optional { if let v { out.append((k, v)) } }
        return out
    }

    /// A key under the reserved prefix: its bytes start with `hsmbackup.`. Not `String.hasPrefix`,
    /// which compares characters: "hsmbackup." and a combining mark would not "have the prefix".
    public static func isReserved(_ key: [UInt8]) -> Bool { key.starts(with: prefix.utf8) }

    /// Adds the reserved pairs to the caller's context; the caller's context may not already use
    /// the `hsmbackup.` prefix.
    public func merged(into context: EncryptionContext = .empty) throws -> EncryptionContext {
        if let bad = context.pairs.first(where: { Self.isReserved($0.key) }) {
            throw EnvelopeError(.archiveMetadataInvalid, "context key \"\(bad.keyString)\" uses the reserved prefix \(Self.prefix)")
        }
        try validate()
        return try EncryptionContext(rawPairs: context.pairs.map { ($0.key, $0.value) } + pairs.map { (Array($0.0.rawValue.utf8), Array($0.1.utf8)) })
    }

    /// Reads the metadata from a header's context: every required key present, no unknown
    /// `hsmbackup.` key, numbers in canonical decimal, the marker and a known format version.
    public init(context: EncryptionContext) throws {
        var values: [Key: String] = [:]
        for p in context.pairs where Self.isReserved(p.key) {
            guard let k = Key(rawValue: p.keyString), Array(k.rawValue.utf8) == p.key else {
                throw EnvelopeError(.archiveMetadataInvalid, "unknown reserved context key \"\(p.keyString)\"")
            }
            values[k] = p.valueString
        }
        for k in Key.required where values[k] == nil {
            throw EnvelopeError(.archiveMetadataInvalid, "the archive context lacks \(k.rawValue)")
        }
        guard values[.format] == Self.formatMarker else {
            throw EnvelopeError(.archiveMetadataInvalid, "\(Key.format.rawValue) is \"\(values[.format]!)\", expected \"\(Self.formatMarker)\"")
        }
        func number(_ k: Key) throws -> UInt64? {
            guard let s = values[k] else { return nil }
            guard let n = UInt64(s), String(n) == s else {
                throw EnvelopeError(.archiveMetadataInvalid, "\(k.rawValue) \"\(s)\" is not a canonical decimal number")
            }
            return n
        }
        let version = try number(.formatVersion)!
        guard version == UInt64(Self.currentFormatVersion) else {
            throw EnvelopeError(.archiveMetadataInvalid, "archive format version \(version) is not supported (this reader knows \(Self.currentFormatVersion))")
        }
        self.init(backupID: values[.backupID]!, clusterID: values[.clusterID]!, hsmID: values[.hsmID]!,
                  manufacturer: values[.manufacturer]!, model: values[.model]!, firmware: values[.firmware]!,
                  created: values[.created]!)
        formatVersion = Int(version)
        innerVersion = values[.innerVersion]
        payloadBytes = try number(.payloadBytes)
        objectCount = try number(.objectCount)
        userCount = try number(.userCount)
        keyCount = try number(.keyCount)
        try validate()
    }

    /// Field rules (§3.8): every reserved value non-empty, the identity strings by the rules of
    /// §4.3.2, `created` a real UTC date and time.
    public func validate() throws {
        for (k, v) in pairs {
            guard !v.isEmpty else { throw EnvelopeError(.archiveMetadataInvalid, "\(k.rawValue) is empty") }
            if let field = Key.identity[k], let problem = IdentityRules.problem(field, v) {
                throw EnvelopeError(.archiveMetadataInvalid, "\(k.rawValue): \(problem)")
            }
            if k == .created && !Self.isRFC3339UTC(v) {
                throw EnvelopeError(.archiveMetadataInvalid, "\(k.rawValue) \"\(v)\" is not a UTC date and time YYYY-MM-DDTHH:MM:SSZ from 1970 to 9999")
            }
            if k == .innerVersion && !Self.isInnerVersion(v) {
                throw EnvelopeError(.archiveMetadataInvalid, "\(k.rawValue) \"\(v)\" is not <major>.<minor> (canonical decimals, each 0...255)")
            }
        }
    }

    /// Compares with the metadata the inner header states; a field absent on either side (an
    /// optional count) is not compared. The first differing field is named.
    public func checkAgrees(with inner: ArchiveMetadata) throws {
        let mine = Dictionary(uniqueKeysWithValues: pairs.map { ($0.0.rawValue, $0.1) })
        let theirs = Dictionary(uniqueKeysWithValues: inner.pairs.map { ($0.0.rawValue, $0.1) })
        for k in Key.allCases {
            if let a = mine[k.rawValue], let b = theirs[k.rawValue], Array(a.utf8) != Array(b.utf8) {
                throw EnvelopeError(.archiveMetadataMismatch, "\(k.rawValue): the envelope says \"\(a)\", the inner header says \"\(b)\"")
            }
        }
    }

    /// `<major>.<minor>`: two canonical decimal numbers 0...255 (the inner header's two bytes).
    static func isInnerVersion(_ s: String) -> Bool {
        let parts = s.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 2 && parts.allSatisfy { p in
            guard p.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let n = UInt8(p) else { return false }
            return String(n) == p
        }
    }

    /// `YYYY-MM-DDTHH:MM:SSZ` naming a real instant from 1970-01-01T00:00:00Z to
    /// 9999-12-31T23:59:59Z: month 01-12, a day the month has (leap years by the Gregorian rule),
    /// hour 00-23, minute and second 00-59 (no leap second: the inner header counts seconds
    /// without them).
    static func isRFC3339UTC(_ s: String) -> Bool {
        let b = Array(s.utf8)
        guard b.count == 20 else { return false }
        let digits = [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18]
        let seps: [(Int, UInt8)] = [(4, 0x2d), (7, 0x2d), (10, 0x54), (13, 0x3a), (16, 0x3a), (19, 0x5a)]
        guard digits.allSatisfy({ b[$0] >= 0x30 && b[$0] <= 0x39 }), seps.allSatisfy({ b[$0.0] == $0.1 }) else { return false }
        func n(_ from: Int, _ count: Int) -> Int { b[from..<(from + count)].reduce(0) { $0 * 10 + Int($1 - 0x30) } }
        let (year, month, day, hour, minute, second) = (n(0, 4), n(5, 2), n(8, 2), n(11, 2), n(14, 2), n(17, 2))
        guard year >= 1970, (1...12).contains(month), hour <= 23, minute <= 59, second <= 59 else { return false }
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
        let days = [31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1]
        return (1...days).contains(day)
    }
}

extension ArchiveMetadata {
    /// Reads an archive's header (no key, no byte past the header) and its public metadata.
    public static func read(from source: ByteSource, limits: HeaderLimits = HeaderLimits()) throws -> (header: MessageHeader, metadata: ArchiveMetadata) {
        let header = try HeaderReader.read(from: source, limits: limits)
        return (header, try ArchiveMetadata(context: header.context))
    }
}
