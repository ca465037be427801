import Foundation
import PayloadCodec
import XCTest

final class PayloadCodecTests: XCTestCase {
    func testTarRoundTripWithNonASCIIAndEmptyEntries() throws {
        let entries = [TarEntry(path: "manifest.json", contents: Array("{}".utf8)),
                       TarEntry(path: "keys/clé-🔑-ключ.json", contents: Array("x".utf8)),
                       TarEntry(path: "empty", contents: []),
                       TarEntry(path: "big", contents: (0..<200_000).map { UInt8(truncatingIfNeeded: $0 &* 7) })]
        let tar = try PaxTar.write(entries)
        XCTAssertEqual(try PaxTar.read(tar), entries)
        XCTAssertEqual(try PaxTar.write(entries), tar, "the writer is deterministic")
    }

    func testWriterRefusesUnsafePathsAndDuplicates() {
        for bad in ["/abs", "../up", "a/../b", "a//b", "./a", "", "a\\b", "trailing/"] {
            XCTAssertThrowsError(try PaxTar.write([TarEntry(path: bad, contents: [1])])) {
                XCTAssertEqual(($0 as? PayloadCodecError)?.code, .unsafePath, bad)
            }
        }
        XCTAssertThrowsError(try PaxTar.write([TarEntry(path: "a", contents: []), TarEntry(path: "a", contents: [])])) {
            XCTAssertEqual(($0 as? PayloadCodecError)?.code, .duplicatePath)
        }
    }

