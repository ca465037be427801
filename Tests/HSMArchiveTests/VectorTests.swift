import BackupCrypto
import ByteCoding
import Foundation
import HSMArchive
import PayloadCodec
import SimulatedHSM
import XCTest

/// spec/vectors/inner and samples/: every vector gives its labelled outcome, every intermediate
/// value of the valid ones matches, and the committed files are exactly what `make samples`
/// produces now.
final class VectorTests: XCTestCase {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    static let vectorsDir = root + "/spec/vectors/inner"
    static let samplesDir = root + "/samples"

    func read(_ path: String) throws -> [UInt8] { Array(try Data(contentsOf: URL(fileURLWithPath: path))) }

    func loadVectors() throws -> SpecVectors.VectorFile {
        try JSONDecoder().decode(SpecVectors.VectorFile.self, from: Data(read(Self.vectorsDir + "/" + SpecVectors.vectorsFileName)))
    }

    func testCommittedVectorsAndSamplesAreCurrent() throws {
        let tmp = NSTemporaryDirectory() + "vectors-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: tmp) }
        try SpecVectors.generate(vectorsDirectory: tmp + "/inner", samplesDirectory: tmp + "/samples")
        for (fresh, committed) in [(tmp + "/inner", Self.vectorsDir), (tmp + "/samples", Self.samplesDir)] {
            let names = try FileManager.default.contentsOfDirectory(atPath: fresh).sorted()
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: committed).sorted(), names,
                           "\(committed) holds exactly the generated files (run `make samples`)")
            for n in names {
                XCTAssertEqual(try read(fresh + "/" + n), try read(committed + "/" + n), "\(committed)/\(n) is stale: run `make samples`")
            }
        }
    }

    func testEveryVectorGivesItsLabelledOutcome() throws {
        let file = try loadVectors()
        XCTAssertGreaterThanOrEqual(file.vectors.filter { $0.expect == "ok" }.count, 3)
        XCTAssertGreaterThanOrEqual(file.vectors.filter { $0.expect != "ok" }.count, 20)
        for v in file.vectors {
            let blob = try read(Self.vectorsDir + "/" + v.file)
            let keyring = try v.verifyWith.keyring()
            if v.expect == "ok" {
                let (header, bundle) = try InnerBlob.open(blob, keyring: keyring)
                let e = try XCTUnwrap(v.expected)
                // The payload exactly as the chunks carry it (a tar of another writer's
                // conventions is not what this writer would re-encode).
                var payload: [UInt8] = []
                let opener = InnerBlobOpener(keyring: keyring) { payload.append(contentsOf: $0) }
                try opener.feed(blob)
                try opener.finish()
                XCTAssertEqual(payload, try read(Self.vectorsDir + "/" + e.payloadFile), v.name)
                XCTAssertEqual(Hex.encode(SHA256Hasher.hash(payload)), e.payloadSha256, v.name)
                XCTAssertEqual(e.innerVersion, "\(header.versionMajor).\(header.versionMinor)", v.name)
                XCTAssertEqual(Hex.encode(try KeyHierarchy.sealKey(ebk: try header.unwrapEBK(pbk: try keyring.pbk()),
                                                                   backupId: header.backupId).secret.unsafeCopy()), e.sealKey, v.name)
                try checkChunks(blob, e, header: header, payload: payload, name: v.name)
                let pbk = try keyring.pbk()
                XCTAssertEqual(Hex.encode(pbk.secret.unsafeCopy()), e.pbk, v.name)
                XCTAssertEqual(Hex.encode(try KeyHierarchy.fingerprint(of: pbk, manufacturerId: keyring.manufacturerId)), e.pbkFingerprint, v.name)
                XCTAssertEqual(Hex.encode(try header.unwrapEBK(pbk: pbk).secret.unsafeCopy()), e.ebk, v.name)
                XCTAssertEqual(Hex.encode(header.digest), e.headerDigest, v.name)
                XCTAssertEqual(Hex.encode(header.backupId), e.backupId, v.name)
                XCTAssertEqual(bundle.objects.count + 1, e.objects.count, v.name)
                XCTAssertEqual(bundle.objects.map(\.path), e.objects.dropFirst().map(\.path), v.name)
                XCTAssertEqual(try InnerStructureChecker.check(blob).chunkCount, e.chunks, v.name)
            } else {
                assertCode([v.expect], v.name) { try InnerBlob.open(blob, keyring: keyring) }
            }
        }
    }

    /// Each chunk's record: its frame, its binding, its zstd frame and its piece of the payload.
    func checkChunks(_ blob: [UInt8], _ e: SpecVectors.Expected, header: InnerHeader, payload: [UInt8], name: String) throws {
        var frames: [ChunkFrame] = []
        var parser = InnerFrameParser()
        try parser.feed(blob, onHeader: { _ in }, onFrame: { frames.append($0) })
        XCTAssertEqual(frames.count, e.chunkList.count, name)
        let ebk = try header.unwrapEBK(pbk: try SpecVectors.KeySet(manufacturerId: SpecVectors.manufacturerId, mkbk: Hex.encode(SpecVectors.mkbkBytes),
                                                                  akbk: Hex.encode(SpecVectors.akbkBytes)).keyring().pbk())
        var at = 0
        for (f, c) in zip(frames, e.chunkList) {
            let plain = try AESKeyWrapLanes.unwrapPadded([f.ciphertext], key: ebk)[0].get().unsafeCopy()
            let data = Array(plain[37...])
            XCTAssertEqual([c.index, c.type, c.offset, c.ciphertextBytes], [f.index, f.isFinal ? 2 : 1, f.offset, f.ciphertext.count], name)
            XCTAssertEqual(c.binding, Hex.encode(header.digest + [0, 0, UInt8(f.index >> 8), UInt8(f.index & 0xff), f.isFinal ? 1 : 0]), name)
            XCTAssertEqual(Hex.encode(plain.prefix(37)), c.binding, name)
            XCTAssertEqual([c.dataBytes, c.pieceBytes], [data.count, header.payload.pieceBytes(chunk: f.index)], name)
            XCTAssertEqual(Hex.encode(SHA256Hasher.hash(data)), c.dataSha256, name)
            XCTAssertEqual(Hex.encode(SHA256Hasher.hash(Array(payload[at..<(at + c.pieceBytes)]))), c.pieceSha256, name)
            XCTAssertEqual(try Zstd.decompress(data, exactSize: c.pieceBytes), Array(payload[at..<(at + c.pieceBytes)]), name)
            at += c.pieceBytes
        }
        XCTAssertEqual(at, payload.count, name)
    }

    func testVectorsCoverTheRulesOfSection4() throws {
        let file = try loadVectors()
        let ok = file.vectors.filter { $0.expect == "ok" }
        // Several chunks with a short final one; a pax extended header; a later minor version.
        XCTAssertTrue(ok.contains { v in
            guard let e = v.expected, let lastChunk = e.chunkList.last else { return false }
            return e.chunkList.count > 2 && lastChunk.pieceBytes < e.chunkSize
        })
        XCTAssertTrue(try ok.contains { v in
            let tar = try read(Self.vectorsDir + "/" + v.expected!.payloadFile)
            return stride(from: 0, to: tar.count - 512, by: 512).contains { tar[$0 + 156] == UInt8(ascii: "x") && tar[$0 + 257] == UInt8(ascii: "u") }
        })
        XCTAssertTrue(ok.contains { $0.expected?.innerVersion == "2.1" })
        let codes = Set(file.vectors.map(\.expect))
        for c in ArchiveError.Code.allCases where c != .invalidArgument && c != .writerFailed {
            XCTAssertTrue(codes.contains(c.rawValue), "no vector expects \(c.rawValue)")
        }
    }

    func testSampleOpensWithItsPublishedKeys() throws {
        let blob = try read(Self.samplesDir + "/example-hsm.inner")
        let (_, bundle) = try InnerBlob.open(blob, keyring: try SpecVectors.KeySet(
            manufacturerId: SpecVectors.manufacturerId, mkbk: Hex.encode(SpecVectors.mkbkBytes), akbk: Hex.encode(SpecVectors.akbkBytes)).keyring())
        XCTAssertEqual(try bundle.tarBytes(), try read(Self.samplesDir + "/example-hsm.payload.tar"))
        // And restores onto an HSM of that manufacturer and operator.
        let hsm = try SimulatedHSM.create(at: Fixture.tempDir(), identity: HSMIdentity(manufacturerId: SpecVectors.manufacturerId, model: "EX-1000",
                                                                                   serialNumber: "2", hsmId: "h2", clusterId: "c"),
                                          mkbk: try ManufacturerBackupKey(bytes: SpecVectors.mkbkBytes),
                                          akbk: try OperatorBackupKey(bytes: SpecVectors.akbkBytes))
        let s = try hsm.restore(blob, dryRun: false)
        XCTAssertEqual(s.keys, 6)
        let contents = try JSONDecoder().decode(HSMContents.self, from: Data(read(Self.samplesDir + "/example-hsm.contents.json")))
        XCTAssertEqual(try hsm.contents, contents)
    }
}

