import BackupCrypto
import Foundation
@_spi(Testing) import HSMArchive
import PayloadCodec
import SimulatedHSM
import XCTest

/// A payload that authenticates perfectly is still hostile input: a blob sealed with the right
/// EBK under the right PBK (what a compromised writer with the HSM's keys could make) but whose
/// tar or compression breaks the rules must be refused by the restoring HSM, which stays
/// untouched.
final class HostilePayloadTests: XCTestCase {
    private var dir = ""
    private let mkbk = try! ManufacturerBackupKey.random()
    private let akbk = try! OperatorBackupKey.random()

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("hostile-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    private func makeHSM() throws -> SimulatedHSM {
        let hsm = try SimulatedHSM.create(at: dir + "/hsm-\(UUID().uuidString)",
                                          identity: HSMIdentity(manufacturerId: "acme", model: "M", serialNumber: "1",
                                                                hsmId: "hsm-1", clusterId: "c"),
                                          mkbk: mkbk, akbk: akbk)
        try hsm.populate(keys: 2, users: 1, seed: 5, options: PopulateOptions(keyTypes: [.aes]))
        return hsm
    }

    /// Seals arbitrary chunk data (a zstd frame, or anything) exactly as an HSM would.
    private func seal(compressed: [UInt8], declaredBytes: UInt64, counts: (UInt32, UInt32, UInt32) = (1, 2, 2)) throws -> [UInt8] {
        let pbk = try KeyHierarchy.derivePBK(mkbk: mkbk, akbk: akbk, manufacturerId: "acme")
        var blob: [UInt8] = []
        let writer = try InnerBlobWriter(metadata: ManufacturerMetadata(manufacturerId: "acme", model: "M", firmwareVersion: "1.0.0",
                                                                        serialNumber: "9", hsmId: "hsm-9", clusterId: "c"),
                                         backupId: SecureRandom.bytes(count: 16), createdAt: 1_800_000_000,
                                         payload: PayloadDescriptor(payloadBytes: declaredBytes, userCount: counts.0,
                                                                    keyCount: counts.1, policyCount: counts.2),
                                         pbk: pbk, ebk: try EphemeralBackupKey.random(), sink: { blob += $0 })
        // One chunk of the given data (at the default chunk size the tars here fit in one); with
        // a declared size of several chunks only the header and the first chunk are made.
        try writer.writeChunkData(compressed)
        if writer.header.payload.chunkCount == 1 { try writer.finish() }
        return blob
    }

    private func assertRefused(_ tar: [UInt8], declared: UInt64? = nil, expect codes: Set<ArchiveError.Code>,
                               file: StaticString = #filePath, line: UInt = #line) throws {
        let hsm = try makeHSM()
        let before = try snapshot(hsm.directory)
        let blob = try seal(compressed: try Zstd.compress(tar), declaredBytes: declared ?? UInt64(tar.count))
        XCTAssertThrowsError(try hsm.restore(blob, dryRun: false), file: file, line: line) { e in
            let code = (e as? ArchiveError)?.code
            XCTAssertTrue(code.map(codes.contains) ?? false, "got \(e)", file: file, line: line)
        }
        XCTAssertEqual(try snapshot(hsm.directory), before, "the HSM changed", file: file, line: line)
    }

