import Foundation
import XCTest
@testable import HSMArchive

/// The manifest's set of paths seen (issue 17): each path once, through growth, by its bytes.
final class PathHashSetTests: XCTestCase {
    private func insert(_ set: PathHashSet, _ path: String) -> Bool {
        Array(path.utf8).withUnsafeBytes { set.insert($0) }
    }

    func testEachPathIsNewOnceAcrossGrowth() {
        let set = PathHashSet(capacity: 0) // starts small: grows many times on the way
        let paths = (0..<20_000).map { "keys/\(String(format: "%06d", $0)).json" }
        for p in paths { XCTAssertTrue(insert(set, p), p) }
        for p in paths.shuffled().prefix(2_000) { XCTAssertFalse(insert(set, p), p) }
        // Prefixes, suffixes and lengths that differ by a byte.
        for p in ["keys/a.json", "keys/a.json\u{0}", "keys/a.jso", "", "x", "keys/000001.json/"] {
            XCTAssertTrue(insert(set, p), p)
            XCTAssertFalse(insert(set, p), p)
        }
    }

    /// Two valid paths whose difference cancelled across words in the multiply-and-fold hash
    /// first used here, whatever its seed (half of all seeds per half-key): a manifest listing
    /// them was refused as "listed twice". With SipHash they are two paths, every time.
    func testPathsBuiltToCancelAcrossWordsAreStillTwoPaths() {
        for _ in 0..<500 {
            let set = PathHashSet(capacity: 2)
            XCTAssertTrue(insert(set, "keys/aa0bbbbabb0.json"))
            XCTAssertTrue(insert(set, "keys/aapbbbbcbbp.json"))
        }
    }

    /// `ManifestParser` is a value: a copy made mid-manifest, after records were parsed, goes
    /// on with its own paths seen, so feeding both the same remaining records refuses nothing.
    func testACopiedManifestParserKeepsItsOwnPathsSeen() throws {
        let records = (1...40).map { i in
            #"{"kind":"key","path":"keys/\#(i).json","sha256":"\#(String(repeating: "a", count: 64))","size":1}"#
        }
        let text = #"{"format":"hsmbackup-payload","objects":["# + records.joined(separator: ",") + #"],"version":1}"#
        let all = Array(text.utf8)
        let cut = all.count * 3 / 4
        var a = ManifestParser(totalBytes: all.count)
        var before = 0, afterA = 0, afterB = 0
        try all[..<cut].withUnsafeBytes { try a.feedEncoded($0) { _ in before += 1 } }
        XCTAssertGreaterThan(before, 0, "records were parsed (and their paths kept) before the copy")
        var b = a
        try all[cut...].withUnsafeBytes { try a.feedEncoded($0) { _ in afterA += 1 } }
        try all[cut...].withUnsafeBytes { try b.feedEncoded($0) { _ in afterB += 1 } }
        try a.finish()
        try b.finish()
        XCTAssertEqual(before + afterA, 40)
        XCTAssertEqual(before + afterB, 40)
    }

    /// Each set draws its own SipHash key; a copy keeps its set's key, so it still knows the
    /// paths it was copied with, and goes on on its own.
    func testACopyKeepsItsSetsKey() {
        let a = PathHashSet(capacity: 8), b = PathHashSet(capacity: 8)
        XCTAssertTrue(insert(a, "keys/k.json"))
        XCTAssertTrue(insert(b, "keys/k.json"))
        let c = a.copy()
        XCTAssertFalse(insert(c, "keys/k.json"))
        XCTAssertTrue(insert(c, "keys/l.json"))
        XCTAssertTrue(insert(a, "keys/l.json"), "the copy's insert is its own")
    }
}
