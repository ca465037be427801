import BackupCrypto
import ByteCoding
import Durability
import Foundation
@_spi(Testing) import HSMArchive
import PayloadCodec

/// Generates spec/vectors/inner/ and samples/ deterministically (fixed keys, seeds, clock and
/// randomness): `make samples` runs it, and a test regenerates into a temp dir and compares.
public enum SpecVectors {
    public static let manufacturerId = "example-hsm-co"
    public static let otherManufacturerId = "other-hsm-co"
    public static let mkbkBytes: [UInt8] = Array(0x00...0x1f)
    public static let akbkBytes: [UInt8] = Array(0x20...0x3f)
    public static let otherAKBKBytes: [UInt8] = Array(0x40...0x5f)
    public static let createdAt: UInt64 = 1_790_000_000
    public static let vectorsFileName = "vectors.json"

    public struct KeySet: Codable, Sendable, Equatable {
        public let manufacturerId: String
        public let mkbk: String
        public let akbk: String

        public init(manufacturerId: String, mkbk: String, akbk: String) {
            self.manufacturerId = manufacturerId
            self.mkbk = mkbk
            self.akbk = akbk
        }

        public func keyring() throws -> BackupKeyring {
            BackupKeyring(manufacturerId: manufacturerId, mkbk: try ManufacturerBackupKey(bytes: Hex.decode(mkbk)!),
                          akbk: try OperatorBackupKey(bytes: Hex.decode(akbk)!))
        }
    }

    public struct ObjectRecord: Codable, Sendable, Equatable {
        public let path: String
        public let kind: String
        public let size: Int
        public let sha256: String
    }

    /// One chunk of a valid vector, every step of it (spec 4.5): the frame, the binding its
    /// plaintext starts with, the zstd frame after it and the piece of the payload that decodes.
    public struct ChunkRecord: Codable, Sendable, Equatable {
        public let index: Int
        /// 1 (chunk) or 2 (final chunk).
        public let type: Int
        /// Offset of the frame's type byte in the blob.
        public let offset: Int
        /// The frame's length field: KWP ciphertext bytes.
        public let ciphertextBytes: Int
        /// headerDigest || [index]32 || final, in hex (37 bytes).
        public let binding: String
        /// Size and SHA-256 of the chunk's zstd frame (the plaintext after the binding).
        public let dataBytes: Int
        public let dataSha256: String
        /// Size and SHA-256 of the payload piece it decodes to.
        public let pieceBytes: Int
        public let pieceSha256: String
    }

    /// The intermediate values of a valid vector, so a second implementation can check each step.
    public struct Expected: Codable, Sendable, Equatable {
        public let pbk: String
        public let pbkFingerprint: String
        public let ebk: String
        public let wrappedEBK: String
        public let sealKey: String
        public let headerSeal: String
        public let headerDigest: String
        public let headerBytes: Int
        public let backupId: String
        public let createdAt: UInt64
        public let chunkSize: Int
        public let chunks: Int
        public let chunkList: [ChunkRecord]
        /// The header's `<major>.<minor>`, as the public metadata's `hsmbackup.inner-version` gives it.
        public let innerVersion: String
        public let payloadBytes: Int
        public let payloadFile: String
        public let payloadSha256: String
        public let objects: [ObjectRecord]
    }

    public struct Vector: Codable, Sendable, Equatable {
        public let name: String
        public let description: String
        public let file: String
        /// "ok", or the `ArchiveError` code a reader MUST fail with.
        public let expect: String
        public let verifyWith: KeySet
        public let expected: Expected?
    }

    public struct VectorFile: Codable, Sendable, Equatable {
        public let format: String
        public let spec: String
        public let vectors: [Vector]
    }

    static var defaultKeys: KeySet { KeySet(manufacturerId: manufacturerId, mkbk: Hex.encode(mkbkBytes), akbk: Hex.encode(akbkBytes)) }

    static func identity(_ manufacturer: String = manufacturerId) -> HSMIdentity {
        HSMIdentity(manufacturerId: manufacturer, model: "EX-1000", firmwareVersion: "2.4.1",
                    serialNumber: "EX1K-000042", hsmId: "hsm-example-1", clusterId: "cluster-example")
    }

    static func prettyJSON<T: Encodable>(_ value: T) throws -> [UInt8] {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return Array(try e.encode(value)) + [0x0a]
    }