    func testUnsafeTarEntriesAreRefusedEvenWhenAuthenticated() throws {
        let ok = Array(#"{"x":1}"#.utf8)
        let cases: [(String, [UInt8])] = [
            ("absolute path", Tar.file("/etc/passwd", ok)),
            ("dot-dot", Tar.file("keys/../../escape.json", ok)),
            ("symlink", Tar.entry("keys/link.json", type: "2", link: "/etc/shadow")),
            ("hard link", Tar.entry("keys/hard.json", type: "1", link: "manifest.json")),
            ("character device", Tar.entry("keys/dev", type: "3")),
            ("block device", Tar.entry("keys/blk", type: "4")),
            ("fifo", Tar.entry("keys/fifo", type: "6")),
            ("duplicate entry", Tar.file("keys/a.json", ok, end: false) + Tar.file("keys/a.json", ok)),
            ("size beyond the data", Tar.file("keys/a.json", ok, declaredSize: 4096)),
        ]
        for (name, tar) in cases {
            print("hostile payload: \(name)")
            try assertRefused(tar, expect: [.tarMalformed, .manifestMalformed, .payloadMalformed])
        }
    }

    func testDecompressionNeverExceedsTheDeclaredSize() throws {
        // A zstd bomb: 8 MiB of zeros compresses to a few hundred bytes (within the largest
        // frame a 1 KiB chunk may carry); the header declares 1 KiB. The frame's declared size
        // is checked before decoding, and the output buffer is the chunk's share, never more.
        let bomb = [UInt8](repeating: 0, count: 8 << 20)
        try assertRefused(bomb, declared: 1024, expect: [.payloadMalformed])
        // 64 MiB of zeros: its frame is already larger than a 1 KiB chunk may carry (keyless).
        try assertRefused([UInt8](repeating: 0, count: 64 << 20), declared: 1024, expect: [.malformedFrame])
        // And a payload shorter than declared is refused too (exact size, not a bound only).
        let short = Tar.file("manifest.json", Array("{}".utf8))
        try assertRefused(short, declared: UInt64(short.count) + 512, expect: [.payloadMalformed])
    }

    func testDeclaredSizesAboveTheNamedLimitsAreRefusedBeforeAnyWork() throws {
        let hsm = try makeHSM()
        let before = try snapshot(hsm.directory)
        // The writer refuses to declare more than the limit...
        XCTAssertThrowsError(try seal(compressed: try Zstd.compress(Tar.file("a", [1])), declaredBytes: InnerFormat.maximumPayloadBytes + 1))
        // ...and a reader refuses a header that does, before any crypto runs (the seal would
        // fail too, but the limit is checked first and named).
        let tar = Tar.file("a", [1])
        var blob = try seal(compressed: try Zstd.compress(tar), declaredBytes: 0x0123_4567)
        let needle: [UInt8] = [0, 0, 0, 0, 0x01, 0x23, 0x45, 0x67]
        let at = try XCTUnwrap((0...(blob.count - 8)).first { blob[$0..<($0 + 8)].elementsEqual(needle) })
        let huge = InnerFormat.maximumPayloadBytes + 1
        for i in 0..<8 { blob[at + i] = UInt8(truncatingIfNeeded: huge >> (UInt64(7 - i) * 8)) }
        XCTAssertThrowsError(try InnerHeader.parse(prefix: blob)) { XCTAssertEqual(($0 as? ArchiveError)?.code, .limitExceeded) }
        XCTAssertThrowsError(try hsm.restore(blob, dryRun: false)) { XCTAssertEqual(($0 as? ArchiveError)?.code, .limitExceeded) }
        XCTAssertEqual(try snapshot(hsm.directory), before)
    }

    /// The first object's bytes differ from its manifest record, and the tar breaks later: the
    /// restore (and its dry run) reports the object, the earlier error in payload order, though
    /// objects are hashed on worker threads after the tar has been read past them.
    /// A path listed twice in the manifest (checked on another core, `ManifestRecordLane`) is
    /// still the error when a later chunk does not authenticate, or the blob is cut short: it
    /// comes first in the stream, as the serial check reported it, whichever consumer reads.
    func testARepeatedPathIsReportedBeforeALaterChunkOrTruncationFault() throws {
        let n = 3000
        let objects = (0..<n).map { i in
            PayloadObject(kind: i < 2 ? .policy : .key, path: (i < 2 ? "policies/" : "keys/") + String(format: "%06d.json", i + 1),
                          contents: Array("{\"n\":\(i)}".utf8))
        }
        var entries = try PaxTar.read(try PayloadBundle(objects: objects).tarBytes())
        let manifest = String(decoding: entries[0].contents, as: UTF8.self)
            .replacingOccurrences(of: "\"path\":\"keys/000006.json\"", with: "\"path\":\"keys/000005.json\"")
        entries[0] = TarEntry(path: entries[0].path, contents: Array(manifest.utf8))
        let tar = try PaxTar.write(entries)
        let pbk = try KeyHierarchy.derivePBK(mkbk: mkbk, akbk: akbk, manufacturerId: "acme")
        var blob: [UInt8] = []
        let writer = try InnerBlobWriter(metadata: ManufacturerMetadata(manufacturerId: "acme", model: "M", firmwareVersion: "1.0.0",
                                                                        serialNumber: "9", hsmId: "hsm-9", clusterId: "c"),
                                         backupId: SecureRandom.bytes(count: 16), createdAt: 1_800_000_000,
                                         payload: PayloadDescriptor(payloadBytes: UInt64(tar.count), userCount: 0, keyCount: UInt32(n - 2), policyCount: 2),
                                         pbk: pbk, ebk: try EphemeralBackupKey.random(), sink: { blob += $0 })
        try writer.write(tar)
        try writer.finish()
        XCTAssertGreaterThan(writer.header.payload.chunkCount, 8)
        var lastChunkBad = blob
        lastChunkBad[lastChunkBad.count - 40] ^= 1
        let cutShort = Array(blob[..<(blob.count * 3 / 4)])
        let keyring = BackupKeyring(manufacturerId: "acme", mkbk: mkbk, akbk: akbk)
        for (what, bytes) in [("a later chunk altered", lastChunkBad), ("the blob cut short", cutShort)] {
            let checker = InnerBlobChecker(keyring: keyring)
            XCTAssertThrowsError(try { try checker.feed(bytes); _ = try checker.finish() }(), what) { e in
                XCTAssertEqual((e as? ArchiveError)?.code, .manifestMalformed, "\(what): \(e)")
                XCTAssertTrue("\(e)".contains("keys/000005.json listed twice"), "\(what): \(e)")
            }
            let hsm = try makeHSM()
            let before = try snapshot(hsm.directory)
            XCTAssertThrowsError(try hsm.restore(bytes, dryRun: false), what) { e in
                XCTAssertTrue("\(e)".contains("keys/000005.json listed twice"), "\(what): \(e)")
            }
            XCTAssertEqual(try snapshot(hsm.directory), before)
        }
    }

    func testAnEarlierObjectDigestMismatchIsReportedBeforeALaterTarError() throws {
        let layout: [(ObjectKind, String)] = [(.policy, "policies/000001.json"), (.policy, "policies/000002.json"),
                                              (.user, "users/000001.json"), (.key, "keys/000001.json"), (.key, "keys/000002.json")]
        var objects: [PayloadObject] = []
        for (i, (kind, path)) in layout.enumerated() {
            objects.append(PayloadObject(kind: kind, path: path, contents: Array("{\"n\":\(i)}".utf8)))
        }
        var entries = try PaxTar.read(try PayloadBundle(objects: objects).tarBytes())
        let changed = entries[1].path
        entries[1] = TarEntry(path: changed, contents: Array("{\"n\":99}".utf8))
        var tar = try PaxTar.write(entries)
        // The end-of-archive blocks replaced by a block that is no ustar header.
        tar.removeLast(1024)
        tar += [UInt8](repeating: 0x41, count: 512) + [UInt8](repeating: 0, count: 1024)
        for dryRun in [true, false] {
            let hsm = try makeHSM()
            let before = try snapshot(hsm.directory)
            let blob = try seal(compressed: try Zstd.compress(tar), declaredBytes: UInt64(tar.count), counts: (1, 2, 2))
            XCTAssertThrowsError(try hsm.restore(blob, dryRun: dryRun)) { e in
                XCTAssertEqual((e as? ArchiveError)?.code, .objectDigestMismatch, "\(e)")
                XCTAssertEqual((e as? ArchiveError)?.field, changed)
            }
            XCTAssertEqual(try snapshot(hsm.directory), before)
        }
    }

    private func snapshot(_ dir: String) throws -> [String: Data] {
        var out: [String: Data] = [:]
        for f in try FileManager.default.contentsOfDirectory(atPath: dir) { out[f] = try Data(contentsOf: URL(fileURLWithPath: dir + "/" + f)) }
        return out
    }
}

/// A minimal ustar writer for hostile archives (libarchive's writer, rightly, will not make them).
enum Tar {
    static func entry(_ name: String, type: Character, link: String = "", data: [UInt8] = [], declaredSize: Int? = nil) -> [UInt8] {
        var h = [UInt8](repeating: 0, count: 512)
        func put(_ s: String, _ at: Int, _ len: Int) { for (i, b) in s.utf8.prefix(len).enumerated() { h[at + i] = b } }
        func zeroPadded(_ v: Int, _ width: Int) -> String {
            let digits = String(v, radix: 8)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        func octal(_ v: Int, _ at: Int, _ len: Int) { put(zeroPadded(v, len - 1), at, len - 1) }
        put(name, 0, 100)
        octal(0o600, 100, 8); octal(0, 108, 8); octal(0, 116, 8)
        octal(declaredSize ?? data.count, 124, 12); octal(0, 136, 12)
        h[156] = UInt8(ascii: type.unicodeScalars.first!)
        put(link, 157, 100)
        put("ustar", 257, 6); put("00", 263, 2)
        for i in 148..<156 { h[i] = 0x20 }
        let sum = h.reduce(0) { $0 + Int($1) }
        put(zeroPadded(sum, 6), 148, 6)
        h[154] = 0; h[155] = 0x20
        var out = h + data
        if data.count % 512 != 0 { out += [UInt8](repeating: 0, count: 512 - data.count % 512) }
        return out
    }

    static func file(_ name: String, _ data: [UInt8], declaredSize: Int? = nil, end: Bool = true) -> [UInt8] {
        entry(name, type: "0", data: data, declaredSize: declaredSize) + (end ? [UInt8](repeating: 0, count: 1024) : [])
    }
}
