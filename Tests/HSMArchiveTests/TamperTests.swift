import BackupCrypto
import ByteCoding
import Foundation
import HSMArchive
import SimulatedHSM
import XCTest

/// Every refusal the format promises, each with its specific code, and the target HSM's state
/// directory byte-identical afterwards.
final class TamperTests: XCTestCase {
    var source: SimulatedHSM!
    var target: SimulatedHSM!
    var blob: [UInt8] = []
    var before: [String: [UInt8]] = [:]

    override func setUpWithError() throws {
        source = try Fixture.makeHSM(1)
        try source.populate(keys: 2, users: 1, seed: 11, options: .deterministic)
        blob = try source.backup(chunkSize: 256)
        target = try Fixture.makeHSM(2)
        try target.populate(keys: 1, users: 1, seed: 12, options: .deterministic)
        before = Fixture.snapshot(target.directory)
    }

    func assertRefused(_ bytes: [UInt8], _ codes: Set<String>, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        assertCode(codes, what, file: file, line: line) { try target.restore(bytes, dryRun: false) }
        XCTAssertEqual(Fixture.snapshot(target.directory), before, "state changed after: \(what)", file: file, line: line)
    }

    func frames(_ b: [UInt8]) throws -> (header: Int, frames: [ChunkFrame]) {
        var p = InnerFrameParser()
        var out: [ChunkFrame] = []
        try p.feed(b, onHeader: { _ in }, onFrame: { out.append($0) })
        try p.finish()
        return (p.header!.byteCount, out)
    }

    func frameBytes(_ f: ChunkFrame) -> [UInt8] { Array(blob[f.offset..<(f.offset + 5 + f.ciphertext.count)]) }

    func testBlobHasSeveralChunks() throws {
        XCTAssertGreaterThanOrEqual(try frames(blob).frames.count, 3)
        let s = try InnerStructureChecker.check(blob)
        XCTAssertEqual(s.totalBytes, blob.count)
    }

    func testWrongManufacturerIsRefusedFirst() throws {
        let other = try Fixture.makeHSM(3, manufacturer: "other-corp", akbk: Fixture.akbk)
        let b = Fixture.snapshot(other.directory)
        // Even with a wrong operator key and a broken seal, the manufacturer is checked first.
        var damaged = blob
        damaged[damaged.count - 1] ^= 0xFF
        assertCode(["wrongManufacturer"]) { try other.restore(damaged, dryRun: false) }
        assertCode(["wrongManufacturer"]) { try other.restore(blob, dryRun: true) }
        XCTAssertEqual(Fixture.snapshot(other.directory), b)
    }

    func testWrongOperatorKeyIsAFingerprintMismatch() throws {
        let other = try Fixture.makeHSM(4, akbk: Fixture.otherAKBK)
        let b = Fixture.snapshot(other.directory)
        assertCode(["pbkMismatch"]) { try other.restore(blob, dryRun: false) }
        XCTAssertEqual(Fixture.snapshot(other.directory), b)
        // Same manufacturer name, another MKBK generation: also a fingerprint mismatch.
        let gen2 = try Fixture.makeHSM(5, mkbk: try ManufacturerBackupKey(bytes: [UInt8](repeating: 0x44, count: 32)))
        assertCode(["pbkMismatch"]) { try gen2.restore(blob, dryRun: false) }
    }

    func testUnknownMajorVersionIsRefusedBeforeAnyCrypto() throws {
        // 1 is the pre-release single-frame format; 3 a future one.
        for major: UInt8 in [1, 3] {
            var b = blob
            b[8] = major
            assertRefused(b, ["unsupportedVersion"], "major \(major)")
            // Also on an HSM of another manufacturer and operator: the version comes first.
            let other = try Fixture.makeHSM(6, manufacturer: "other-corp", akbk: Fixture.otherAKBK)
            assertCode(["unsupportedVersion"]) { try other.restore(b, dryRun: true) }
            assertCode(["unsupportedVersion"]) { try InnerStructureChecker.check(b) }
        }
    }

    func testEveryTruncationIsRefused() throws {
        for n in 0..<blob.count {
            let prefix = Array(blob.prefix(n))
            assertRefused(prefix, ["truncated", "missingFinalChunk"], "prefix \(n)")
            assertCode(["truncated", "missingFinalChunk"], "structure, prefix \(n)") { try InnerStructureChecker.check(prefix) }
        }
    }

