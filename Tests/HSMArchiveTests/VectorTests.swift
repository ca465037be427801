import BackupCrypto
import ByteCoding
import Foundation
import HSMArchive
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
                let pbk = try keyring.pbk()
                XCTAssertEqual(Hex.encode(pbk.secret.unsafeCopy()), e.pbk, v.name)
                XCTAssertEqual(Hex.encode(try KeyHierarchy.fingerprint(of: pbk, manufacturerId: keyring.manufacturerId)), e.pbkFingerprint, v.name)
                XCTAssertEqual(Hex.encode(try header.unwrapEBK(pbk: pbk).secret.unsafeCopy()), e.ebk, v.name)
                XCTAssertEqual(Hex.encode(header.digest), e.headerDigest, v.name)
                XCTAssertEqual(Hex.encode(header.backupId), e.backupId, v.name)
                let tar = try bundle.tarBytes()
                XCTAssertEqual(tar, try read(Self.vectorsDir + "/" + e.payloadFile), v.name)
                XCTAssertEqual(Hex.encode(SHA256Hasher.hash(tar)), e.payloadSha256, v.name)
                XCTAssertEqual(bundle.objects.count + 1, e.objects.count, v.name)
                XCTAssertEqual(try InnerStructureChecker.check(blob).chunkCount, e.chunks, v.name)
            } else {
                assertCode([v.expect], v.name) { try InnerBlob.open(blob, keyring: keyring) }
            }
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
