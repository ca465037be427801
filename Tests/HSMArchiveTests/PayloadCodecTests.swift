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

    func testReaderRefusesLinksDotDotAndGarbage() throws {
        let dir = NSTemporaryDirectory() + "tarlinks-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
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
