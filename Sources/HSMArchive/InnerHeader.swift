import BackupCrypto
import ByteCoding

// Implements spec/FORMAT.md section 4.3 (the inner header). Grammar:
//
//   header   = prelude body seal
//   prelude  = magic(8) major(u8) minor(u8) bodyLength(u32)
//   body     = metadata backupId(16) createdAt(u64) pbkDescriptor ebkDescriptor payloadDescriptor
//              [fields appended by a later minor version: skipped, section 4.3.1]
//   metadata = 6 x str16 (manufacturer id 1...128 bytes, the others 0...256; UTF-8)
//   createdAt <= 253402300799 (9999-12-31T23:59:59Z)
//   pbkDescriptor     = kdf(u8 = 1) fingerprint(32)
//   ebkDescriptor     = wrap(u8 = 1) wrappedEBK(40)
//   payloadDescriptor = cipher(u8 = 1) compression(u8 = 2) format(u8 = 1) chunkSize(u32)
//                       payloadBytes(u64) users(u32) keys(u32) policies(u32)
//   seal     = HMAC-SHA256(K_seal, prelude || body)   (32 bytes)

/// The manufacturer metadata an HSM writes into every backup (public to the KMS-key holder).
public struct ManufacturerMetadata: Sendable, Equatable, Codable {
    public var manufacturerId: String
    public var model: String
    public var firmwareVersion: String
    public var serialNumber: String
    public var hsmId: String
    public var clusterId: String

    public init(manufacturerId: String, model: String, firmwareVersion: String, serialNumber: String, hsmId: String, clusterId: String) {
        self.manufacturerId = manufacturerId
        self.model = model
        self.firmwareVersion = firmwareVersion
        self.serialNumber = serialNumber
        self.hsmId = hsmId
        self.clusterId = clusterId
    }
}

/// What the chunks carry and how (spec 4.3, payload descriptor).
public struct PayloadDescriptor: Sendable, Equatable, Codable {
    public static let cipherKWPAES256: UInt8 = 1
    /// zstd, one frame per chunk (spec 4.5, 4.7). Value 1 (one frame for the whole payload)
    /// belonged to the pre-release major version 1 and is refused.
    public static let compressionZstdPerChunk: UInt8 = 2
    public static let formatPaxTarV1: UInt8 = 1

    public var cipher: UInt8
    public var compression: UInt8
    public var format: UInt8
    public var chunkSize: UInt32
    /// Size of the uncompressed payload (the tar), so decompression is bounded exactly.
    public var payloadBytes: UInt64
    public var userCount: UInt32
    public var keyCount: UInt32
    public var policyCount: UInt32

    public init(chunkSize: UInt32 = UInt32(InnerFormat.defaultChunkSize), payloadBytes: UInt64,
                userCount: UInt32, keyCount: UInt32, policyCount: UInt32) {
        cipher = Self.cipherKWPAES256
        compression = Self.compressionZstdPerChunk
        format = Self.formatPaxTarV1
        self.chunkSize = chunkSize
        self.payloadBytes = payloadBytes
        self.userCount = userCount
        self.keyCount = keyCount
        self.policyCount = policyCount
    }

    /// Chunks in the blob: the payload cut into `chunkSize` pieces, the last one shorter or equal.
    public var chunkCount: Int {
        let c = Int(chunkSize)
        return (Int(payloadBytes) + c - 1) / c
    }

    /// Payload bytes chunk `index` carries: `chunkSize`, except the last chunk's remainder.
    public func pieceBytes(chunk index: Int) -> Int {
        let c = Int(chunkSize)
        return index == chunkCount - 1 ? Int(payloadBytes) - c * index : c
    }
}

/// Constants and named limits of the inner format (spec 4.3 and 4.8).
public enum InnerFormat {
    public static let magic: [UInt8] = Array("HSMBINNR".utf8)
    public static let versionMajor: UInt8 = 2
    public static let versionMinor: UInt8 = 0
    public static let preludeByteCount = 14
    public static let sealByteCount = 32
    public static let backupIdByteCount = 16
    public static let wrappedEBKByteCount = 40
    public static let pbkKDFCounterHMACSHA256: UInt8 = 1
    public static let ebkWrapKWAES256: UInt8 = 1

