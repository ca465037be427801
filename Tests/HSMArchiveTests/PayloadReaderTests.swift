import BackupCrypto
import ByteCoding
import Foundation
import HSMArchive
import PayloadCodec
import XCTest

/// The streaming payload check: the manifest parsed record by record in any split, a changed
/// object named where it is, a path listed twice refused.
final class PayloadReaderTests: XCTestCase {
    private func bundle(_ n: Int) throws -> PayloadBundle {
        try PayloadBundle(objects: (0..<n).map { i in
            PayloadObject(kind: i < 2 ? .policy : .key, path: (i < 2 ? "policies/" : "keys/") + String(format: "%06d.json", i + 1),
                          contents: Array("{\"n\":\(i)}".utf8))
        })
    }

    func testManifestParsesTheSameInAnySplit() throws {
        let b300 = try bundle(300)
        let manifest = try b300.manifest.canonicalBytes()
        let whole = try ManifestParser.parse(manifest)
        XCTAssertEqual(whole.count, 300)
        // The streaming parser reads the values JSONEncoder wrote.
        XCTAssertEqual(whole.map(\.kind), b300.manifest.objects.map(\.kind))
        XCTAssertEqual(whole.map(\.path), b300.manifest.objects.map(\.path))
        XCTAssertEqual(whole.map(\.size), b300.manifest.objects.map(\.size))
        XCTAssertEqual(whole.map { Hex.encode($0.sha256) }, b300.manifest.objects.map(\.sha256))
        for step in [1, 7, 100, 2048, 5000] {
            var p = ManifestParser(totalBytes: manifest.count)
            var got: [ManifestRecord] = []
            var at = 0
            while at < manifest.count {
                let end = min(manifest.count, at + step)
                try manifest[at..<end].withUnsafeBytes { try p.feed($0) { got.append($0) } }
                at = end
            }
            try p.finish()
            XCTAssertEqual(got, whole, "step \(step)")
        }
        // Cut short, or one byte more: refused.
        XCTAssertThrowsError(try ManifestParser.parse(Array(manifest.dropLast()))) {
            XCTAssertEqual(($0 as? ArchiveError)?.code, .manifestMalformed)
        }
        XCTAssertThrowsError(try ManifestParser.parse(manifest + [0x20])) {
            XCTAssertEqual(($0 as? ArchiveError)?.code, .manifestMalformed)
        }
    }

    func testAPathListedTwiceIsRefused() throws {
        var text = String(decoding: try bundle(4).manifest.canonicalBytes(), as: UTF8.self)
        text = text.replacingOccurrences(of: "keys/000004.json", with: "keys/000003.json")
        XCTAssertThrowsError(try ManifestParser.parse(Array(text.utf8))) { e in
            XCTAssertEqual((e as? ArchiveError)?.code, .manifestMalformed)
            XCTAssertTrue("\(e)".contains("listed twice"), "\(e)")
        }
    }