    func testChunkReorderDropDuplicateSpliceAndTrailingData() throws {
        let (headerLength, fs) = try frames(blob)
        let header = Array(blob.prefix(headerLength))
        let f = fs.map(frameBytes)
        XCTAssertGreaterThanOrEqual(f.count, 3)
        let rest = f[2...].flatMap { $0 }
        assertRefused(header + f[1] + f[0] + rest, ["chunkBindingMismatch"], "swap 0 and 1")
        assertRefused(header + f[1] + rest, ["chunkBindingMismatch"], "drop chunk 0")
        assertRefused(header + f[0] + f[0] + f[1] + rest, ["chunkBindingMismatch"], "duplicate chunk 0")
        assertRefused(header + f.dropLast().flatMap { $0 }, ["missingFinalChunk"], "drop the final chunk")
        assertRefused(blob + [0], ["dataAfterFinalChunk"], "a byte after the final chunk")
        assertRefused(blob + f.last!, ["dataAfterFinalChunk"], "the final chunk twice")
        // Flag chunk 0 final: same length rules, but the binding says otherwise.
        var flagged = blob
        flagged[fs[0].offset] = ChunkFormat.typeFinal
        assertRefused(flagged, ["malformedFrame"], "chunk 0 flagged final")
        // A chunk from another backup of the same HSM and contents (another EBK).
        let other = try source.backup(chunkSize: 256)
        let (oh, ofs) = try frames(other)
        XCTAssertEqual(oh, headerLength)
        let foreign = Array(other[ofs[1].offset..<(ofs[1].offset + 5 + ofs[1].ciphertext.count)])
        assertRefused(header + f[0] + foreign + rest, ["chunkAuthenticationFailed"], "spliced chunk 1")
        // The other backup's header with this backup's chunks.
        assertRefused(Array(other.prefix(oh)) + f.flatMap { $0 }, ["chunkAuthenticationFailed"], "spliced header")
    }

    /// The header's fields with the codes a change to each must produce.
    func fieldMap() throws -> [(name: String, range: Range<Int>, codes: Set<String>)] {
        var out: [(String, Range<Int>, Set<String>)] = []
        let structural: Set<String> = ["truncated", "malformedHeader", "limitExceeded"]
        out.append(("magic", 0..<8, ["badMagic"]))
        out.append(("major version", 8..<9, ["unsupportedVersion"]))
        out.append(("minor version", 9..<10, ["headerSealMismatch"]))
        out.append(("body length", 10..<14, structural))
        var r = ByteReader(blob, baseOffset: 0)
        _ = try r.readBytes(14, "prelude")
        for (i, name) in ["manufacturer id", "model", "firmware", "serial", "hsm id", "cluster id"].enumerated() {
            let at = r.offset
            let s = try r.readLengthPrefixed16(name)
            out.append(("\(name) length", at..<(at + 2), structural.union(i == 0 ? ["wrongManufacturer"] : [])))
            if !s.isEmpty {
                out.append((name, (at + 2)..<r.offset, i == 0 ? ["wrongManufacturer", "malformedHeader"] : ["headerSealMismatch", "malformedHeader"]))
            }
        }
        func field(_ name: String, _ n: Int, _ codes: Set<String>) throws {
            let at = r.offset
            _ = try r.readBytes(n, name)
            out.append((name, at..<(at + n), codes))
        }
        try field("backup id", 16, ["headerSealMismatch"])
        // A flip that puts the time after 9999-12-31T23:59:59Z is refused before the seal.
        try field("created at", 8, ["headerSealMismatch", "malformedHeader"])
        try field("PBK KDF", 1, ["malformedHeader"])
        try field("PBK fingerprint", 32, ["pbkMismatch"])
        try field("EBK wrap algorithm", 1, ["malformedHeader"])
        try field("wrapped EBK", 40, ["ebkUnwrapFailed"])
        try field("payload algorithms", 3, ["malformedHeader"])
        try field("chunk size", 4, ["limitExceeded", "headerSealMismatch"])
        try field("payload size", 8, ["limitExceeded", "headerSealMismatch"])
        try field("object counts", 12, ["limitExceeded", "headerSealMismatch"])
        try field("header seal", 32, ["headerSealMismatch"])
        let (headerLength, fs) = try frames(blob)
        XCTAssertEqual(r.offset, headerLength, "the field map covers the whole header")
        for f in fs {
            out.append(("chunk \(f.index) type", f.offset..<(f.offset + 1), ["malformedFrame", "chunkBindingMismatch"]))
            out.append(("chunk \(f.index) length", (f.offset + 1)..<(f.offset + 5), 
                        // A length may change to another allowed length (chunk data varies in size): the KWP check catches it.
                        ["malformedFrame", "truncated", "chunkAuthenticationFailed"]))
            out.append(("chunk \(f.index) ciphertext", (f.offset + 5)..<(f.offset + 5 + f.ciphertext.count), ["chunkAuthenticationFailed"]))
        }
        XCTAssertEqual(out.last!.1.upperBound, blob.count, "the field map covers the whole blob")
        return out
    }