    /// The one-pass path check gives the rule's verdict (and message) on every short path
    /// over an alphabet of the characters that matter, against the rule written plainly.
    func testPathCheckMatchesThePlainRule() {
        // Components are split on the byte 0x2F (a `/` followed by a combining mark is one
        // Character, but still a separator: spec 4.7 judges bytes).
        func plain(_ path: String) -> String? {
            let bytes = Array(path.utf8)
            if bytes.isEmpty { return "empty path" }
            if bytes.first == UInt8(ascii: "/") { return "absolute path" }
            if bytes.contains(0) || bytes.contains(UInt8(ascii: "\\")) { return "NUL or backslash in path" }
            for c in bytes.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false) {
                if c.isEmpty { return "empty path component" }
                if c.elementsEqual(".".utf8) || c.elementsEqual("..".utf8) { return "`.` or `..` component" }
            }
            return nil
        }
        let alphabet = ["a", ".", "/", "\\", "\u{0}", "é", "\u{301}"]
        var paths = [""]
        var all: [String] = []
        for _ in 0..<5 {
            paths = paths.flatMap { p in alphabet.map { p + $0 } }
            all += paths
        }
        for path in all {
            var got: String?
            do { try PaxTar.checkPath(path, index: 0) } catch let e as PayloadCodecError {
                XCTAssertEqual(e.code, .unsafePath, path)
                got = e.reason
            } catch { XCTFail("\(error)") }
            XCTAssertEqual(got, plain(path), "path \(path.debugDescription)")
        }
        XCTAssertThrowsError(try PaxTar.checkPath(String(repeating: "a", count: 5000), index: 0))
    }

    func testReaderRefusesLinksDotDotAndGarbage() throws {
        let dir = NSTemporaryDirectory() + "tarlinks-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Data("x".utf8).write(to: URL(fileURLWithPath: dir + "/f"))
        try FileManager.default.createSymbolicLink(atPath: dir + "/l", withDestinationPath: "/etc/passwd")
        func bsdtar(_ args: [String]) throws -> [UInt8] {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/bsdtar")
            p.arguments = args
            p.currentDirectoryURL = URL(fileURLWithPath: dir)
            let out = Pipe()
            p.standardOutput = out
            try p.run()
            let data = out.fileHandleForReading.readDataToEndOfFile()
            p.waitUntilExit()
            return Array(data)
        }
        let withLink = try bsdtar(["--format", "pax", "-cf", "-", "f", "l"])
        XCTAssertThrowsError(try PaxTar.read(withLink)) { XCTAssertEqual(($0 as? PayloadCodecError)?.code, .unsupportedEntryType) }
        let withDotDot = try bsdtar(["--format", "pax", "-cf", "-", "-s", ",^f$,../f,", "f"])
        XCTAssertThrowsError(try PaxTar.read(withDotDot)) { XCTAssertEqual(($0 as? PayloadCodecError)?.code, .unsafePath) }
        XCTAssertThrowsError(try PaxTar.read(Array(repeating: 0x41, count: 1024))) {
            XCTAssertEqual(($0 as? PayloadCodecError)?.code, .malformedTar)
        }
        XCTAssertThrowsError(try PaxTar.read([])) { XCTAssertEqual(($0 as? PayloadCodecError)?.code, .malformedTar) }
        let good = try PaxTar.write([TarEntry(path: "a", contents: Array(repeating: 7, count: 3000))])
        XCTAssertThrowsError(try PaxTar.read(Array(good.prefix(1500)))) { XCTAssertEqual(($0 as? PayloadCodecError)?.code, .malformedTar) }
        XCTAssertThrowsError(try PaxTar.read(good, limits: TarLimits(maximumEntryBytes: 100))) {
            XCTAssertEqual(($0 as? PayloadCodecError)?.code, .entryTooLarge)
        }
    }

    func testZstdRoundTripAndBounds() throws {
        let data = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 / 100) }
        let z = try Zstd.compress(data)
        XCTAssertEqual(try Zstd.decompress(z, exactSize: data.count), data)
        // One context decodes many frames (as a worker does, chunk after chunk).
        let d = try ZstdDecompressor()
        for _ in 0..<3 { XCTAssertEqual(try d.decompress(z[...], exactSize: data.count), data) }

        let bomb = try Zstd.compress([UInt8](repeating: 0, count: 8 << 20))
        XCTAssertThrowsError(try Zstd.decompress(bomb, exactSize: 1000)) { XCTAssertEqual(($0 as? PayloadCodecError)?.code, .sizeLimitExceeded) }
        XCTAssertThrowsError(try Zstd.decompress(z, exactSize: data.count + 1)) { XCTAssertEqual(($0 as? PayloadCodecError)?.code, .sizeMismatch) }
        XCTAssertThrowsError(try Zstd.decompress(Array(z.dropLast(3)), exactSize: data.count)) {
            XCTAssertEqual(($0 as? PayloadCodecError)?.code, .truncatedCompressed)
        }
        XCTAssertThrowsError(try Zstd.decompress(z + [0], exactSize: data.count)) { XCTAssertEqual(($0 as? PayloadCodecError)?.code, .trailingCompressed) }
        XCTAssertThrowsError(try Zstd.decompress([1, 2, 3, 4, 5, 6, 7, 8], exactSize: 10)) {
            XCTAssertEqual(($0 as? PayloadCodecError)?.code, .malformedCompressed)
        }
    }

    /// The tuned match finder (hash log 12, matches of 7 bytes or more) makes standard frames
    /// that any decoder reads, and on key records (canonical JSON, hex key material) in 64 KiB
    /// frames it compresses within 1% of libzstd's own level 1.
    func testTunedCompressorKeepsFramesStandardAndTheRatio() throws {
        var rng = SeededGenerator(seed: 11)
        var records: [UInt8] = []
        var i = 0
        while records.count < 8 * 65_536 {
            let material = (0..<800).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let hex = material.map { String(format: "%02x", $0) }.joined()
            let json = #"{"attributes":{"class":"secret","extractable":false,"label":"key-\#(i)"},"id":\#(i),"material":"\#(hex)"}"#
            records += Array(json.utf8)
            i += 1
        }
        let tuned = try ZstdCompressor()
        let plain = try ZstdCompressor(tuned: false)
        var tunedBytes = 0, plainBytes = 0
        for start in stride(from: 0, to: records.count, by: 65_536) {
            let piece = records[start..<min(start + 65_536, records.count)]
            let a = try tuned.compress(piece), b = try plain.compress(piece)
            XCTAssertEqual(a[4] & 0x23, 0x20, "single segment, no dictionary id")
            XCTAssertEqual(try Zstd.decompress(a, exactSize: piece.count), Array(piece))
            XCTAssertEqual(try Zstd.decompress(b, exactSize: piece.count), Array(piece))
            tunedBytes += a.count
            plainBytes += b.count
        }
        XCTAssertLessThanOrEqual(Double(tunedBytes), Double(plainBytes) * 1.01, "tuned \(tunedBytes) bytes, libzstd level 1 \(plainBytes)")
    }

    /// Spec 4.7: the writer's frames are single-segment or have a window no larger than their
    /// content, at every piece size the format allows; a dictionary id or a larger window is
    /// refused although zstd itself would decode the frame.
    func testZstdFramesNameNoDictionaryAndAWindowNoLargerThanThePiece() throws {
        var rng = SeededGenerator(seed: 7)
        for n in [1, 255, 256, 257, 1000, 65_536, 600_000, 4 << 20] {
            let data = (0..<n).map { i in i % 7 == 0 ? UInt8.random(in: 0...255, using: &rng) : UInt8(truncatingIfNeeded: i / 64) }
            let z = try Zstd.compress(data)
            XCTAssertEqual(z[4] & 0x03, 0, "no dictionary id (\(n) bytes)")
            XCTAssertEqual(try Zstd.decompress(z, exactSize: n), data, "\(n) bytes")
        }
        let piece = (0..<256).map { UInt8(truncatingIfNeeded: $0 * 7) }
        let z = try Zstd.compress(piece)
        XCTAssertEqual(z[4] & 0x23, 0x20, "single segment, no dictionary id")
        let fcsBytes = [1, 2, 4, 8][Int(z[4] >> 6)]
        let rest = z[(5 + fcsBytes)...]
        let size4: [UInt8] = [0x00, 0x01, 0x00, 0x00]   // 256, little-endian
        let magic = Zstd.frameMagic
        let cases: [(String, [UInt8])] = [
            ("dictionary id 0", magic + [0xA1, 0x00] + size4 + rest),
            ("dictionary id 1", magic + [0xA1, 0x01] + size4 + rest),
            ("window 1 KiB for 256 bytes", magic + [0x80, 0x00] + size4 + rest),
        ]
        for (name, frame) in cases {
            XCTAssertThrowsError(try Zstd.decompress(frame, exactSize: 256), name) {
                XCTAssertEqual(($0 as? PayloadCodecError)?.code, .unsupportedFrame, name)
            }
        }
        // The same window is allowed for a piece at least that large.
        let big = (0..<1024).map { UInt8(truncatingIfNeeded: $0 / 3) }
        let zb = try Zstd.compress(big)
        let fb = [1, 2, 4, 8][Int(zb[4] >> 6)]
        XCTAssertEqual(try Zstd.decompress(magic + [0x80, 0x00, 0x00, 0x04, 0x00, 0x00] + zb[(5 + fb)...], exactSize: 1024), big)
    }

    /// The streaming tar reader gives the same entries (or the same error) whatever the split,
    /// and refuses a tar without its end-of-archive blocks or with non-zero bytes after them.
    func testStreamingTarReaderAgreesInAnySplitAndChecksTheEnd() throws {
        let tar = try PaxTar.write([TarEntry(path: "manifest.json", contents: Array("{}".utf8)),
                                    TarEntry(path: "keys/" + String(repeating: "k", count: 150) + ".json", contents: [1, 2, 3]),
                                    TarEntry(path: "keys/empty.json", contents: [])])
        let whole = try PaxTar.read(tar)
        XCTAssertEqual(whole.map(\.path).count, 3)
        for step in [1, 7, 511, 512, 513, 4096, tar.count] {
            let c = TarEntryCollector()
            let r = PaxTarReader(visitor: c)
            var at = 0
            while at < tar.count { try r.feed(Array(tar[at..<min(tar.count, at + step)])); at += step }
            try r.finish()
            XCTAssertEqual(c.entries, whole, "step \(step)")
        }
        // Cut before the end blocks; a non-zero byte after them; a bad header checksum.
        var noEnd = tar
        while noEnd.count > 0, noEnd.last == 0 { noEnd.removeLast() }
        noEnd += [UInt8](repeating: 0, count: (512 - noEnd.count % 512) % 512)
        XCTAssertThrowsError(try PaxTar.read(noEnd)) { XCTAssertEqual(($0 as? PayloadCodecError)?.code, .malformedTar) }
        var junk = tar
        junk[junk.count - 1] = 1
        XCTAssertThrowsError(try PaxTar.read(junk)) { XCTAssertEqual(($0 as? PayloadCodecError)?.code, .malformedTar) }
        var badSum = tar
        badSum[0] ^= 0x01
        XCTAssertThrowsError(try PaxTar.read(badSum)) { XCTAssertEqual(($0 as? PayloadCodecError)?.code, .malformedTar) }
    }
}

/// A small deterministic generator (SplitMix64) for test data.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
