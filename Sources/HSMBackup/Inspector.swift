import ByteCoding
import Envelope
import HSMArchive

/// The envelope header as an inspector shows it.
public struct EnvelopeHeaderSummary: Codable, Sendable {
    public struct Key: Codable, Sendable {
        public let provider: String
        public let key: String
    }
    public let formatVersion: Int
    public let suiteID: String
    public let suite: String
    public let signed: Bool
    public let messageID: String
    public let contentType: String
    public let frameLength: UInt32
    /// Known when the archive's size is known and the suite does not sign (the footer's length
    /// varies), else after a structure walk.
    public let frameCount: UInt32?
    public let headerBytes: Int
    public let keys: [Key]
    /// Context pairs outside the reserved `hsmbackup.` keys.
    public let otherContext: [String: String]

    init(_ h: MessageHeader, frameCount: UInt32?) {
        formatVersion = Int(h.version)
        suiteID = String(format: "0x%04x", h.suite.id)
        suite = h.suite.name
        signed = h.suite.signs
        messageID = Hex.encode(h.messageID)
        contentType = h.contentType == .framed ? "framed" : "non-framed"
        frameLength = h.frameLength
        self.frameCount = frameCount
        headerBytes = h.byteCount
        keys = h.encryptedDataKeys.map { edk in
            // An aws-kms EDK names its key ARN in UTF-8 (spec §3.5); a raw AES one its key name.
            let arn = edk.hasProviderID("aws-kms") ? String(validating: edk.providerInfo, as: UTF8.self) : nil
            return Key(provider: edk.providerID, key: edk.rawAESKeyName ?? arn ?? Hex.encode(edk.providerInfo))
        }
        var other: [String: String] = [:]
        for p in h.context.pairs where !ArchiveMetadata.isReserved(p.key) { other[p.keyString] = p.valueString }
        otherContext = other
    }
}

/// What `inspect` shows: the public metadata and envelope header with no key; with a KMS key,
/// the inner header too (still without touching the HSM payload).
public struct InspectionReport: Codable, Sendable {
    public let metadata: ArchiveMetadata
    public let envelope: EnvelopeHeaderSummary
    public let inner: InnerHeaderSummary?
    /// Which KMS key opened the archive (when one was used).
    public let openedBy: String?
    /// Bytes read from the archive to answer.
    public let bytesRead: Int
}

/// Reads an archive's public face from its first bytes.
public enum Inspector {
    /// No key: the envelope header only (a few KiB at most). With keyrings: also decrypts the
    /// first frames, just far enough to parse the inner header, and checks it against the public
    /// metadata.
    /// `expectedBackupID`: the id the archive must carry (a stored archive's catalog id).
    public static func inspect(_ source: ByteSource, archiveBytes: UInt64? = nil, keyrings: [Keyring] = [],
                               expectedBackupID: String? = nil) throws -> InspectionReport {
        let counting = CountingSource(source)
        guard !keyrings.isEmpty else {
            let (header, metadata) = try ArchiveMetadata.read(from: counting)
            try metadata.check(isBackup: expectedBackupID)
            let frames = archiveBytes.flatMap { EnvelopeStructure.frameCount(header: header, messageBytes: $0) }
            return InspectionReport(metadata: metadata, envelope: EnvelopeHeaderSummary(header, frameCount: frames),
                                    inner: nil, openedBy: nil, bytesRead: counting.count)
        }
        let decryptor = try EnvelopeDecryptor(source: counting, keyrings: keyrings)
        let metadata = try ArchiveMetadata(context: decryptor.header.context)
        try metadata.check(isBackup: expectedBackupID)
        let inner = try readInnerHeader(decryptor)
        try metadata.check(against: inner)
        let frames = archiveBytes.flatMap { EnvelopeStructure.frameCount(header: decryptor.header, messageBytes: $0) }
        return InspectionReport(metadata: metadata, envelope: EnvelopeHeaderSummary(decryptor.header, frameCount: frames),
                                inner: inner.summary, openedBy: decryptor.openedBy, bytesRead: counting.count)
    }

    /// Decrypts frames until the inner header is complete; reads no further.
    static func readInnerHeader(_ decryptor: EnvelopeDecryptor) throws -> InnerHeader {
        var prefix: [UInt8] = []
        while true {
            if let length = try InnerHeader.headerLength(prefix: prefix[...]), prefix.count >= length {
                return try InnerHeader.parse(prefix: prefix.prefix(length))
            }
            guard let chunk = try decryptor.nextChunk() else {
                return try InnerHeader.parse(prefix: prefix) // too short: parse names what is missing
            }
            prefix += chunk
        }
    }
}

/// Counts the bytes pulled from another source.
final class CountingSource: ByteSource {
    let source: ByteSource
    private(set) var count = 0
    init(_ source: ByteSource) { self.source = source }
    func read(maxCount: Int) throws -> [UInt8] {
        let b = try source.read(maxCount: maxCount)
        count += b.count
        return b
    }
}
