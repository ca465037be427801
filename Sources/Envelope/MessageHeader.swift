import ByteCoding
import Foundation

/// One encrypted data key entry (spec/FORMAT.md §3.2.3): u16-prefixed provider ID (UTF-8),
/// provider info, and ciphertext, each at most 65535 bytes.
public struct EncryptedDataKey: Sendable, Equatable, Hashable {
    public let providerID: String
    public let providerInfo: [UInt8]
    public let ciphertext: [UInt8]

    public init(providerID: String, providerInfo: [UInt8], ciphertext: [UInt8]) {
        self.providerID = providerID
        self.providerInfo = providerInfo
        self.ciphertext = ciphertext
    }

    /// The key name when the provider info has the raw AES layout (name ‖ u32 128 ‖ u32 12 ‖ IV).
    public var rawAESKeyName: String? {
        guard providerInfo.count >= RawAESKeyring.infoSuffixByteCount else { return nil }
        let nameEnd = providerInfo.count - RawAESKeyring.infoSuffixByteCount
        let fixed = Array(providerInfo[nameEnd..<(nameEnd + 8)])
        guard fixed == [0, 0, 0, 128, 0, 0, 0, 12] else { return nil }
        return String(validating: providerInfo[..<nameEnd], as: UTF8.self)
    }

    /// Provider IDs and key names match byte for byte, as in the SDKs: Swift `String` equality
    /// would take an NFD spelling for the NFC one (canonical equivalence).
    public func hasProviderID(_ id: String) -> Bool { providerID.utf8.elementsEqual(id.utf8) }

    /// Whether the provider info has the raw AES layout and names `name`, byte for byte.
    public func hasRawAESKeyName(_ name: String) -> Bool { rawAESKeyName?.utf8.elementsEqual(name.utf8) ?? false }

    /// A person-readable name of the key that opens this EDK.
    public var keyDescription: String {
        if hasProviderID("aws-kms") { return "aws-kms key \(String(decoding: providerInfo, as: UTF8.self))" }
        if let n = rawAESKeyName { return "\(providerID) key \"\(n)\"" }
        return "\(providerID) (provider info \(Hex.encode(providerInfo.prefix(32))))"
    }
}

public enum ContentType: UInt8, Sendable {
    case nonFramed = 1
    case framed = 2
}

/// Named limits for reading headers (spec/FORMAT.md §3.2.4).
public struct HeaderLimits: Sendable {
    /// The most EDKs a reader accepts; the count is checked as soon as it is read.
    public var maximumEncryptedDataKeys: Int = 1024
    /// The most bytes a header (body + authentication) may have.
    public var maximumHeaderBytes: Int = 4 << 20
    /// Framed messages: the largest frame length of the format here (the Python SDK's 2^31-1 cap).
    public static let formatMaximumFrameLength: UInt32 = UInt32(Int32.max)
    /// The largest frame length this reader accepts: one frame is held in memory, so a reader of
    /// untrusted input MAY lower it (a header is refused with `invalidFrameLength` above it).
    public var maximumFrameLength: UInt32 = HeaderLimits.formatMaximumFrameLength
    public init() {}
}

/// The message header (spec/FORMAT.md §3.2; ESDK digest §2.1, §12).
///
/// v2 header body: u8 version=2 ‖ u16 suite ‖ 32 message ID ‖ u16 N ‖ context(N) ‖ u16 EDK count ‖
/// EDKs ‖ u8 content type ‖ u32 frame length ‖ 32 suite data (commitment key).
/// v2 authentication: 16-byte GCM tag (IV = 12 zero bytes, AAD = header body).
/// v1 header body: u8 1 ‖ u8 0x80 ‖ u16 suite ‖ 16 message ID ‖ context ‖ EDKs ‖ u8 content type ‖
/// 4 reserved zero ‖ u8 IV length 12 ‖ u32 frame length. v1 authentication: 12 IV ‖ 16 tag.
///
/// A parsed header keeps `bodyBytes` exactly as read; they, not a re-serialization, are what the
/// header tag and the signature authenticate.
public struct MessageHeader: Sendable {
    public let version: UInt8
    public let suite: AlgorithmSuite
    public let messageID: [UInt8]
    public let context: EncryptionContext
    public let encryptedDataKeys: [EncryptedDataKey]
    public let contentType: ContentType
    public let frameLength: UInt32
    /// v2: the commitment key; v1: empty.
    public let suiteData: [UInt8]
    /// v1 only: the stored header IV.
    public let headerIV: [UInt8]
    public let headerTag: [UInt8]
    /// The header body bytes as read (or as built).
    public let bodyBytes: [UInt8]

    public static let v1TypeByte: UInt8 = 0x80
    public static let tagByteCount = 16
    public static let ivByteCount = 12