    public static let maximumHeaderBodyBytes = 16 * 1024
    public static let maximumMetadataFieldBytes = 256
    public static let minimumChunkSize = 256
    public static let defaultChunkSize = 64 * 1024
    public static let maximumChunkSize = 4 * 1024 * 1024
    public static let maximumPayloadBytes: UInt64 = 1 << 30
    public static let maximumObjectsPerKind = 1 << 20
    public static let maximumChunks = 1 << 22
    /// 9999-12-31T23:59:59Z: the last second a 4-digit year (the public metadata's `created`,
    /// spec 3.8.1) can show.
    public static let maximumCreatedAt: UInt64 = 253_402_300_799
}

public struct InnerHeader: Sendable, Equatable {
    public let versionMajor: UInt8
    public let versionMinor: UInt8
    public let metadata: ManufacturerMetadata
    public let backupId: [UInt8]
    /// Seconds since the Unix epoch, UTC.
    public let createdAt: UInt64
    public let pbkKDF: UInt8
    public let pbkFingerprint: [UInt8]
    public let ebkWrapAlgorithm: UInt8
    public let wrappedEBK: [UInt8]
    public let payload: PayloadDescriptor
    public let seal: [UInt8]
    /// The header exactly as read or written (prelude, body, seal).
    public let encoded: [UInt8]

    /// SHA-256 of `encoded`: what every chunk binds to.
    public var digest: [UInt8] { SHA256Hasher.hash(encoded) }
    /// The bytes the seal covers (prelude and body).
    public var sealedBytes: ArraySlice<UInt8> { encoded[0..<(encoded.count - InnerFormat.sealByteCount)] }
    public var byteCount: Int { encoded.count }

    /// How many bytes the whole header takes, given at least its 14-byte prelude; nil if fewer
    /// bytes are available. Checks magic, major version and the body length limit first.
    public static func headerLength(prefix: ArraySlice<UInt8>) throws -> Int? {
        guard prefix.count >= InnerFormat.preludeByteCount else {
            // A short prefix that already differs from the magic is refused at once.
            let n = min(prefix.count, InnerFormat.magic.count)
            if !prefix.prefix(n).elementsEqual(InnerFormat.magic.prefix(n)) {
                throw ArchiveError(.badMagic, "not an hsmbackup inner blob", offset: 0, field: "magic")
            }
            return nil
        }
        var r = ByteReader(prefix.prefix(InnerFormat.preludeByteCount))
        do {
            do { try r.expect(InnerFormat.magic, "magic") } catch {
                throw ArchiveError(.badMagic, "not an hsmbackup inner blob", offset: 0, field: "magic")
            }
            let major = try r.readUInt8("major version")
            _ = try r.readUInt8("minor version")
            guard major == InnerFormat.versionMajor else {
                throw ArchiveError(.unsupportedVersion, "major version \(major) is not supported (this reader knows \(InnerFormat.versionMajor))",
                                   offset: 8, field: "major version")
            }
            let bodyLength = try r.readCount32("header body length", limit: InnerFormat.maximumHeaderBodyBytes)
            return InnerFormat.preludeByteCount + bodyLength + InnerFormat.sealByteCount
        } catch let e as ByteCodingError { throw ArchiveError.header(e) }
    }

    /// Parses the header at the start of `bytes` (more bytes may follow: the chunks). Checks
    /// structure only; the seal is verified by `verifySeal` once the EBK is known.
    public static func parse<C: Collection>(prefix bytes: C) throws -> InnerHeader where C.Element == UInt8 {
        let all = Array(bytes)
        guard let length = try headerLength(prefix: all[...]) else {
            throw ArchiveError(.truncated, "the input ends inside the header prelude", offset: all.count, field: "prelude")
        }
        guard all.count >= length else {
            throw ArchiveError(.truncated, "the header needs \(length) bytes, \(all.count) available", offset: all.count, field: "header")
        }
        return try decode(Array(all[0..<length]))
    }