    func testFlippedByteInEveryFieldIsRefusedWithItsCode() throws {
        var covered = 0
        for (name, range, codes) in try fieldMap() {
            for i in range {
                for x: UInt8 in [0xFF, 0x01, 0x80] {
                    var b = blob
                    b[i] ^= x
                    assertRefused(b, codes, "\(name) byte \(i) ^ 0x\(String(x, radix: 16))")
                }
                covered += 1
            }
        }
        XCTAssertEqual(covered, blob.count)
    }

    func testStructureCheckNeedsNoKeysAndCatchesFraming() throws {
        let s = try InnerStructureChecker.check(blob)
        XCTAssertEqual(s.header.metadata.hsmId, "hsm-1")
        var b = blob
        b[s.header.byteCount] = 0x07
        assertCode(["malformedFrame"]) { try InnerStructureChecker.check(b) }
        assertCode(["dataAfterFinalChunk"]) { try InnerStructureChecker.check(blob + [1, 2]) }
        var m = blob
        m[0] ^= 0xFF
        assertCode(["badMagic"]) { try InnerStructureChecker.check(m) }
    }

    func testHeaderReencodesToTheSameBytes() throws {
        let h = try InnerHeader.parse(prefix: blob)
        let ebkFree = try InnerHeader.parse(prefix: h.encoded)
        XCTAssertEqual(ebkFree.encoded, Array(blob.prefix(h.byteCount)))
        XCTAssertEqual(ebkFree, h)
    }
}

/// Random multi-byte damage, insertions and deletions: always a typed error, never a crash,
/// never a change to the HSM.
final class RandomDamageTests: XCTestCase {
    func testRandomDamageIsAlwaysATypedRefusal() throws {
        let source = try Fixture.makeHSM(1)
        try source.populate(keys: 3, users: 2, seed: 31, options: .deterministic)
        let blob = try source.backup(chunkSize: 256)
        let target = try Fixture.makeHSM(2)
        let before = Fixture.snapshot(target.directory)
        var rng = SystemRandomNumberGenerator()
        let codes = Set(ArchiveError.Code.allCases.map(\.rawValue))
        for round in 0..<400 {
            var b = blob
            switch round % 3 {
            case 0:
                for _ in 0..<Int.random(in: 1...4, using: &rng) {
                    let i = Int.random(in: 0..<b.count, using: &rng)
                    b[i] ^= UInt8.random(in: 1...255, using: &rng)
                }
            case 1:
                b.insert(UInt8.random(in: 0...255, using: &rng), at: Int.random(in: 0...b.count, using: &rng))
            default:
                b.remove(at: Int.random(in: 0..<b.count, using: &rng))
            }
            assertCode(codes, "round \(round)") { try target.restore(b, dryRun: false) }
            do { _ = try InnerStructureChecker.check(b) } catch {
                XCTAssertTrue(error is ArchiveError, "structure check threw \(error)")
            }
        }
        for _ in 0..<100 {
            let garbage = (0..<Int.random(in: 0...600, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            assertCode(codes) { try InnerStructureChecker.check(InnerFormat.magic + [1, 0] + garbage) }
        }
        XCTAssertEqual(Fixture.snapshot(target.directory), before)
    }
}