    /// Writes every vector and sample file; returns the relative paths written, per directory.
    @discardableResult
    public static func generate(vectorsDirectory: String, samplesDirectory: String) throws -> [String] {
        var files: [(String, [UInt8])] = []   // path relative to vectorsDirectory or "samples/..." marker
        var vectors: [Vector] = []
        let keys = defaultKeys
        let keyring = try keys.keyring()

        func sealed(_ bundle: PayloadBundle, seed: UInt64, chunkSize: Int, manufacturer: String = manufacturerId,
                    akbk: [UInt8] = akbkBytes) throws -> (blob: [UInt8], ebk: EphemeralBackupKey, backupId: [UInt8], tar: [UInt8]) {
            let rnd = SeededRandomSource(seed: seed)
            let backupId = rnd.bytes(count: InnerFormat.backupIdByteCount)
            let ebk = try EphemeralBackupKey(secret: rnd.secureBytes(count: 32))
            let ring = BackupKeyring(manufacturerId: manufacturer, mkbk: try ManufacturerBackupKey(bytes: mkbkBytes),
                                     akbk: try OperatorBackupKey(bytes: akbk))
            let blob = try InnerBlob.seal(bundle, metadata: identity(manufacturer).metadata, backupId: backupId, createdAt: createdAt,
                                          keyring: ring, ebk: ebk, chunkSize: chunkSize)
            return (blob, ebk, backupId, try bundle.tarBytes())
        }
        func sealed(_ contents: HSMContents, seed: UInt64, chunkSize: Int, manufacturer: String = manufacturerId,
                    akbk: [UInt8] = akbkBytes) throws -> (blob: [UInt8], ebk: EphemeralBackupKey, backupId: [UInt8], tar: [UInt8]) {
            try sealed(try contents.payloadBundle(), seed: seed, chunkSize: chunkSize, manufacturer: manufacturer, akbk: akbk)
        }

        /// A valid vector with every intermediate value: the keys, the header, each chunk, the
        /// payload (`tar`, exactly as the chunks carry it) and each tar entry.
        func addValid(_ name: String, _ description: String, blob: [UInt8], ebk: EphemeralBackupKey, backupId: [UInt8],
                      tar: [UInt8]) throws {
            let header = try InnerHeader.parse(prefix: blob)
            var frames: [ChunkFrame] = []
            var parser = InnerFrameParser()
            try parser.feed(blob, onHeader: { _ in }, onFrame: { frames.append($0) })
            try parser.finish()
            let pbk = try keyring.pbk()
            let sealKey = try KeyHierarchy.sealKey(ebk: ebk, backupId: backupId)
            let plaintexts = try AESKeyWrapLanes.unwrapPadded(frames.map(\.ciphertext), key: ebk).map { try $0.get().unsafeCopy() }
            let payload = header.payload
            var at = 0
            let chunkList = zip(frames, plaintexts).map { f, plain -> ChunkRecord in
                let data = Array(plain[ChunkFormat.bindingByteCount...])
                let n = payload.pieceBytes(chunk: f.index)
                let piece = Array(tar[at..<(at + n)])
                at += n
                return ChunkRecord(index: f.index, type: Int(f.isFinal ? ChunkFormat.typeFinal : ChunkFormat.typeChunk), offset: f.offset,
                                   ciphertextBytes: f.ciphertext.count, binding: Hex.encode(plain.prefix(ChunkFormat.bindingByteCount)),
                                   dataBytes: data.count, dataSha256: Hex.encode(SHA256Hasher.hash(data)),
                                   pieceBytes: n, pieceSha256: Hex.encode(SHA256Hasher.hash(piece)))
            }
            precondition(at == tar.count, "\(name): the chunks carry the whole payload")
            files.append(("\(name).blob", blob))
            files.append(("\(name).payload.tar", tar))
            let entries = try PaxTar.read(tar, limits: PayloadBundle.tarLimits)
            let expected = Expected(
                pbk: Hex.encode(pbk.secret.unsafeCopy()),
                pbkFingerprint: Hex.encode(header.pbkFingerprint),
                ebk: Hex.encode(ebk.secret.unsafeCopy()),
                wrappedEBK: Hex.encode(header.wrappedEBK),
                sealKey: Hex.encode(sealKey.secret.unsafeCopy()),
                headerSeal: Hex.encode(header.seal),
                headerDigest: Hex.encode(header.digest),
                headerBytes: header.byteCount,
                backupId: Hex.encode(backupId),
                createdAt: header.createdAt,
                chunkSize: Int(payload.chunkSize),
                chunks: frames.count,
                chunkList: chunkList,
                innerVersion: "\(header.versionMajor).\(header.versionMinor)",
                payloadBytes: tar.count,
                payloadFile: "\(name).payload.tar",
                payloadSha256: Hex.encode(SHA256Hasher.hash(tar)),
                objects: entries.map { e in
                    ObjectRecord(path: e.path, kind: e.path == PayloadManifest.path ? "manifest"
                                    : ObjectKind.allCases.first { e.path.hasPrefix($0.directory) }?.rawValue ?? "?",
                                 size: e.contents.count, sha256: Hex.encode(SHA256Hasher.hash(e.contents)))
                })
            vectors.append(Vector(name: name, description: description, file: "\(name).blob", expect: "ok", verifyWith: keys, expected: expected))
        }
        func addValid(_ name: String, _ description: String, _ bundle: PayloadBundle, seed: UInt64, chunkSize: Int) throws -> [UInt8] {
            let (blob, ebk, backupId, tar) = try sealed(bundle, seed: seed, chunkSize: chunkSize)
            try addValid(name, description, blob: blob, ebk: ebk, backupId: backupId, tar: tar)
            return blob
        }

        func addReject(_ name: String, _ expect: ArchiveError.Code, _ description: String, _ blob: [UInt8]) {
            files.append(("\(name).blob", blob))
            vectors.append(Vector(name: name, description: description, file: "\(name).blob", expect: expect.rawValue,
                                  verifyWith: keys, expected: nil))
        }

        // Valid vectors.
        _ = try addValid("ok-empty", "an HSM with no policies, users or keys: the payload is the manifest alone",
                         try HSMContents.empty.payloadBundle(), seed: 1, chunkSize: InnerFormat.defaultChunkSize)
        let small = try SimulatedHSM.makeContents(keys: 3, users: 2, seed: 2, options: .deterministic)
        let smallBundle = try small.payloadBundle()
        let blob = try addValid("ok-small", "3 keys (AES, EC P-384, generic secret), 2 users, 2 policies; 256-byte chunks",
                                smallBundle, seed: 2, chunkSize: 256)
        let intl = try SimulatedHSM.makeContents(keys: 4, users: 3, seed: 3,
                                                 options: PopulateOptions(keyTypes: [.aes, .ec], nonASCIIEvery: 2))
        _ = try addValid("ok-non-ascii", "non-ASCII key labels and user names; one chunk", try intl.payloadBundle(), seed: 3,
                         chunkSize: InnerFormat.defaultChunkSize)
        let smallTar = try smallBundle.tarBytes()
        precondition(smallTar.count % 1000 != 0)
        _ = try addValid("ok-short-last-chunk",
                         "ok-small's payload in 1000-byte chunks: \(smallTar.count / 1000) full chunks and a final one of \(smallTar.count % 1000) bytes",
                         smallBundle, seed: 4, chunkSize: 1000)
        var longObjects = smallBundle.objects
        let renamed = longObjects.removeLast()
        let longPath = renamed.kind.directory + String(repeating: "long-name-", count: 25) + "000003.json"
        longObjects.append(PayloadObject(kind: renamed.kind, path: longPath, contents: renamed.contents))
        _ = try addValid("ok-long-path",
                         "ok-small with its last key at a \(longPath.utf8.count)-byte path (one component over 100 bytes): the tar gives it in a pax extended header (typeflag x, record path)",
                         try PayloadBundle(objects: longObjects), seed: 5, chunkSize: 256)

        // Must-reject vectors, derived from ok-small.
        let header = try InnerHeader.parse(prefix: blob)
        var parser = InnerFrameParser()
        var frames: [ChunkFrame] = []
        try parser.feed(blob, onHeader: { _ in }, onFrame: { frames.append($0) })
        let h = header.byteCount
        func frame(_ i: Int) -> [UInt8] { Array(blob[frames[i].offset..<(frames[i].offset + 5 + frames[i].ciphertext.count)]) }
        let headerBytes = Array(blob.prefix(h))
        let allFrames = (0..<frames.count).map(frame)
        func offsetOf(_ field: String) throws -> Int {
            var r = ByteReader(blob)
            _ = try r.readBytes(InnerFormat.preludeByteCount, "prelude")
            for _ in 0..<6 { _ = try r.readLengthPrefixed16("string") }
            let fields: [(String, Int)] = [("backup id", 16), ("created at", 8), ("PBK KDF", 1), ("PBK fingerprint", 32),
                                           ("EBK wrap algorithm", 1), ("wrapped EBK", 40), ("payload algorithms", 3), ("chunk size", 4)]
            for (n, len) in fields { if n == field { return r.offset }; _ = try r.readBytes(len, n) }
            preconditionFailure("unknown field \(field)")
        }
        func flipped(_ at: Int, _ x: UInt8 = 0x01) -> [UInt8] { var b = blob; b[at] ^= x; return b }
        func serialOffset() throws -> Int {
            var r = ByteReader(blob)
            _ = try r.readBytes(InnerFormat.preludeByteCount, "prelude")
            for _ in 0..<3 { _ = try r.readLengthPrefixed16("string") }
            return r.offset + 2
        }

        addReject("reject-bad-magic", .badMagic, "first byte of the magic changed", flipped(0, 0xFF))
        var v1 = blob; v1[8] = 1
        addReject("reject-major-version-1", .unsupportedVersion, "major version 1 (the pre-release single-frame format): refused before any key is used", v1)
        addReject("reject-truncated-header", .truncated, "the blob cut inside the header", Array(blob.prefix(h - 10)))
        addReject("reject-truncated-chunk", .truncated, "the blob cut inside chunk 1",
                  Array(blob.prefix(frames[1].offset + 20)))
        addReject("reject-missing-final-chunk", .missingFinalChunk, "the final chunk removed (cut at a frame boundary)",
                  Array(blob.prefix(frames.last!.offset)))
        addReject("reject-data-after-final-chunk", .dataAfterFinalChunk, "one zero byte after the final chunk", blob + [0])
        let otherMfr = try sealed(small, seed: 2, chunkSize: 256, manufacturer: otherManufacturerId).blob
        addReject("reject-wrong-manufacturer", .wrongManufacturer, "made by manufacturer \(otherManufacturerId), verified as \(manufacturerId)", otherMfr)
        let otherOp = try sealed(small, seed: 2, chunkSize: 256, akbk: otherAKBKBytes).blob
        addReject("reject-pbk-mismatch", .pbkMismatch, "made under another AKBK (40..5f): the PBK fingerprint differs", otherOp)
        addReject("reject-ebk-unwrap", .ebkUnwrapFailed, "a byte of the wrapped EBK changed", flipped(try offsetOf("wrapped EBK") + 5))
        addReject("reject-header-seal", .headerSealMismatch, "a byte of the serial number changed (still valid UTF-8)", flipped(try serialOffset()))
        var kdf = blob; kdf[try offsetOf("PBK KDF")] = 9
        addReject("reject-unknown-pbk-kdf", .malformedHeader, "PBK KDF id 9", kdf)
        var cs = blob; let csAt = try offsetOf("chunk size"); cs[csAt] = 0xff; cs[csAt + 1] = 0xff
        addReject("reject-chunk-size-limit", .limitExceeded, "chunk size above the 4 MiB limit", cs)
        addReject("reject-chunk-ciphertext", .chunkAuthenticationFailed, "a byte of chunk 1's ciphertext changed",
                  flipped(frames[1].offset + 5 + 7, 0x80))
        addReject("reject-chunks-reordered", .chunkBindingMismatch, "chunks 0 and 1 swapped",
                  headerBytes + allFrames[1] + allFrames[0] + allFrames[2...].flatMap { $0 })
        addReject("reject-chunk-duplicated", .chunkBindingMismatch, "chunk 0 twice",
                  headerBytes + allFrames[0] + allFrames.flatMap { $0 })
        var fin = blob; fin[frames[0].offset] = ChunkFormat.typeFinal
        addReject("reject-chunk-flagged-final", .malformedFrame, "chunk 0's frame type set to final (the sizes give \(frames.count) chunks)", fin)
        var ft = blob; ft[frames[0].offset] = 0x07
        addReject("reject-unknown-frame-type", .malformedFrame, "frame type 0x07", ft)
        addReject("reject-frame-length", .malformedFrame, "chunk 0's length field plus 1 (not a multiple of 8)", flipped(frames[0].offset + 4, 0x01))
        let otherBackup = try sealed(small, seed: 77, chunkSize: 256).blob
        var op = InnerFrameParser()
        var otherFrames: [ChunkFrame] = []
        try op.feed(otherBackup, onHeader: { _ in }, onFrame: { otherFrames.append($0) })
        let spliced = Array(otherBackup[otherFrames[1].offset..<(otherFrames[1].offset + 5 + otherFrames[1].ciphertext.count)])
        addReject("reject-spliced-chunk", .chunkAuthenticationFailed, "chunk 1 taken from another backup of the same HSM",
                  headerBytes + allFrames[0] + spliced + allFrames[2...].flatMap { $0 })

        // Header fields the writer refuses to make, sealed as a writer would have: each header
        // is ok-small's with one field changed, then ok-small's chunks (a reader stops at the
        // header, step 2 of 4.6).
        let smallKeys = try sealed(smallBundle, seed: 2, chunkSize: 256)
        func rawHeader(minor: UInt8 = 0, strings: [[UInt8]]? = nil, createdAt: UInt64? = nil, keyCount: UInt32? = nil,
                       appended: [UInt8] = [], cut: Int = 0) throws -> [UInt8] {
            let m = header.metadata
            var body = ByteWriter()
            for s in strings ?? [m.manufacturerId, m.model, m.firmwareVersion, m.serialNumber, m.hsmId, m.clusterId].map({ Array($0.utf8) }) {
                body.writeUInt16(UInt16(s.count))
                body.writeBytes(s)
            }
            body.writeBytes(header.backupId)
            body.writeUInt64(createdAt ?? header.createdAt)
            body.writeUInt8(header.pbkKDF)
            body.writeBytes(header.pbkFingerprint)
            body.writeUInt8(header.ebkWrapAlgorithm)
            body.writeBytes(header.wrappedEBK)
            let p = header.payload
            body.writeBytes([p.cipher, p.compression, p.format])
            body.writeUInt32(p.chunkSize)
            body.writeUInt64(p.payloadBytes)
            body.writeUInt32(p.userCount)
            body.writeUInt32(keyCount ?? p.keyCount)
            body.writeUInt32(p.policyCount)
            body.writeBytes(appended)
            let bodyBytes = Array(body.bytes.dropLast(cut))
            var w = ByteWriter()
            w.writeBytes(InnerFormat.magic)
            w.writeUInt8(InnerFormat.versionMajor)
            w.writeUInt8(minor)
            w.writeUInt32(UInt32(bodyBytes.count))
            w.writeBytes(bodyBytes)
            let sealKey = try KeyHierarchy.sealKey(ebk: smallKeys.ebk, backupId: smallKeys.backupId)
            w.writeBytes(try HMACSHA256.authenticationCode(key: sealKey, message: w.bytes))
            return w.bytes + allFrames.flatMap { $0 }
        }
        let m = header.metadata
        func strings(manufacturer: [UInt8] = Array(m.manufacturerId.utf8), model: [UInt8] = Array(m.model.utf8)) -> [[UInt8]] {
            [manufacturer, model] + [m.firmwareVersion, m.serialNumber, m.hsmId, m.clusterId].map { Array($0.utf8) }
        }
        addReject("reject-manufacturer-empty", .malformedHeader, "a 0-byte manufacturer id (sealed)",
                  try rawHeader(strings: strings(manufacturer: [])))
        addReject("reject-manufacturer-too-long", .limitExceeded, "a 129-byte manufacturer id (the limit is 128; sealed)",
                  try rawHeader(strings: strings(manufacturer: Array(repeating: UInt8(ascii: "m"), count: 129))))
        addReject("reject-string-too-long", .limitExceeded, "a 257-byte model (the limit is 256; sealed)",
                  try rawHeader(strings: strings(model: Array(repeating: UInt8(ascii: "x"), count: 257))))
        addReject("reject-string-invalid-utf8", .malformedHeader, "the model is EX-1000 with a 0xFF byte in it: not UTF-8 (sealed)",
                  try rawHeader(strings: strings(model: Array("EX-".utf8) + [0xFF] + Array("1000".utf8))))
        addReject("reject-count-limit", .limitExceeded, "key count 2^20 + 1 (sealed)",
                  try rawHeader(keyCount: UInt32(InnerFormat.maximumObjectsPerKind + 1)))
        addReject("reject-created-after-9999", .malformedHeader, "created at 253402300800, one second after 9999-12-31T23:59:59Z (sealed)",
                  try rawHeader(createdAt: InnerFormat.maximumCreatedAt + 1))
        addReject("reject-body-too-short", .malformedHeader,
                  "bodyLength 4 bytes short: the policy count runs past the body's end although every byte is present (sealed)",
                  try rawHeader(cut: 4))
        addReject("reject-minor-0-appended-field", .malformedHeader,
                  "minor version 0 with ok-minor-1's appended field: a minor-0 body is consumed exactly (sealed)",
                  try rawHeader(appended: minorOneField))

        // Blobs an EBK holder could make: well sealed, but with a bad payload.
        // `chunkData`: each chunk's data as given (zstd frames made here), instead of the writer's.
        func crafted(tar: [UInt8], payloadBytes: Int? = nil, counts: (Int, Int, Int) = (2, 2, 3), seed: UInt64, chunkSize: Int = 256,
                     chunkData: [[UInt8]]? = nil, minor: UInt8 = 0,
                     appended: [UInt8] = []) throws -> (blob: [UInt8], ebk: EphemeralBackupKey, backupId: [UInt8]) {
            let rnd = SeededRandomSource(seed: seed)
            let backupId = rnd.bytes(count: 16)
            let ebk = try EphemeralBackupKey(secret: rnd.secureBytes(count: 32))
            var out: [UInt8] = []
            let writer = try InnerBlobWriter(
                metadata: identity().metadata, backupId: backupId, createdAt: createdAt,
                payload: PayloadDescriptor(chunkSize: UInt32(chunkSize), payloadBytes: UInt64(payloadBytes ?? tar.count),
                                           userCount: UInt32(counts.1), keyCount: UInt32(counts.2), policyCount: UInt32(counts.0)),
                pbk: try keyring.pbk(), ebk: ebk, minorVersion: minor, appendedFields: appended, sink: { out.append(contentsOf: $0) })
            if let chunkData {
                for d in chunkData { try writer.writeChunkData(d) }
            } else {
                try writer.write(tar)
            }
            try writer.finish()
            return (out, ebk, backupId)
        }
        func pieces(_ tar: [UInt8], declared: Int) throws -> [[UInt8]] {
            let n = (declared + 255) / 256
            return try (0..<n).map { i in
                try Zstd.compress(Array(tar[(i * 256)..<(i == n - 1 ? tar.count : (i + 1) * 256)]))
            }
        }

        // A later minor version: a field appended to the body, which this (minor-0) reader skips.
        let minorOne = try crafted(tar: smallTar, seed: 6, minor: 1, appended: minorOneField)
        try addValid("ok-minor-1",
                     "minor version 1: the body ends with a field a minor-0 reader does not know (str16 \"\(minorOneNote)\"), covered by the seal and skipped",
                     blob: minorOne.blob, ebk: minorOne.ebk, backupId: minorOne.backupId, tar: smallTar)

        addReject("reject-payload-size", .payloadMalformed,
                  "the header declares 512 bytes less than the payload: the last chunk's frame holds more than its share",
                  try crafted(tar: smallTar, payloadBytes: smallTar.count - 512, seed: 90,
                              chunkData: try pieces(smallTar, declared: smallTar.count - 512)).blob)
        var trailing = try pieces(smallTar, declared: smallTar.count)
        trailing[1] += [0]
        addReject("reject-chunk-data-trailing-byte", .payloadMalformed, "chunk 1's data is its zstd frame and one more byte",
                  try crafted(tar: smallTar, seed: 93, chunkData: trailing).blob)
        var dictionary = try pieces(smallTar, declared: smallTar.count)
        dictionary[1] = try ZstdFrameEdit.withDictionaryID(dictionary[1])
        addReject("reject-zstd-dictionary-id", .payloadMalformed,
                  "chunk 1's zstd frame header has Dictionary_ID_flag 1 with a 1-byte Dictionary_ID of 0 (which zstd decodes as no dictionary)",
                  try crafted(tar: smallTar, seed: 94, chunkData: dictionary).blob)
        var window = try pieces(smallTar, declared: smallTar.count)
        window[1] = try ZstdFrameEdit.withWindow(window[1], descriptor: 0x00)
        addReject("reject-zstd-window", .payloadMalformed,
                  "chunk 1's zstd frame is not single-segment and its window (1 KiB) is larger than its 256-byte piece (zstd decodes it)",
                  try crafted(tar: smallTar, seed: 95, chunkData: window).blob)
        addReject("reject-object-counts", .objectCountMismatch, "the header declares 4 keys, the payload holds 3",
                  try crafted(tar: smallTar, counts: (2, 2, 4), seed: 91).blob)
        var entries = try PaxTar.read(smallTar)
        var lastKey = entries.removeLast()
        lastKey = TarEntry(path: lastKey.path, contents: lastKey.contents + Array(" ".utf8))
        entries.append(lastKey)
        let tampered = try PaxTar.write(entries)
        addReject("reject-object-digest", .objectDigestMismatch, "a key object changed after the manifest was made",
                  try crafted(tar: tampered, seed: 92).blob)

        // The tar against the manifest (4.7), and the tar grammar.
        let smallEntries = try PaxTar.read(smallTar)
        func tar(_ e: [TarEntry]) throws -> [UInt8] { try PaxTar.write(e, limits: PayloadBundle.tarLimits) }
        addReject("reject-tar-extra-entry", .manifestMalformed, "a tar entry keys/extra.json after the 7 objects the manifest lists",
                  try crafted(tar: try tar(smallEntries + [TarEntry(path: "keys/extra.json", contents: Array("{}".utf8))]), seed: 100).blob)
        addReject("reject-tar-missing-entry", .manifestMalformed, "the last key's entry removed from the tar (the manifest still lists it)",
                  try crafted(tar: try tar(Array(smallEntries.dropLast())), seed: 101).blob)
        let last = smallEntries.last!
        addReject("reject-tar-renamed-entry", .objectDigestMismatch,
                  "the last key's entry renamed to keys/renamed.json (same bytes): its path differs from its record",
                  try crafted(tar: try tar(smallEntries.dropLast() + [TarEntry(path: "keys/renamed.json", contents: last.contents)]), seed: 102).blob)
        addReject("reject-manifest-not-first", .manifestMalformed, "the first policy's entry before manifest.json",
                  try crafted(tar: try tar([smallEntries[1], smallEntries[0]] + smallEntries[2...]), seed: 103).blob)
        let manifest = smallEntries[0].contents
        let extraKey = Array(#"{"comment":"x","#.utf8) + manifest.dropFirst()
        addReject("reject-manifest-extra-key", .manifestMalformed,
                  "the manifest with a top-level key \"comment\" (still canonical JSON: sorted, no whitespace)",
                  try crafted(tar: try tar([TarEntry(path: PayloadManifest.path, contents: extraKey)] + smallEntries[1...]), seed: 104).blob)
        addReject("reject-tar-typeflag-7", .tarMalformed, "the last key's ustar typeflag is '7' (contiguous file), checksum fixed",
                  try crafted(tar: try TarEdit.patch(smallTar, entry: 7) { $0[156] = UInt8(ascii: "7") }, seed: 105).blob)
        addReject("reject-tar-octal-terminator", .tarMalformed,
                  "the first policy's size field ends in 'x' instead of a space or NUL, checksum fixed",
                  try crafted(tar: try TarEdit.patch(smallTar, entry: 1) { $0[124 + 11] = UInt8(ascii: "x") }, seed: 106).blob)
        // What a reader MUST accept of other pax writers' conventions.
        var variants = try TarEdit.patch(smallTar, entry: 1) { $0[156] = 0 }
        variants = try TarEdit.patch(variants, entry: 2) { block in
            let digits = TarEdit.octalDigits(block, at: 124, length: 12)
            let field = Array("  ".utf8) + digits + [UInt8](repeating: 0, count: 10 - digits.count)
            block.replaceSubrange(124..<136, with: field)
        }
        variants += [UInt8](repeating: 0, count: 100)
        let variantBlob = try crafted(tar: variants, seed: 107)
        try addValid("ok-tar-variants",
                     "ok-small's tar with the first policy's typeflag NUL (not '0'), the second policy's size as two spaces, octal digits and NULs, and 100 zero bytes after the end-of-archive blocks (not a whole block)",
                     blob: variantBlob.blob, ebk: variantBlob.ebk, backupId: variantBlob.backupId, tar: variants)

        let file = VectorFile(format: "hsmbackup inner blob vectors v1", spec: "spec/FORMAT.md section 4", vectors: vectors)
        files.append((vectorsFileName, try prettyJSON(file)))

        var written: [String] = []
        try AtomicFile.makeDirectory(vectorsDirectory, mode: 0o755)
        for (name, bytes) in files {
            try AtomicFile.write(bytes, to: vectorsDirectory + "/" + name, mode: 0o644)
            written.append(vectorsDirectory + "/" + name)
        }

        // Samples: one small HSM, its backup, its decrypted payload and its (test-only) keys.
        try AtomicFile.makeDirectory(samplesDirectory, mode: 0o755)
        let sampleContents = try SimulatedHSM.makeContents(keys: 6, users: 3, seed: 42, options: .deterministic)
        let sample = try sealed(sampleContents, seed: 42, chunkSize: 1024)
        struct SampleKeys: Codable { let note: String; let keys: KeySet; let identity: HSMIdentity }
        let samples: [(String, [UInt8])] = [
            ("example-hsm.inner", sample.blob),
            ("example-hsm.payload.tar", sample.tar),
            ("example-hsm.contents.json", try prettyJSON(sampleContents)),
            ("example-hsm.keys.json", try prettyJSON(SampleKeys(note: "TEST KEYS ONLY: published so anyone can open the sample",
                                                               keys: keys, identity: identity()))),
            ("README.md", Array(sampleReadme.utf8)),
        ]
        for (name, bytes) in samples {
            try AtomicFile.write(bytes, to: samplesDirectory + "/" + name, mode: 0o644)
            written.append(samplesDirectory + "/" + name)
        }
        return written
    }

    static let sampleReadme = """
        # Samples (generated by `make samples`; do not edit)

        A small simulated HSM (6 keys, 3 users, 2 policies, seed 42) and one backup of it, made
        with fixed test keys and fixed randomness, so the files are identical on every run.

        | file | what |
        |---|---|
        | `example-hsm.inner` | the inner HSM backup blob (spec/FORMAT.md section 4), 1 KiB chunks |
        | `example-hsm.payload.tar` | its decrypted, decompressed payload: `bsdtar -tvf example-hsm.payload.tar` |
        | `example-hsm.contents.json` | the HSM contents the payload holds |
        | `example-hsm.keys.json` | the MKBK, AKBK and identity it was made with (TEST KEYS ONLY) |

        The vectors with every intermediate value (PBK, fingerprint, EBK, seal key, header digest)
        and the must-reject blobs are in `spec/vectors/inner/`.

        """
}

extension SpecVectors {
    /// What ok-minor-1 appends to its header body: a str16, as a minor-1 writer might add.
    static let minorOneNote = "a field appended by minor 1"
    static var minorOneField: [UInt8] {
        let b = Array(minorOneNote.utf8)
        return [UInt8(b.count >> 8), UInt8(b.count & 0xff)] + b
    }
}

/// Rewrites the header of a zstd frame (RFC 8878 3.1.1.1) made by libzstd, for the vectors of
/// the frame rules of spec 4.7. Input: a single-segment frame with no dictionary id.
enum ZstdFrameEdit {
    struct Parts { var descriptor: UInt8; var contentSize: UInt64; var rest: ArraySlice<UInt8> }