extension VectorTests {
    /// spec §4.6 and §6: with the key, each frame is framed, unwrapped, bound and decoded before
    /// the next is looked at, and the earliest failing frame names the error; a keyless check
    /// (levels structure and envelope) checks framing alone and may stop at a later frame. So one
    /// blob can give two codes, by level. `reject-chunk-duplicated` (chunk 0 twice): with the key,
    /// frame 1 is well framed but bound to index 0 (`chunkBindingMismatch`, chunk 1); without,
    /// the frame count follows from the sizes and frame n − 1 should be final but is not
    /// (`malformedFrame`, chunk n − 1).
    func testTheCodeOfADuplicatedChunkDependsOnTheLevel() throws {
        let file = try loadVectors()
        let v = try XCTUnwrap(file.vectors.first { $0.name == "reject-chunk-duplicated" })
        let blob = try read(Self.vectorsDir + "/" + v.file)
        do {
            _ = try InnerBlob.open(blob, keyring: try v.verifyWith.keyring())
            XCTFail("opened")
        } catch let e as ArchiveError {
            XCTAssertEqual(e.code, .chunkBindingMismatch)
            XCTAssertEqual(e.chunk, 1)
        }
        do {
            _ = try InnerStructureChecker.check(blob)
            XCTFail("passed the keyless check")
        } catch let e as ArchiveError {
            XCTAssertEqual(e.code, .malformedFrame)
            let n = try InnerStructureChecker.check(try read(Self.vectorsDir + "/ok-small.blob")).chunkCount
            XCTAssertGreaterThan(n, 2)
            XCTAssertEqual(e.chunk, n - 1)
        }
    }
}