    /// Header body ‖ authentication: every byte of the header.
    public var bytes: [UInt8] { bodyBytes + headerIV + headerTag }
    public var byteCount: Int { bodyBytes.count + headerIV.count + headerTag.count }

    /// Builds a v2 header (context sorted) and serializes it; the tag is added by `withTag`.
    static func makeV2(suite: AlgorithmSuite, messageID: [UInt8], context: EncryptionContext, edks: [EncryptedDataKey],
                       frameLength: UInt32, commitKey: [UInt8], contentType: ContentType = .framed) throws -> MessageHeader {
        let h = MessageHeader(version: 2, suite: suite, messageID: messageID, context: context.sorted, edks: edks,
                              contentType: contentType, frameLength: frameLength, suiteData: commitKey,
                              headerIV: [], headerTag: [], bodyBytes: [])
        return MessageHeader(copying: h, body: try h.serializeBody(), tag: [])
    }

    private init(copying h: MessageHeader, body: [UInt8], tag: [UInt8]) {
        version = h.version; suite = h.suite; messageID = h.messageID; context = h.context
        encryptedDataKeys = h.encryptedDataKeys; contentType = h.contentType; frameLength = h.frameLength
        suiteData = h.suiteData; headerIV = h.headerIV; headerTag = tag; bodyBytes = body
    }

    private init(version: UInt8, suite: AlgorithmSuite, messageID: [UInt8], context: EncryptionContext,
                 edks: [EncryptedDataKey], contentType: ContentType, frameLength: UInt32, suiteData: [UInt8],
                 headerIV: [UInt8], headerTag: [UInt8], bodyBytes: [UInt8]) {
        self.version = version; self.suite = suite; self.messageID = messageID; self.context = context
        encryptedDataKeys = edks; self.contentType = contentType; self.frameLength = frameLength
        self.suiteData = suiteData; self.headerIV = headerIV; self.headerTag = headerTag; self.bodyBytes = bodyBytes
    }

    func withTag(_ tag: [UInt8]) -> MessageHeader { MessageHeader(copying: self, body: bodyBytes, tag: tag) }

    /// Serializes the fields (context in its stored order). For a parsed header this equals
    /// `bodyBytes` (one encoding per value; tested).
    public func serializeBody() throws -> [UInt8] {
        var w = ByteWriter(capacity: 256)
        let ctx = try context.serialized()
        w.writeUInt8(version)
        if version == 1 { w.writeUInt8(Self.v1TypeByte) }
        w.writeUInt16(suite.id)
        w.writeBytes(messageID)
        w.writeUInt16(UInt16(ctx.count))
        w.writeBytes(ctx)
        guard !encryptedDataKeys.isEmpty, encryptedDataKeys.count <= Int(UInt16.max) else {
            throw EnvelopeError(.invalidArgument, "a message needs 1...65535 encrypted data keys, got \(encryptedDataKeys.count)")
        }
        w.writeUInt16(UInt16(encryptedDataKeys.count))
        do {
            for e in encryptedDataKeys {
                try w.writeLengthPrefixed16(Array(e.providerID.utf8), "EDK provider ID")
                try w.writeLengthPrefixed16(e.providerInfo, "EDK provider info")
                try w.writeLengthPrefixed16(e.ciphertext, "EDK ciphertext")
            }
        } catch let e as ByteCodingError {
            throw EnvelopeError(.invalidArgument, e.description)
        }
        w.writeUInt8(contentType.rawValue)
        if version == 1 {
            w.writeBytes([0, 0, 0, 0])
            w.writeUInt8(UInt8(Self.ivByteCount))
        }
        w.writeUInt32(frameLength)
        w.writeBytes(suiteData)
        return w.bytes
    }

    /// The syntax of `aws-crypto-public-key` (§3.2.2), checked with no crypto: 68 characters of
    /// standard Base64 (padding included) decoding to 49 bytes, the first 02 or 03. Whether the
    /// point is on the curve is the decryptor's check (it needs the curve).
    static func isCompressedP384PointBase64(_ value: String) -> Bool {
        let alphabet = Set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=".utf8)
        guard value.utf8.count == 68, value.utf8.allSatisfy(alphabet.contains),
              let raw = Data(base64Encoded: value), raw.count == 49, raw.first == 2 || raw.first == 3,
              raw.base64EncodedString() == value else { return false }
        return true
    }