    static func parts(_ f: [UInt8]) throws -> Parts {
        guard f.count > 6, f.prefix(4).elementsEqual(Zstd.frameMagic), f[4] & 0x23 == 0x20 else {
            throw ArchiveError(.invalidArgument, "not a single-segment zstd frame without dictionary id")
        }
        let fcsBytes = [1, 2, 4, 8][Int(f[4] >> 6)]
        var size: UInt64 = 0
        for i in (0..<fcsBytes).reversed() { size = size << 8 | UInt64(f[5 + i]) }
        if fcsBytes == 2 { size += 256 }
        return Parts(descriptor: f[4], contentSize: size, rest: f[(5 + fcsBytes)...])
    }

    /// Frame_Content_Size as 4 little-endian bytes (FCS flag 2).
    static func fcs4(_ n: UInt64) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: n >> (8 * UInt64($0))) } }

    /// Dictionary_ID_flag 1 and a 1-byte Dictionary_ID of 0 ("no dictionary" to zstd).
    static func withDictionaryID(_ f: [UInt8]) throws -> [UInt8] {
        let p = try parts(f)
        return Zstd.frameMagic + [0x80 | 0x20 | 0x01, 0x00] + fcs4(p.contentSize) + p.rest
    }

    /// Not single-segment: a Window_Descriptor, and the content size kept (FCS flag 2).
    static func withWindow(_ f: [UInt8], descriptor: UInt8) throws -> [UInt8] {
        let p = try parts(f)
        return Zstd.frameMagic + [0x80, descriptor] + fcs4(p.contentSize) + p.rest
    }
}