    private static func decode(_ encoded: [UInt8]) throws -> InnerHeader {
        var r = ByteReader(encoded)
        do {
            try r.expect(InnerFormat.magic, "magic")
            let major = try r.readUInt8("major version")
            let minor = try r.readUInt8("minor version")
            let bodyLength = Int(try r.readUInt32("header body length"))
            var b = ByteReader(try r.readSlice(bodyLength, "header body"), baseOffset: InnerFormat.preludeByteCount)
            // Fields are checked in order: the first bad one names the error (spec 4.3). Identity
            // strings: over the maximum is limitExceeded (from the length, before the bytes are
            // read); anything else the rules of 4.3.2 exclude is malformedHeader.
            func identity(_ field: IdentityRules.Field) throws -> String {
                let at = b.offset
                let s = try b.readString16(field.rawValue, limit: field.byteRange.upperBound)
                if let problem = IdentityRules.problem(field, s) {
                    throw ArchiveError(.malformedHeader, problem, offset: at, field: field.rawValue)
                }
                return s
            }
            let metadata = ManufacturerMetadata(
                manufacturerId: try identity(.manufacturerId), model: try identity(.model),
                firmwareVersion: try identity(.firmwareVersion), serialNumber: try identity(.serialNumber),
                hsmId: try identity(.hsmId), clusterId: try identity(.clusterId))
            let backupId = try b.readBytes(InnerFormat.backupIdByteCount, "backup id")
            let createdAt = try b.readUInt64("created at")
            guard createdAt <= InnerFormat.maximumCreatedAt else {
                throw ArchiveError(.malformedHeader, "created at \(createdAt) is after 9999-12-31T23:59:59Z (\(InnerFormat.maximumCreatedAt))",
                                   offset: b.offset - 8, field: "created at")
            }
            let kdfAt = b.offset
            let kdf = try b.readUInt8("PBK KDF")
            guard kdf == InnerFormat.pbkKDFCounterHMACSHA256 else {
                throw ArchiveError(.malformedHeader, "unknown PBK KDF \(kdf)", offset: kdfAt, field: "PBK KDF")
            }
            let fingerprint = try b.readBytes(KeyHierarchy.fingerprintByteCount, "PBK fingerprint")
            let wrapAt = b.offset
            let wrap = try b.readUInt8("EBK wrap algorithm")
            guard wrap == InnerFormat.ebkWrapKWAES256 else {
                throw ArchiveError(.malformedHeader, "unknown EBK wrap algorithm \(wrap)", offset: wrapAt, field: "EBK wrap algorithm")
            }
            let wrapped = try b.readBytes(InnerFormat.wrappedEBKByteCount, "wrapped EBK")
            let algAt = b.offset
            let cipher = try b.readUInt8("payload cipher")
            let compression = try b.readUInt8("payload compression")
            let format = try b.readUInt8("payload format")
            guard cipher == PayloadDescriptor.cipherKWPAES256, compression == PayloadDescriptor.compressionZstdPerChunk,
                  format == PayloadDescriptor.formatPaxTarV1 else {
                throw ArchiveError(.malformedHeader, "unknown payload cipher/compression/format \(cipher)/\(compression)/\(format)",
                                   offset: algAt, field: "payload algorithms")
            }
            let chunkAt = b.offset
            let chunkSize = try b.readUInt32("chunk size")
            guard chunkSize >= InnerFormat.minimumChunkSize, chunkSize <= InnerFormat.maximumChunkSize else {
                throw ArchiveError(.limitExceeded, "chunk size \(chunkSize) outside \(InnerFormat.minimumChunkSize)...\(InnerFormat.maximumChunkSize)",
                                   offset: chunkAt, field: "chunk size")
            }
            let sizeAt = b.offset
            let payloadBytes = try b.readUInt64("payload size")
            guard payloadBytes >= 1 else {
                throw ArchiveError(.malformedHeader, "payload size 0: a payload is at least one byte", offset: sizeAt, field: "payload size")
            }
            guard payloadBytes <= InnerFormat.maximumPayloadBytes else {
                throw ArchiveError(.limitExceeded, "payload size \(payloadBytes) exceeds \(InnerFormat.maximumPayloadBytes)",
                                   offset: sizeAt, field: "payload size")
            }
            let users = UInt32(try b.readCount32("user count", limit: InnerFormat.maximumObjectsPerKind))
            let keys = UInt32(try b.readCount32("key count", limit: InnerFormat.maximumObjectsPerKind))
            let policies = UInt32(try b.readCount32("policy count", limit: InnerFormat.maximumObjectsPerKind))
            // A higher minor version may only append fields that are safe to ignore (spec 4.3.1):
            // this minor-0 reader skips them. A minor-0 body is consumed exactly.
            if minor == 0 { try b.expectEnd("header body") }
            let seal = try r.readBytes(InnerFormat.sealByteCount, "header seal")
            try r.expectEnd("header")
            var payload = PayloadDescriptor(chunkSize: chunkSize, payloadBytes: payloadBytes,
                                            userCount: users, keyCount: keys, policyCount: policies)
            payload.cipher = cipher; payload.compression = compression; payload.format = format
            return InnerHeader(versionMajor: major, versionMinor: minor, metadata: metadata, backupId: backupId,
                               createdAt: createdAt, pbkKDF: kdf, pbkFingerprint: fingerprint, ebkWrapAlgorithm: wrap,
                               wrappedEBK: wrapped, payload: payload, seal: seal, encoded: encoded)
        } catch let e as ByteCodingError {
            // Every byte of the header is present (parse checked its length): a field that runs
            // past bodyLength means a wrong body, not a short input.
            guard e.code == .truncated else { throw ArchiveError.header(e) }
            throw ArchiveError(.malformedHeader, "the header body ends inside \(e.field) (bodyLength too small for its fields)",
                               offset: e.offset, field: e.field)
        }
    }