    /// Checks version and suite before anything else is read (no crypto has run yet). The order
    /// is normative (§3.1): version, then a suite we implement, then the suite's format version
    /// against the header's, then the commitment policy; so a v1 suite in a v2 header is
    /// `suiteVersionMismatch` under every policy.
    static func checkVersionAndSuite(version: UInt8, suiteID: UInt16?, policy: CommitmentPolicy) throws -> AlgorithmSuite? {
        guard version == 1 || version == 2 else {
            throw EnvelopeError(.unsupportedVersion, "message format version \(version) is not supported (1 and 2 are)", offset: 0)
        }
        guard let id = suiteID else { return nil }
        let suiteOffset = version == 2 ? 1 : 2
        guard let suite = AlgorithmSuite.byID(id) else {
            throw EnvelopeError(.unsupportedSuite, "algorithm suite 0x\(String(id, radix: 16)) is not supported", offset: suiteOffset)
        }
        guard suite.messageFormatVersion == version else {
            throw EnvelopeError(.suiteVersionMismatch, "suite \(suite.idHex) belongs to format v\(suite.messageFormatVersion), header says v\(version)", offset: suiteOffset)
        }
        if policy == .requireCommitment && !suite.commits {
            throw EnvelopeError(.nonCommittingSuiteRefused,
                                "suite \(suite) has no key commitment (format v\(version)); refused by default, pass the explicit legacy option to decode it",
                                offset: suiteOffset)
        }
        return suite
    }

    /// Parses one complete header (body and authentication) from exactly `bytes`.
    public static func parse(_ bytes: [UInt8], policy: CommitmentPolicy = .requireCommitment,
                             limits: HeaderLimits = HeaderLimits()) throws -> MessageHeader {
        var r = ByteReader(bytes)
        do {
            let version = try r.readUInt8("version")
            _ = try checkVersionAndSuite(version: version, suiteID: nil, policy: policy)
            if version == 1 {
                let at = r.offset
                let t = try r.readUInt8("v1 type")
                guard t == v1TypeByte else { throw EnvelopeError(.malformedHeader, "v1 type byte is 0x\(String(t, radix: 16)), expected 0x80", offset: at) }
            }
            let suiteID = try r.readUInt16("algorithm suite ID")
            let suite = try checkVersionAndSuite(version: version, suiteID: suiteID, policy: policy)!
            let messageID = try r.readBytes(suite.messageIDByteCount, "message ID")
            let aadLength = Int(try r.readUInt16("AAD length"))
            let ctxAt = r.offset
            let ctxBytes = try r.readSlice(aadLength, "encryption context")
            let context = try EncryptionContext.parse(ctxBytes, baseOffset: ctxAt)
            let countAt = r.offset
            let count = Int(try r.readUInt16("EDK count"))
            guard count > 0 else { throw EnvelopeError(.noEncryptedDataKeys, "the header holds no encrypted data key", offset: countAt) }
            guard count <= limits.maximumEncryptedDataKeys else {
                throw EnvelopeError(.tooManyEncryptedDataKeys, "\(count) EDKs exceed the limit of \(limits.maximumEncryptedDataKeys)", offset: countAt)
            }
            var edks: [EncryptedDataKey] = []
            for _ in 0..<count {
                let idAt = r.offset
                let pid = try r.readLengthPrefixed16("EDK provider ID")
                guard let pidString = String(validating: pid, as: UTF8.self) else {
                    throw EnvelopeError(.malformedHeader, "EDK provider ID is not UTF-8", offset: idAt)
                }
                let info = try r.readLengthPrefixed16("EDK provider info")
                let ct = try r.readLengthPrefixed16("EDK ciphertext")
                edks.append(EncryptedDataKey(providerID: pidString, providerInfo: info, ciphertext: ct))
            }
            let ctAt = r.offset
            let ctByte = try r.readUInt8("content type")
            guard let contentType = ContentType(rawValue: ctByte) else {
                throw EnvelopeError(.invalidContentType, "content type \(ctByte) (1 non-framed, 2 framed)", offset: ctAt)
            }
            if version == 1 {
                let resAt = r.offset
                let reserved = try r.readBytes(4, "reserved")
                guard reserved == [0, 0, 0, 0] else { throw EnvelopeError(.malformedHeader, "v1 reserved bytes are not zero", offset: resAt) }
                let ivAt = r.offset
                let ivLen = try r.readUInt8("IV length")
                guard Int(ivLen) == ivByteCount else { throw EnvelopeError(.malformedHeader, "v1 IV length \(ivLen), expected 12", offset: ivAt) }
            }
            let flAt = r.offset
            let frameLength = try r.readUInt32("frame length")
            switch contentType {
            case .framed:
                guard frameLength >= 1, frameLength <= limits.maximumFrameLength else {
                    throw EnvelopeError(.invalidFrameLength, "framed content needs a frame length of 1...\(limits.maximumFrameLength), got \(frameLength)", offset: flAt)
                }
            case .nonFramed:
                guard frameLength == 0 else {
                    throw EnvelopeError(.invalidFrameLength, "non-framed content needs frame length 0, got \(frameLength)", offset: flAt)
                }
            }
            let suiteData = try r.readBytes(suite.suiteDataByteCount, "algorithm suite data")
            let bodyEnd = r.offset
            let iv = version == 1 ? try r.readBytes(ivByteCount, "header IV") : []
            let tag = try r.readBytes(tagByteCount, "header tag")
            try r.expectEnd("message header")

            let hasPublicKey = context.containsKey(EncryptionContext.publicKeyKey)
            if suite.signs && !hasPublicKey {
                throw EnvelopeError(.reservedContextKey, "signed suite \(suite.idHex) but the context lacks \(EncryptionContext.publicKeyKey)", offset: ctxAt)
            }
            if !suite.signs && hasPublicKey {
                throw EnvelopeError(.reservedContextKey, "unsigned suite \(suite.idHex) but the context holds \(EncryptionContext.publicKeyKey)", offset: ctxAt)
            }
            if suite.signs, let value = context.value(forKey: EncryptionContext.publicKeyKey), !Self.isCompressedP384PointBase64(value) {
                throw EnvelopeError(.reservedContextKey,
                                    "\(EncryptionContext.publicKeyKey) is not the standard Base64 of a 49-byte compressed P-384 point (02 or 03 first)",
                                    offset: ctxAt)
            }
            return MessageHeader(version: version, suite: suite, messageID: messageID, context: context, edks: edks,
                                 contentType: contentType, frameLength: frameLength, suiteData: suiteData,
                                 headerIV: iv, headerTag: tag, bodyBytes: Array(bytes[0..<bodyEnd]))
        } catch let e as ByteCodingError {
            throw EnvelopeError.header(e)
        }
    }
}

