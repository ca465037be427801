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

        func sealed(_ contents: HSMContents, seed: UInt64, chunkSize: Int, manufacturer: String = manufacturerId,
                    akbk: [UInt8] = akbkBytes) throws -> (blob: [UInt8], ebk: EphemeralBackupKey, backupId: [UInt8], tar: [UInt8]) {
            let rnd = SeededRandomSource(seed: seed)
            let backupId = rnd.bytes(count: InnerFormat.backupIdByteCount)
            let ebk = try EphemeralBackupKey(secret: rnd.secureBytes(count: 32))
            let ring = BackupKeyring(manufacturerId: manufacturer, mkbk: try ManufacturerBackupKey(bytes: mkbkBytes),
                                     akbk: try OperatorBackupKey(bytes: akbk))
            let bundle = try contents.payloadBundle()
            let blob = try InnerBlob.seal(bundle, metadata: identity(manufacturer).metadata, backupId: backupId, createdAt: createdAt,
                                          keyring: ring, ebk: ebk, chunkSize: chunkSize)
            return (blob, ebk, backupId, try bundle.tarBytes())
        }

        func addValid(_ name: String, _ description: String, _ contents: HSMContents, seed: UInt64, chunkSize: Int) throws -> [UInt8] {
            let (blob, ebk, backupId, tar) = try sealed(contents, seed: seed, chunkSize: chunkSize)
            let header = try InnerHeader.parse(prefix: blob)
            let structure = try InnerStructureChecker.check(blob)
            let pbk = try keyring.pbk()
            let sealKey = try KeyHierarchy.sealKey(ebk: ebk, backupId: backupId)
            let bundle = try contents.payloadBundle()
            files.append(("\(name).blob", blob))
            files.append(("\(name).payload.tar", tar))
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
                createdAt: createdAt,
                chunkSize: chunkSize,
                chunks: structure.chunkCount,
                payloadBytes: tar.count,
                payloadFile: "\(name).payload.tar",
                payloadSha256: Hex.encode(SHA256Hasher.hash(tar)),
                objects: ([PayloadObject(kind: .policy, path: PayloadManifest.path, contents: try bundle.manifest.canonicalBytes())] + bundle.objects).map {
                    ObjectRecord(path: $0.path, kind: $0.path == PayloadManifest.path ? "manifest" : $0.kind.rawValue,
                                 size: $0.contents.count, sha256: Hex.encode(SHA256Hasher.hash($0.contents)))
                })
            vectors.append(Vector(name: name, description: description, file: "\(name).blob", expect: "ok", verifyWith: keys, expected: expected))
            return blob
        }

        func addReject(_ name: String, _ expect: ArchiveError.Code, _ description: String, _ blob: [UInt8]) {
            files.append(("\(name).blob", blob))
            vectors.append(Vector(name: name, description: description, file: "\(name).blob", expect: expect.rawValue,
                                  verifyWith: keys, expected: nil))
        }

        // Valid vectors.
        _ = try addValid("ok-empty", "an HSM with no policies, users or keys: the payload is the manifest alone",
                         .empty, seed: 1, chunkSize: InnerFormat.defaultChunkSize)
        let small = try SimulatedHSM.makeContents(keys: 3, users: 2, seed: 2, options: .deterministic)
        let blob = try addValid("ok-small", "3 keys (AES, EC P-384, generic secret), 2 users, 2 policies; 256-byte chunks",
                                small, seed: 2, chunkSize: 256)
        let intl = try SimulatedHSM.makeContents(keys: 4, users: 3, seed: 3,
                                                 options: PopulateOptions(keyTypes: [.aes, .ec], nonASCIIEvery: 2))
        _ = try addValid("ok-non-ascii", "non-ASCII key labels and user names; one chunk", intl, seed: 3, chunkSize: InnerFormat.defaultChunkSize)

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

        // Blobs an EBK holder could make: well sealed, but with a bad payload.
        // `chunkData`: each chunk's data as given (zstd frames made here), instead of the writer's.
        func crafted(tar: [UInt8], payloadBytes: Int, counts: (Int, Int, Int), seed: UInt64,
                     chunkData: [[UInt8]]? = nil) throws -> [UInt8] {
            let rnd = SeededRandomSource(seed: seed)
            let backupId = rnd.bytes(count: 16)
            let ebk = try EphemeralBackupKey(secret: rnd.secureBytes(count: 32))
            var out: [UInt8] = []
            let writer = try InnerBlobWriter(
                metadata: identity().metadata, backupId: backupId, createdAt: createdAt,
                payload: PayloadDescriptor(chunkSize: 256, payloadBytes: UInt64(payloadBytes), userCount: UInt32(counts.1),
                                           keyCount: UInt32(counts.2), policyCount: UInt32(counts.0)),
                pbk: try keyring.pbk(), ebk: ebk, sink: { out.append(contentsOf: $0) })
            if let chunkData {
                for d in chunkData { try writer.writeChunkData(d) }
            } else {
                try writer.write(tar)
            }
            try writer.finish()
            return out
        }
        let smallTar = try small.payloadBundle().tarBytes()
        func pieces(_ tar: [UInt8], declared: Int) throws -> [[UInt8]] {
            let n = (declared + 255) / 256
            return try (0..<n).map { i in
                try Zstd.compress(Array(tar[(i * 256)..<(i == n - 1 ? tar.count : (i + 1) * 256)]))
            }
        }
        addReject("reject-payload-size", .payloadMalformed,
                  "the header declares 512 bytes less than the payload: the last chunk's frame holds more than its share",
                  try crafted(tar: smallTar, payloadBytes: smallTar.count - 512, counts: (2, 2, 3), seed: 90,
                              chunkData: try pieces(smallTar, declared: smallTar.count - 512)))
        var trailing = try pieces(smallTar, declared: smallTar.count)
        trailing[1] += [0]
        addReject("reject-chunk-data-trailing-byte", .payloadMalformed, "chunk 1's data is its zstd frame and one more byte",
                  try crafted(tar: smallTar, payloadBytes: smallTar.count, counts: (2, 2, 3), seed: 93, chunkData: trailing))
        addReject("reject-object-counts", .objectCountMismatch, "the header declares 4 keys, the payload holds 3",
                  try crafted(tar: smallTar, payloadBytes: smallTar.count, counts: (2, 2, 4), seed: 91))
        var entries = try PaxTar.read(smallTar)
        var lastKey = entries.removeLast()
        lastKey = TarEntry(path: lastKey.path, contents: lastKey.contents + Array(" ".utf8))
        entries.append(lastKey)
        let tampered = try PaxTar.write(entries)
        addReject("reject-object-digest", .objectDigestMismatch, "a key object changed after the manifest was made",
                  try crafted(tar: tampered, payloadBytes: tampered.count, counts: (2, 2, 3), seed: 92))

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
