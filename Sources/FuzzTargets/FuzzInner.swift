import BackupCrypto
import ByteCoding
import HSMArchive

enum FuzzInner {
    /// Serializes a parsed header's fields again, independently of the parser (spec/FORMAT.md
    /// §4.3 field order), for the canonicity check.
    static func serialize(_ h: InnerHeader) throws -> [UInt8] {
        var body = ByteWriter()
        for s in [h.metadata.manufacturerId, h.metadata.model, h.metadata.firmwareVersion, h.metadata.serialNumber,
                  h.metadata.hsmId, h.metadata.clusterId] {
            try body.writeString16(s, "metadata")
        }
        body.writeBytes(h.backupId)
        body.writeUInt64(h.createdAt)
        body.writeUInt8(h.pbkKDF)
        body.writeBytes(h.pbkFingerprint)
        body.writeUInt8(h.ebkWrapAlgorithm)
        body.writeBytes(h.wrappedEBK)
        body.writeUInt8(h.payload.cipher)
        body.writeUInt8(h.payload.compression)
        body.writeUInt8(h.payload.format)
        body.writeUInt32(h.payload.chunkSize)
        body.writeUInt64(h.payload.payloadBytes)
        body.writeUInt32(h.payload.userCount)
        body.writeUInt32(h.payload.keyCount)
        body.writeUInt32(h.payload.policyCount)
        var w = ByteWriter()
        w.writeBytes(InnerFormat.magic)
        w.writeUInt8(h.versionMajor)
        w.writeUInt8(h.versionMinor)
        w.writeUInt32(UInt32(body.count))
        w.writeBytes(body.bytes)
        w.writeBytes(h.seal)
        return w.bytes
    }

    /// The inner header: a header that parses is the input's prefix, re-serializes to exactly
    /// its bytes (minor version 0: no appended fields), and `headerLength` agrees.
    static func header(_ data: [UInt8]) {
        do {
            let h = try InnerHeader.parse(prefix: data)
            check(h.encoded == Array(data.prefix(h.byteCount)), "inner header bytes are not the input's prefix")
            check(try InnerHeader.headerLength(prefix: data[...]) == h.byteCount, "headerLength disagrees with parse")
            if h.versionMinor == 0 {
                check(try serialize(h) == h.encoded, "inner header does not re-serialize to its bytes")
            }
            _ = h.summary
            // Parsing the exact header bytes gives the same header.
            check(try InnerHeader.parse(prefix: h.encoded) == h, "re-parsing the header bytes differs")
        } catch { expectTyped(error, "InnerHeader.parse") }
    }

    /// Chunk framing and binding. Input byte 0 selects the mode:
    /// - even: the rest is an inner blob, checked without keys (whole, and fed in two pieces at
    ///   a point from byte 1: both must agree) and opened with the fixed backup keys;
    /// - odd: a blob is sealed from the input (objects, chunk size) under the fixed keys, then
    ///   altered by a mutation script: an unaltered blob must open to its bundle, an altered
    ///   one must never open.
    static func chunks(_ data: [UInt8]) {
        guard let mode = data.first else { return }
        if mode & 1 == 0 {
            var input = FuzzInput(Array(data.dropFirst()))
            let split = input.u16()
            blob(input.rest(), split: split, expected: nil, altered: false)
            return
        }
        var input = FuzzInput(Array(data.dropFirst()))
        let chunkSize = InnerFormat.minimumChunkSize + Int(input.byte() % 4) * 64
        let objectCount = Int(input.byte() % 4)
        let mutations = Int(input.byte() % 4)
        let split = input.u16()
        var objects: [PayloadObject] = []
        let kinds: [ObjectKind] = [.policy, .user, .key]
        for i in 0..<objectCount {
            let kind = kinds[min(i, 2)]
            let n = Int(input.byte()) * 4
            var contents = input.take(n)
            if contents.count < n { contents += [UInt8](repeating: UInt8(i), count: n - contents.count) }
            objects.append(PayloadObject(kind: kind, path: "\(kind.directory)o\(i).json", contents: contents))
        }
        let bundle: PayloadBundle
        let sealed: [UInt8]
        do {
            bundle = try PayloadBundle(objects: objects)
            let metadata = ManufacturerMetadata(manufacturerId: FuzzKeys.manufacturerId, model: "F1", firmwareVersion: "1.0",
                                                serialNumber: "S-1", hsmId: "hsm-fuzz", clusterId: "cluster-fuzz")
            sealed = try InnerBlob.seal(bundle, metadata: metadata, backupId: [UInt8](repeating: 7, count: 16), createdAt: 1_790_000_000,
                                        keyring: FuzzKeys.backupKeyring(), ebk: FuzzKeys.ebk(), chunkSize: chunkSize)
        } catch { finding("sealing a blob for the chunk target: \(error)") }
        let altered = mutate(sealed, script: &input, count: mutations)
        blob(altered, split: split, expected: altered == sealed ? bundle : nil, altered: altered != sealed)
    }

    static func blob(_ bytes: [UInt8], split: Int, expected: PayloadBundle?, altered: Bool) {
        // Keyless structure: whole and in two pieces.
        var whole: Result<InnerStructureSummary, ArchiveError>
        do { whole = .success(try InnerStructureChecker.check(bytes)) } catch {
            expectTyped(error, "InnerStructureChecker")
            guard let e = error as? ArchiveError else { finding("InnerStructureChecker threw \(type(of: error))") }
            whole = .failure(e)
        }
        let cut = bytes.isEmpty ? 0 : split % (bytes.count + 1)
        var pieces = InnerStructureChecker()
        var piecewise: Result<InnerStructureSummary, ArchiveError>
        do {
            try pieces.feed(Array(bytes[..<cut]))
            try pieces.feed(Array(bytes[cut...]))
            piecewise = .success(try pieces.finish())
        } catch {
            guard let e = error as? ArchiveError else { finding("InnerStructureChecker threw \(type(of: error))") }
            piecewise = .failure(e)
        }
        switch (whole, piecewise) {
        case (.success(let a), .success(let b)):
            check(a.chunkCount == b.chunkCount && a.totalBytes == b.totalBytes && a.header == b.header,
                  "structure check differs whole vs in pieces")
            check(a.totalBytes == bytes.count, "structure check accepted \(a.totalBytes) of \(bytes.count) bytes")
        case (.failure(let a), .failure(let b)):
            check(a.code == b.code, "structure check fails differently whole (\(a.code)) vs in pieces (\(b.code))")
        default:
            finding("structure check whole \(whole) vs in pieces \(piecewise)")
        }

        // Fully keyed, fed in the same two pieces.
        var tar: [UInt8] = []
        let opener = InnerBlobOpener(keyring: FuzzKeys.backupKeyring()) { tar.append(contentsOf: $0) }
        do {
            try opener.feed(Array(bytes[..<cut]))
            try opener.feed(Array(bytes[cut...]))
            try opener.finish()
            check(UInt64(tar.count) == opener.header!.payload.payloadBytes, "an opened blob released \(tar.count) payload bytes")
            let bundle = try PayloadBundle.parse(tar: tar, descriptor: opener.header!.payload)
            guard case .success = whole else { finding("a blob opens but fails its structure check") }
            if altered { finding("an altered blob still opens") }
            if let expected { check(bundle == expected, "an unaltered blob opens to another bundle") }
        } catch {
            expectTyped(error, "InnerBlobOpener")
            if expected != nil { finding("an unaltered blob does not open: \(error)") }
        }
    }
}
