import BackupCrypto
import ByteCoding
import Envelope
import Foundation
import HSMArchive
import ObjectStore
import PayloadCodec

/// Generates the committed seed corpus (`fuzz/corpus/<target>/`): valid samples built with
/// the fixed keys (deterministic where the format allows: the signed suite's signature is not)
/// and from the repository's vectors and samples, plus damaged variants of each.
/// Run by `scripts/fuzz/seeds.sh`; never edited by hand.
public enum FuzzSeeds {
    public static func generate(repoRoot: String) throws -> [FuzzTarget: [String: [UInt8]]] {
        var out: [FuzzTarget: [String: [UInt8]]] = [:]
        func read(_ rel: String) -> [UInt8]? { FileManager.default.contents(atPath: repoRoot + "/" + rel).map { [UInt8]($0) } }
        func files(_ dir: String, suffix: String) -> [(String, [UInt8])] {
            let names = ((try? FileManager.default.contentsOfDirectory(atPath: repoRoot + "/" + dir)) ?? []).filter { $0.hasSuffix(suffix) }.sorted()
            return names.compactMap { n in read(dir + "/" + n).map { (String(n.dropLast(suffix.count)), $0) } }
        }

        // Envelope messages under the fixed keyring.
        var messages: [(String, [UInt8])] = []
        for (name, suite, frame, length, ctx) in [
            ("committing-3frames", AlgorithmSuite.committing, UInt32(16), 40, false),
            ("committing-exact-frames", .committing, 16, 32, true),
            ("committing-empty", .committing, 8, 0, false),
            ("signed-2frames", .committingSigned, 32, 50, true),
        ] as [(String, AlgorithmSuite, UInt32, Int, Bool)] {
            messages.append((name, try message(suite: suite, frameLength: frame, plaintext: (0..<length).map { UInt8($0 & 0xff) }, context: ctx)))
        }
        for (n, b) in files("Tests/EnvelopeTests/Vectors", suffix: ".bin") { messages.append(("vector-" + n, b)) }

        var headers: [String: [UInt8]] = [:]
        var frames: [String: [UInt8]] = [:]
        for (name, m) in messages {
            if let h = try? HeaderReader.read(from: MemorySource(m), policy: .allowLegacyDecrypt) {
                headers[name] = h.bytes
                headers[name + "-truncated"] = Array(h.bytes.dropLast(7))
                var edk0 = h.bytes
                if edk0.count > 40 { edk0[edk0.count / 2] ^= 0xFF }
                headers[name + "-flipped-mid"] = edk0
                headers[name + "-trailing"] = h.bytes + [0]
            }
            frames[name] = [0] + m
            frames[name + "-truncated"] = [0] + m.dropLast(5)
            var flipped = m
            flipped[m.count - 20] ^= 0x01
            frames[name + "-flipped-tail"] = [0] + flipped
            frames[name + "-trailing"] = [0] + m + [0]
        }
        var v3 = headers["committing-3frames"] ?? []
        if !v3.isEmpty { v3[0] = 3; headers["damaged-version-3"] = v3 }
        // Built-message scripts: flags, frame length, mutation count, plaintext length, plaintext, mutations.
        frames["script-unsigned-clean"] = [1, 0, 15, 0, 0, 40] + Array(repeating: 0x61, count: 40)
        frames["script-signed-clean"] = [1, 3, 31, 0, 0, 70] + Array(repeating: 0x62, count: 70)
        frames["script-unsigned-flip"] = [1, 0, 15, 1, 0, 40] + Array(repeating: 0x61, count: 40) + [0x80, 0, 120]
        frames["script-signed-truncate"] = [1, 1, 7, 1, 0, 20] + Array(repeating: 0x63, count: 20) + [0x02, 0, 200]
        out[.envelopeHeader] = headers
        out[.envelopeFrames] = frames

        // Inner blobs: the spec vectors, the sample, and blobs sealed under the fixed keys.
        var inner: [(String, [UInt8])] = files("spec/vectors/inner", suffix: ".blob")
        if let s = read("samples/example-hsm.inner") { inner.append(("sample-example-hsm", s)) }
        let sealed = try sealedBlob()
        inner.append(("fuzz-keys-3chunks", sealed))
        var innerHeaders: [String: [UInt8]] = [:]
        var chunks: [String: [UInt8]] = [:]
        for (name, b) in inner {
            if let h = try? InnerHeader.parse(prefix: b) {
                innerHeaders[name] = h.encoded
                innerHeaders[name + "-with-chunks"] = b
                innerHeaders[name + "-truncated"] = Array(h.encoded.dropLast(1))
                var minor = h.encoded
                minor[9] = 1
                innerHeaders[name + "-minor-1"] = minor
            } else if name.hasPrefix("reject") {
                innerHeaders[name] = Array(b.prefix(400))
            }
            let half = b.count / 2
            if b.count <= 16384 { chunks[name] = [0, UInt8(half >> 8), UInt8(half & 0xff)] + b }
        }
        chunks["script-clean"] = [1, 0, 3, 0, 0, 0, 100, 60, 200] + Array(repeating: 0x41, count: 400)
        chunks["script-flip"] = [1, 1, 2, 1, 0, 50, 100, 60] + Array(repeating: 0x42, count: 400) + [0x40, 1, 44]
        out[.innerHeader] = innerHeaders
        out[.innerChunks] = chunks

        // Payload: vector tars, a tar of the fixed bundle, damaged tars, chunk zstd frames.
        var payload: [String: [UInt8]] = [:]
        var tars = files("spec/vectors/inner", suffix: ".payload.tar")
        let small = try PaxTar.write([TarEntry(path: "manifest.json", contents: Array("{}".utf8)),
                                      TarEntry(path: "keys/a.json", contents: Array("{\"k\":1}".utf8))])
        tars.append(("small", small))
        for (name, t) in tars {
            payload["tar-" + name] = [0] + t
            payload["tar-" + name + "-truncated"] = [0] + t.prefix(700)
            var f = t
            f[124] ^= 0x10  // the first entry's size field
            payload["tar-" + name + "-size-flipped"] = [0] + f
        }
        for (name, plain) in [("tar-small", small), ("text", Array("hello hello hello hello".utf8)), ("empty", [])] as [(String, [UInt8])] {
            let z = try Zstd.compress(plain)
            // Declared size is u16 * 4: pad the plaintext to a multiple of 4 so the seed is valid.
            let padded = plain + [UInt8](repeating: 0, count: (4 - plain.count % 4) % 4)
            let zp = try Zstd.compress(padded)
            let n = padded.count / 4
            payload["zstd-" + name] = [1, UInt8(n >> 8), UInt8(n & 0xff)] + zp
            payload["zstd-" + name + "-undeclared"] = [1, 0, 1] + z
            payload["zstd-" + name + "-truncated"] = [1, UInt8(n >> 8), UInt8(n & 0xff)] + zp.dropLast(3)
            payload["zstd-" + name + "-trailing"] = [1, UInt8(n >> 8), UInt8(n & 0xff)] + zp + [0]
        }
        out[.payload] = payload

        // Store records and catalog.
        var records: [String: [UInt8]] = [:]
        for (name, size, cs) in [("small", UInt64(5000), 4096), ("empty", 0, 4096), ("three-chunks", 3 * 4096 + 1, 4096)] as [(String, UInt64, Int)] {
            let n = ObjectRecord.chunkCount(size: size, chunkSize: cs)
            let r = ObjectRecord(key: "backups/\(name)/archive", size: size, createdMillis: 1_790_000_000_000, chunkSize: cs,
                                 chunkDigests: (0..<n).map { SHA256Hasher.hash([UInt8($0)]) }, objectDigest: SHA256Hasher.hash(Array(name.utf8)))
            let enc = try r.encode()
            records["record-" + name] = [0] + enc
            records["record-" + name + "-fixdigest"] = [1] + enc
            records["file-" + name] = [2] + Array(repeating: 0xAB, count: 9) + (try r.encodeWithFooter())
            var bad = enc
            bad[6] ^= 0x01
            records["record-" + name + "-bad-key-length"] = [1] + bad
        }
        out[.storeRecord] = records

        var snap = CatalogSnapshot()
        snap.writeCount = 3
        for (i, state) in [BackupState.ready, .createInProgress, .pendingDeletion].enumerated() {
            let id = String(format: "%032x", i + 1)
            snap.entries[id] = BackupEntry(backupId: id, clusterId: "cluster-\(i % 2)", hsmId: "hsm-\(i)", manufacturer: "acme", state: state,
                                           createdMillis: 1_790_000_000_000 + UInt64(i), updatedMillis: 1_790_000_000_100,
                                           size: 1000, tags: i == 0 ? ["env": "test"] : [:], objectKey: "backups/\(id)/archive")
        }
        let cat = try snap.encode()
        let emptyCat = try CatalogSnapshot().encode()
        var catalog: [String: [UInt8]] = ["three-entries": [0] + cat, "three-entries-fixdigest": [1] + cat, "empty": [0] + emptyCat]
        var badCat = cat
        badCat[20] ^= 0x04
        catalog["damaged-fixdigest"] = [1] + badCat
        catalog["truncated-fixdigest"] = [1] + cat.prefix(cat.count / 2)
        out[.catalog] = catalog

        // Keystore: files written by a real local KMS.
        let dir = NSTemporaryDirectory() + "fuzz-seeds-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let kms = LocalKMS(directory: dir)
        try kms.createKey("fuzz-key")
        try kms.rotate("fuzz-key")
        try kms.setEnabled("fuzz-key", version: 1, enabled: false)
        var keystore: [String: [UInt8]] = [:]
        if let json = FileManager.default.contents(atPath: dir + "/keys/fuzz-key/key.json") {
            keystore["key-json"] = [0] + [UInt8](json)
            keystore["key-json-truncated"] = [0] + [UInt8](json).prefix(json.count / 2)
        }
        keystore["key-json-minimal"] = [0] + Array(#"{"created":"2026-01-01T00:00:00Z","name":"fuzz-key","versions":[]}"#.utf8)
        keystore["key-json-other-name"] = [0] + Array(#"{"created":"x","name":"other","versions":[{"version":1,"created":"x","enabled":true}]}"#.utf8)
        keystore["key-file"] = [1] + [UInt8](repeating: 0x11, count: 32)
        keystore["key-file-short"] = [1] + [UInt8](repeating: 0x11, count: 31)
        out[.keystore] = keystore
        for (t, seeds) in try catalogObjectSeeds() { out[t] = seeds }
        return out
    }

    /// An unsigned message is deterministic: a fixed data key, and the message ID and EDK IV
    /// derived from everything the message holds, so two different seeds never share a
    /// (data key, message ID) or a (wrapping key, IV) pair (spec/FORMAT.md §3.7).
    static func message(suite: AlgorithmSuite, frameLength: UInt32, plaintext: [UInt8], context: Bool) throws -> [UInt8] {
        var ctx = context ? try EncryptionContext(["purpose": "fuzz-seed", "a": "b"]) : .empty
        let sink = MemorySink()
        if suite.signs {
            let e = try EnvelopeEncryptor(sink: sink, keyrings: [FuzzKeys.envelopeKeyring()], context: ctx, suite: suite, frameLength: frameLength)
            try e.write(plaintext)
            try e.finish()
            return sink.bytes
        }
        ctx = ctx.sorted
        let dataKey = try DataKey(bytes: [UInt8](repeating: 0x24, count: 32))
        var what = ByteWriter()
        what.writeBytes(Array("hsmbackup fuzz seed message".utf8))
        what.writeUInt16(suite.id)
        what.writeUInt32(frameLength)
        what.writeBytes(try ctx.serialized(canonical: true))
        what.writeBytes(plaintext)
        let messageID = SHA256Hasher.hash(what.bytes)
        let iv = Array(SHA256Hasher.hash(Array("edk iv".utf8) + messageID).prefix(12))
        let edk = try FuzzKeys.envelopeKeyring().wrap(dataKey, context: ctx, nonce: try GCMNonce(iv))
        let materials = EncryptionMaterials(suite: suite, dataKey: dataKey, encryptedDataKeys: [edk], context: ctx, signingKey: nil)
        let e = try EnvelopeEncryptor(sink: sink, materials: materials, frameLength: frameLength, messageID: messageID)
        try e.write(plaintext)
        try e.finish()
        return sink.bytes
    }

    /// A small blob under the fixed backup keys, 3 chunks of 256 bytes.
    public static func sealedBlob() throws -> [UInt8] {
        let objects = [PayloadObject(kind: .user, path: "users/u1.json", contents: Array(repeating: 0x55, count: 300)),
                       PayloadObject(kind: .key, path: "keys/k1.json", contents: (0..<700).map { UInt8(($0 * 7) & 0xff) })]
        let metadata = ManufacturerMetadata(manufacturerId: FuzzKeys.manufacturerId, model: "F1", firmwareVersion: "1.0",
                                            serialNumber: "S-1", hsmId: "hsm-fuzz", clusterId: "cluster-fuzz")
        return try InnerBlob.seal(try PayloadBundle(objects: objects), metadata: metadata, backupId: [UInt8](repeating: 7, count: 16),
                                  createdAt: 1_790_000_000, keyring: FuzzKeys.backupKeyring(), ebk: FuzzKeys.ebk(), chunkSize: 256)
    }
}