/// Edits one ustar header block of a tar (the vectors of the tar grammar, spec 4.7) and sets its
/// checksum again, so that only the edited field is wrong.
enum TarEdit {
    final class HeaderOffsets: TarVisitor {
        var offsets: [Int] = []
        func beginEntry(index: Int, path: String, size: Int, offset: Int) throws { offsets.append(offset) }
        func entryData(_ bytes: UnsafeRawBufferPointer) throws {}
        func endEntry() throws {}
    }

    static func patch(_ tar: [UInt8], entry: Int, _ edit: (inout [UInt8]) -> Void) throws -> [UInt8] {
        let v = HeaderOffsets()
        let r = PaxTarReader(limits: PayloadBundle.tarLimits, visitor: v)
        try r.feed(tar)
        try r.finish()
        let at = v.offsets[entry]
        var block = Array(tar[at..<(at + 512)])
        edit(&block)
        block.replaceSubrange(148..<156, with: [UInt8](repeating: 0x20, count: 8))
        let sum = block.reduce(0) { $0 + Int($1) }
        let digits = Array(String(sum, radix: 8).utf8)
        block.replaceSubrange(148..<156, with: [UInt8](repeating: 0x30, count: 6 - digits.count) + digits + [0x00, 0x20])
        var out = tar
        out.replaceSubrange(at..<(at + 512), with: block)
        return out
    }

    /// The octal digits of a field without leading zeros (at least one digit).
    static func octalDigits(_ block: [UInt8], at: Int, length: Int) -> [UInt8] {
        let digits = block[at..<(at + length)].filter { $0 >= 0x30 && $0 <= 0x37 }
        let trimmed = Array(digits.drop { $0 == 0x30 })
        return trimmed.isEmpty ? [0x30] : trimmed
    }
}