    /// The streaming reader checks the paths on another core (`ManifestRecordLane`, issue 17):
    /// its error is the serial parser's, word for word and offset for offset, wherever the
    /// repeated path lies (first record pair, across the lane's 64 KiB batches, the last
    /// record), and it comes first when a later fault of any kind follows it (a malformed
    /// record, a tar cut inside the manifest).
    func testTheRecordLaneReportsExactlyWhatTheSerialParserReports() throws {
        let n = 6000 // about 360 KiB of encoded records: more batches than the lane holds at once
        let manifest = String(decoding: try bundle(n).manifest.canonicalBytes(), as: UTF8.self)
        func name(_ i: Int) -> String { (i < 2 ? "policies/" : "keys/") + String(format: "%06d.json", i + 1) }
        /// The manifest with record `i`'s path made record `i - 1`'s.
        func duplicating(_ i: Int, in text: String) -> String {
            text.replacingOccurrences(of: "\"path\":\"\(name(i))\"", with: "\"path\":\"\(name(i - 1))\"")
        }
        func serialError(_ text: String) -> String? {
            do { _ = try ManifestParser.parse(Array(text.utf8)); return nil } catch { return "\(error)" }
        }
        func readerError(_ text: String, cutTarAt cut: Int? = nil) -> String? {
            var tar = try! PaxTar.write([TarEntry(path: PayloadManifest.path, contents: Array(text.utf8))])
            if let cut { tar = Array(tar[..<cut]) }
            let descriptor = PayloadDescriptor(payloadBytes: UInt64(tar.count), userCount: 0, keyCount: UInt32(n - 2), policyCount: 2)
            let reader = PayloadReader(descriptor: descriptor)
            do {
                var at = 0
                while at < tar.count {
                    let end = min(tar.count, at + 65536)
                    try reader.feed(Array(tar[at..<end]))
                    at = end
                }
                _ = try reader.finish()
                return nil
            } catch { return "\(error)" }
        }
        for i in [3, 4, 300, 1088, 1089, 1090, 1091, 3000, 4500, n - 1] {
            let text = duplicating(i, in: manifest)
            let expected = try XCTUnwrap(serialError(text), "record \(i)")
            XCTAssertTrue(expected.contains("listed twice"), expected)
            XCTAssertEqual(readerError(text), expected, "record \(i)")
        }
        // A repeated path, then a malformed record far after it: the repeated path is the error.
        let both = duplicating(10, in: manifest).replacingOccurrences(of: "\"path\":\"\(name(1700))\",\"sha256\"",
                                                                      with: "\"path\":\"\(name(1700))\",\"SHA256\"")
        let first = try XCTUnwrap(serialError(duplicating(10, in: manifest)))
        XCTAssertNotEqual(serialError(manifest.replacingOccurrences(of: "\"path\":\"\(name(1700))\",\"sha256\"",
                                                                     with: "\"path\":\"\(name(1700))\",\"SHA256\"")), nil)
        XCTAssertEqual(readerError(both), first)
        // A repeated path, then the tar cut inside the manifest, well after it.
        XCTAssertEqual(readerError(duplicating(10, in: manifest), cutTarAt: 150_000), first)
        // The repeated path's own record malformed after its path (its sha256, its size, cut
        // inside it): the serial parser reported the repeat first, and so does the reader.
        let repeated = duplicating(1700, in: manifest)
        let second = try XCTUnwrap(repeated.range(of: "\"path\":\"\(name(1699))\"", options: .backwards))
        let tail = repeated[second.upperBound...]
        for broken in [tail.replacingOccurrences(of: ",\"sha256\":\"", with: ",\"sha256\":\"Z", options: .anchored),
                       tail.replacingOccurrences(of: ",\"sha256\"", with: ",\"SHA256\"", options: .anchored)] {
            let text = String(repeated[..<second.upperBound]) + broken
            let expected = try XCTUnwrap(serialError(text))
            XCTAssertTrue(expected.contains("listed twice"), expected)
            XCTAssertEqual(readerError(text), expected)
        }
        // ... and cut inside that record, after its path.
        let cut = String(repeated[..<second.upperBound]) + ",\"sha2"
        XCTAssertEqual(readerError(cut), serialError(cut))
        XCTAssertTrue(serialError(cut)?.contains("listed twice") ?? false)
        // No repeated path: the malformed record's own error, as the serial parser gives it.
        let malformed = manifest.replacingOccurrences(of: "\"path\":\"\(name(1700))\",\"sha256\"", with: "\"path\":\"\(name(1700))\",\"SHA256\"")
        XCTAssertEqual(readerError(malformed), serialError(malformed))
    }

    func testAChangedObjectIsNamedWhereItIs() throws {
        let b = try bundle(50)
        var entries = try PaxTar.read(try b.tarBytes())
        entries[30] = TarEntry(path: entries[30].path, contents: Array("{\"n\":99}".utf8))
        let tar = try PaxTar.write(entries)
        let descriptor = PayloadDescriptor(payloadBytes: UInt64(tar.count), userCount: 0, keyCount: 48, policyCount: 2)
        var seen = 0
        let reader = PayloadReader(descriptor: descriptor) { _ in seen += 1 }
        XCTAssertThrowsError(try { try reader.feed(tar); _ = try reader.finish() }()) { e in
            XCTAssertEqual((e as? ArchiveError)?.code, .objectDigestMismatch)
            XCTAssertEqual((e as? ArchiveError)?.field, entries[30].path)
        }
        XCTAssertEqual(seen, 29, "the objects before the changed one were checked and handed on")
    }

