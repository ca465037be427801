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
        XCTAssertEqual(try Zstd.decompress(z, expectedSize: data.count), data)
        // In pieces, as chunks arrive.
        let d = try BoundedDecompressor(expectedSize: data.count)
        var i = 0
        while i < z.count { try d.feed(Array(z[i..<min(i + 777, z.count)])); i += 777 }
        XCTAssertEqual(try d.finish(), data)

        let bomb = try Zstd.compress([UInt8](repeating: 0, count: 8 << 20))
        XCTAssertThrowsError(try Zstd.decompress(bomb, expectedSize: 1000)) { XCTAssertEqual(($0 as? PayloadCodecError)?.code, .sizeLimitExceeded) }
        XCTAssertThrowsError(try Zstd.decompress(z, expectedSize: data.count + 1)) { XCTAssertEqual(($0 as? PayloadCodecError)?.code, .sizeMismatch) }
        XCTAssertThrowsError(try Zstd.decompress(Array(z.dropLast(3)), expectedSize: data.count)) {
            XCTAssertEqual(($0 as? PayloadCodecError)?.code, .truncatedCompressed)
        }
        XCTAssertThrowsError(try Zstd.decompress(z + [0], expectedSize: data.count)) { XCTAssertEqual(($0 as? PayloadCodecError)?.code, .trailingCompressed) }
        XCTAssertThrowsError(try Zstd.decompress([1, 2, 3, 4, 5, 6, 7, 8], expectedSize: 10)) {
            XCTAssertEqual(($0 as? PayloadCodecError)?.code, .malformedCompressed)
        }
    }
}