    /// Builds and seals a version-2.0 header.
    public static func make(metadata: ManufacturerMetadata, backupId: [UInt8], createdAt: UInt64,
                            pbkFingerprint: [UInt8], wrappedEBK: [UInt8], payload: PayloadDescriptor,
                            ebk: EphemeralBackupKey) throws -> InnerHeader {
        try make(metadata: metadata, backupId: backupId, createdAt: createdAt, pbkFingerprint: pbkFingerprint,
                 wrappedEBK: wrappedEBK, payload: payload, ebk: ebk, minorVersion: InnerFormat.versionMinor, appendedFields: [])
    }

    /// A header of a later minor version (2.m, m > 0) whose body ends with `appendedFields`:
    /// what a future writer would make, for the vectors that show a minor-0 reader skipping them.
    @_spi(Testing)
    public static func make(metadata: ManufacturerMetadata, backupId: [UInt8], createdAt: UInt64,
                            pbkFingerprint: [UInt8], wrappedEBK: [UInt8], payload: PayloadDescriptor,
                            ebk: EphemeralBackupKey, minorVersion: UInt8, appendedFields: [UInt8]) throws -> InnerHeader {
        guard minorVersion > 0 || appendedFields.isEmpty else {
            throw ArchiveError(.invalidArgument, "a minor-0 header has no appended fields")
        }
        guard createdAt <= InnerFormat.maximumCreatedAt else {
            throw ArchiveError(.invalidArgument, "created at \(createdAt) is after 9999-12-31T23:59:59Z", field: "created at")
        }
        guard backupId.count == InnerFormat.backupIdByteCount, pbkFingerprint.count == KeyHierarchy.fingerprintByteCount,
              wrappedEBK.count == InnerFormat.wrappedEBKByteCount else {
            throw ArchiveError(.invalidArgument, "backup id, fingerprint or wrapped EBK has the wrong length")
        }
        guard payload.chunkSize >= InnerFormat.minimumChunkSize, payload.chunkSize <= InnerFormat.maximumChunkSize,
              payload.payloadBytes >= 1, payload.payloadBytes <= InnerFormat.maximumPayloadBytes,
              max(payload.userCount, payload.keyCount, payload.policyCount) <= InnerFormat.maximumObjectsPerKind else {
            throw ArchiveError(.invalidArgument, "payload descriptor outside the format's limits")
        }
        var body = ByteWriter()
        do {
            let fields: [(IdentityRules.Field, String)] = [
                (.manufacturerId, metadata.manufacturerId), (.model, metadata.model), (.firmwareVersion, metadata.firmwareVersion),
                (.serialNumber, metadata.serialNumber), (.hsmId, metadata.hsmId), (.clusterId, metadata.clusterId)]
            for (field, value) in fields {
                if let problem = IdentityRules.problem(field, value) { throw ArchiveError(.invalidArgument, problem, field: field.rawValue) }
                try body.writeString16(value, field.rawValue, limit: field.byteRange.upperBound)
            }
        } catch let e as ByteCodingError {
            throw ArchiveError(.invalidArgument, e.reason, field: e.field)
        }
        body.writeBytes(backupId)
        body.writeUInt64(createdAt)
        body.writeUInt8(InnerFormat.pbkKDFCounterHMACSHA256)
        body.writeBytes(pbkFingerprint)
        body.writeUInt8(InnerFormat.ebkWrapKWAES256)
        body.writeBytes(wrappedEBK)
        body.writeUInt8(payload.cipher)
        body.writeUInt8(payload.compression)
        body.writeUInt8(payload.format)
        body.writeUInt32(payload.chunkSize)
        body.writeUInt64(payload.payloadBytes)
        body.writeUInt32(payload.userCount)
        body.writeUInt32(payload.keyCount)
        body.writeUInt32(payload.policyCount)
        body.writeBytes(appendedFields)
        guard body.count <= InnerFormat.maximumHeaderBodyBytes else {
            throw ArchiveError(.invalidArgument, "header body of \(body.count) bytes exceeds \(InnerFormat.maximumHeaderBodyBytes)")
        }
        var w = ByteWriter()
        w.writeBytes(InnerFormat.magic)
        w.writeUInt8(InnerFormat.versionMajor)
        w.writeUInt8(minorVersion)
        w.writeUInt32(UInt32(body.count))
        w.writeBytes(body.bytes)
        let sealKey = try KeyHierarchy.sealKey(ebk: ebk, backupId: backupId)
        let seal = try HMACSHA256.authenticationCode(key: sealKey, message: w.bytes)
        w.writeBytes(seal)
        return try decode(w.bytes)
    }