    /// Deferred digests (issue 17): the consumer hashes objects on other threads and hands the
    /// results back in order; the reader names the changed object, and refuses to finish while
    /// any object's digest has not come back.
    func testDeferredDigestsNameTheChangedObjectAndMustAllComeBack() throws {
        let b = try bundle(50)
        let good = try b.tarBytes()
        let descriptor = { (tar: [UInt8]) in PayloadDescriptor(payloadBytes: UInt64(tar.count), userCount: 0, keyCount: 48, policyCount: 2) }
        // Hashed on a concurrent queue, accepted in order: a good payload passes.
        var pending: [UncheckedObject] = []
        let reader = PayloadReader(deferringDigestsOf: descriptor(good)) { pending.append($0) }
        try reader.feed(good)
        let objects = pending
        let digests = ConcurrentDigests(count: objects.count)
        DispatchQueue.concurrentPerform(iterations: objects.count) { i in digests.set(i, objects[i].digest(using: SHA256Hasher())) }
        for d in digests.all { try reader.accept(d) }
        let summary = try reader.finish()
        XCTAssertEqual([summary.policies, summary.users, summary.keys], [2, 0, 48])

        // One object changed: named by accept, at its place.
        var entries = try PaxTar.read(good)
        entries[30] = TarEntry(path: entries[30].path, contents: Array("{\"n\":99}".utf8))
        let bad = try PaxTar.write(entries)
        pending = []
        let r2 = PayloadReader(deferringDigestsOf: descriptor(bad)) { pending.append($0) }
        try r2.feed(bad)
        let hasher = SHA256Hasher()
        var accepted = 0
        XCTAssertThrowsError(try { for u in pending { try r2.accept(u.digest(using: hasher)); accepted += 1 } }()) { e in
            XCTAssertEqual((e as? ArchiveError)?.code, .objectDigestMismatch)
            XCTAssertEqual((e as? ArchiveError)?.field, entries[30].path)
        }
        XCTAssertEqual(accepted, 29)
        XCTAssertThrowsError(try r2.finish(), "once failed it stays failed")

        // Every digest matched but one never came back: finish refuses.
        pending = []
        let r3 = PayloadReader(deferringDigestsOf: descriptor(good)) { pending.append($0) }
        try r3.feed(good)
        for u in pending.dropLast() { try r3.accept(u.digest(using: hasher)) }
        XCTAssertThrowsError(try r3.finish()) { e in
            XCTAssertEqual((e as? ArchiveError)?.code, .objectDigestMismatch)
            XCTAssertTrue("\(e)".contains("never checked"), "\(e)")
        }
    }

    /// Spec 4.7: entry i is compared with record i. Another path, wherever it points, is
    /// objectDigestMismatch at that entry; an entry with no record, or a record with no entry,
    /// is manifestMalformed.
    func testEntriesThatDifferFromTheManifestHaveOneCodeEach() throws {
        let entries = try PaxTar.read(try bundle(5).tarBytes())
        let descriptor = { (tar: [UInt8]) in PayloadDescriptor(payloadBytes: UInt64(tar.count), userCount: 0, keyCount: 3, policyCount: 2) }
        func check(_ e: [TarEntry], _ code: ArchiveError.Code, _ name: String) throws {
            let tar = try PaxTar.write(e)
            let reader = PayloadReader(descriptor: descriptor(tar))
            XCTAssertThrowsError(try { try reader.feed(tar); _ = try reader.finish() }(), name) {
                XCTAssertEqual(($0 as? ArchiveError)?.code, code, "\(name): \($0)")
            }
        }
        for path in ["keys/renamed.json", "policies/000009.json", "other/000005.json", "000005.json"] {
            try check(entries.dropLast() + [TarEntry(path: path, contents: entries.last!.contents)], .objectDigestMismatch, path)
        }
        try check(entries + [TarEntry(path: "keys/000006.json", contents: [])], .manifestMalformed, "extra entry")
        try check(Array(entries.dropLast()), .manifestMalformed, "missing entry")
        try check([entries[1], entries[0]] + entries[2...], .manifestMalformed, "manifest not first")
    }
}

/// Results written by concurrent iterations, read after they all ended.
private final class ConcurrentDigests: @unchecked Sendable {
    private let lock = NSLock()
    private var values: [DigestedObject?]
    init(count: Int) { values = Array(repeating: nil, count: count) }
    func set(_ i: Int, _ d: DigestedObject) { lock.lock(); values[i] = d; lock.unlock() }
    var all: [DigestedObject] { values.map { $0! } }
}