/// Reads exactly the bytes of one header from a source, then parses them with
/// `MessageHeader.parse`. It follows the length fields and never reads a byte past the header
/// tag, so inspecting a message touches only its first bytes (spec/FORMAT.md §3.2).
public enum HeaderReader {
    public static func read(from source: ByteSource, policy: CommitmentPolicy = .requireCommitment,
                            limits: HeaderLimits = HeaderLimits()) throws -> MessageHeader {
        try read(from: CountingReader(source), policy: policy, limits: limits)
    }

    static func read(from reader: CountingReader, policy: CommitmentPolicy, limits: HeaderLimits) throws -> MessageHeader {
        var buf: [UInt8] = []
        func take(_ n: Int, _ field: String) throws -> [UInt8] {
            guard buf.count + n <= limits.maximumHeaderBytes else {
                throw EnvelopeError(.headerTooLarge, "the header exceeds \(limits.maximumHeaderBytes) bytes", offset: buf.count)
            }
            let b = try reader.read(n)
            buf.append(contentsOf: b)
            guard b.count == n else {
                throw EnvelopeError(.truncatedHeader, "the input ends inside the header (\(field))", offset: buf.count)
            }
            return b
        }
        func u16(_ field: String) throws -> Int {
            let b = try take(2, field)
            return Int(b[0]) << 8 | Int(b[1])
        }
        let version = try take(1, "version")[0]
        _ = try MessageHeader.checkVersionAndSuite(version: version, suiteID: nil, policy: policy)
        if version == 1 { _ = try take(1, "v1 type") }
        let suiteID = UInt16(try u16("algorithm suite ID"))
        let suite = try MessageHeader.checkVersionAndSuite(version: version, suiteID: suiteID, policy: policy)!
        _ = try take(suite.messageIDByteCount, "message ID")
        _ = try take(try u16("AAD length"), "encryption context")
        let countAt = buf.count
        let count = try u16("EDK count")
        guard count > 0 else { throw EnvelopeError(.noEncryptedDataKeys, "the header holds no encrypted data key", offset: countAt) }
        guard count <= limits.maximumEncryptedDataKeys else {
            throw EnvelopeError(.tooManyEncryptedDataKeys, "\(count) EDKs exceed the limit of \(limits.maximumEncryptedDataKeys)", offset: countAt)
        }
        for _ in 0..<count {
            _ = try take(try u16("EDK provider ID length"), "EDK provider ID")
            _ = try take(try u16("EDK provider info length"), "EDK provider info")
            _ = try take(try u16("EDK ciphertext length"), "EDK ciphertext")
        }
        if version == 1 {
            _ = try take(1 + 4 + 1 + 4, "content type, reserved, IV length, frame length")
            _ = try take(MessageHeader.ivByteCount + MessageHeader.tagByteCount, "header authentication")
        } else {
            _ = try take(1 + 4 + suite.suiteDataByteCount, "content type, frame length, suite data")
            _ = try take(MessageHeader.tagByteCount, "header tag")
        }
        return try MessageHeader.parse(buf, policy: policy, limits: limits)
    }
}