    /// Checks the seal under the EBK (constant-time comparison).
    public func verifySeal(ebk: EphemeralBackupKey) throws {
        let key = try KeyHierarchy.sealKey(ebk: ebk, backupId: backupId)
        let expected = try HMACSHA256.authenticationCode(key: key, message: Array(sealedBytes))
        guard constantTimeEqual(expected, seal) else {
            throw ArchiveError(.headerSealMismatch, "the header seal does not verify under the EBK",
                               offset: encoded.count - InnerFormat.sealByteCount, field: "header seal")
        }
    }

    /// Unwraps the EBK under the PBK (KW, RFC 3394).
    public func unwrapEBK(pbk: PersistentBackupKey) throws -> EphemeralBackupKey {
        do {
            return try EphemeralBackupKey(secret: AESKeyWrap.unwrap(wrappedEBK, key: pbk))
        } catch is CryptoError {
            throw ArchiveError(.ebkUnwrapFailed, "the wrapped EBK does not unwrap under the PBK", field: "wrapped EBK")
        }
    }
}

/// The header's public fields in a JSON-friendly form (binary values as lowercase hex), for
/// inspectors and `--json` output. Holds nothing secret: the wrapped EBK is only useful with
/// the PBK.
public struct InnerHeaderSummary: Codable, Sendable, Equatable {
    public let formatVersion: String
    public let metadata: ManufacturerMetadata
    public let backupId: String
    public let createdAt: UInt64
    public let pbkKDF: UInt8
    public let pbkFingerprint: String
    public let ebkWrapAlgorithm: UInt8
    public let wrappedEBK: String
    public let payload: PayloadDescriptor
    public let headerBytes: Int
    public let headerDigest: String
    public let seal: String

    public init(_ h: InnerHeader) {
        formatVersion = "\(h.versionMajor).\(h.versionMinor)"
        metadata = h.metadata
        backupId = Hex.encode(h.backupId)
        createdAt = h.createdAt
        pbkKDF = h.pbkKDF
        pbkFingerprint = Hex.encode(h.pbkFingerprint)
        ebkWrapAlgorithm = h.ebkWrapAlgorithm
        wrappedEBK = Hex.encode(h.wrappedEBK)
        payload = h.payload
        headerBytes = h.byteCount
        headerDigest = Hex.encode(h.digest)
        seal = Hex.encode(h.seal)
    }
}

extension InnerHeader {
    public var summary: InnerHeaderSummary { InnerHeaderSummary(self) }
}
