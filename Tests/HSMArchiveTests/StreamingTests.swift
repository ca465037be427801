import BackupCrypto
import ByteCoding
import Foundation
import HSMArchive
import PayloadCodec
import SimulatedHSM
import XCTest

final class StreamingTests: XCTestCase {
    func testOpenerAndCheckerAcceptAnySplitOfTheInput() throws {
        let hsm = try Fixture.makeHSM()
        try hsm.populate(keys: 6, users: 2, seed: 21, options: .deterministic)
        var pieces: [[UInt8]] = []
        try hsm.backup(to: { pieces.append($0) }, chunkSize: 300)
        let blob = pieces.flatMap { $0 }
        XCTAssertGreaterThan(pieces.count, 3, "the writer streams: header, then one piece per chunk")
        let reference = try InnerBlob.open(blob, keyring: Fixture.keyring).bundle
        var rng = SystemRandomNumberGenerator()
        // Pieces shorter than a frame, and longer ones holding several whole frames (parsed where
        // they lie) with a frame cut at either end; 1000 and 1001 draw random lengths.
        for split in [1, 7, 64, 1000, 1001, 2048, blob.count] {
            var tar: [UInt8] = []
            let opener = InnerBlobOpener(keyring: Fixture.keyring) { tar.append(contentsOf: $0) }
            var checker = InnerStructureChecker()
            var at = 0
            while at < blob.count {
                let n = split == 1000 ? Int.random(in: 1...200, using: &rng) : split == 1001 ? Int.random(in: 1...4000, using: &rng) : split
                let piece = Array(blob[at..<min(at + n, blob.count)])
                try opener.feed(piece)
                try checker.feed(piece)
                at += n
            }
            try opener.finish()
            XCTAssertEqual(try PayloadBundle.parse(tar: tar, descriptor: opener.header!.payload), reference)
            XCTAssertEqual(try checker.finish().totalBytes, blob.count)
        }
        // A streaming restore in pieces.
        let target = try Fixture.makeHSM(2)
        let session = try target.beginRestore(dryRun: false)
        for p in pieces { try session.feed(p) }
        XCTAssertEqual(try session.finish().keys, 6)
        XCTAssertEqual(try target.contents, try hsm.contents)
    }

    func testFailedReaderStaysFailed() throws {
        let hsm = try Fixture.makeHSM()
        let blob = try hsm.backup(chunkSize: 256)
        var damaged = blob
        damaged[damaged.count - 3] ^= 0xFF
        let opener = InnerBlobOpener(keyring: Fixture.keyring) { _ in }
        assertCode(["chunkAuthenticationFailed"]) { try opener.feed(damaged); try opener.finish() }
        assertCode(["chunkAuthenticationFailed"]) { try opener.feed([]) }
        assertCode(["chunkAuthenticationFailed"]) { try opener.finish() }
    }

    func testWriterRulesAndStickyFailure() throws {
        let pbk = try Fixture.keyring.pbk()
        var out: [UInt8] = []
        let w = try InnerBlobWriter(metadata: Fixture.identity().metadata, backupId: [UInt8](repeating: 1, count: 16), createdAt: 0,
                                    payload: PayloadDescriptor(chunkSize: 256, payloadBytes: 600, userCount: 0, keyCount: 0, policyCount: 0),
                                    pbk: pbk, ebk: try EphemeralBackupKey.random(), sink: { out.append(contentsOf: $0) })
        try w.write([UInt8](repeating: 1, count: 300))
        assertCode(["invalidArgument"]) { try w.finish() }   // 300 of the 600 declared bytes
        assertCode(["writerFailed"]) { try w.write([1]) }
        // More than declared is refused at once.
        let w2 = try InnerBlobWriter(metadata: Fixture.identity().metadata, backupId: [UInt8](repeating: 1, count: 16), createdAt: 0,
                                     payload: PayloadDescriptor(chunkSize: 256, payloadBytes: 10, userCount: 0, keyCount: 0, policyCount: 0),
                                     pbk: pbk, ebk: try EphemeralBackupKey.random(), sink: { _ in })
        assertCode(["invalidArgument"]) { try w2.write([UInt8](repeating: 1, count: 11)) }
        // A payload of zero bytes is outside the format.
        assertCode(["invalidArgument"]) {
            try InnerBlobWriter(metadata: Fixture.identity().metadata, backupId: [UInt8](repeating: 1, count: 16), createdAt: 0,
                                payload: PayloadDescriptor(payloadBytes: 0, userCount: 0, keyCount: 0, policyCount: 0),
                                pbk: pbk, ebk: try EphemeralBackupKey.random(), sink: { _ in })
        }
        assertCode(["invalidArgument"]) {
            try InnerBlobWriter(metadata: Fixture.identity().metadata, backupId: [1], createdAt: 0,
                                payload: PayloadDescriptor(payloadBytes: 0, userCount: 0, keyCount: 0, policyCount: 0),
                                pbk: pbk, ebk: try EphemeralBackupKey.random(), sink: { _ in })
        }
        assertCode(["invalidArgument"]) {
            try InnerBlobWriter(metadata: Fixture.identity().metadata, backupId: [UInt8](repeating: 1, count: 16), createdAt: 0,
                                payload: PayloadDescriptor(chunkSize: 100, payloadBytes: 0, userCount: 0, keyCount: 0, policyCount: 0),
                                pbk: pbk, ebk: try EphemeralBackupKey.random(), sink: { _ in })
        }
    }

    /// A blob an EBK holder could make: sealed correctly, but an object breaks the HSM's rules.
    func testHSMContentRulesAreCheckedBeforeAnyChange() throws {
        let target = try Fixture.makeHSM(2)
        try target.populate(keys: 2, users: 1, seed: 5, options: .deterministic)
        let before = Fixture.snapshot(target.directory)
        func blob(_ objects: [PayloadObject]) throws -> [UInt8] {
            try InnerBlob.seal(try PayloadBundle(objects: objects), metadata: Fixture.identity().metadata,
                               backupId: [UInt8](repeating: 9, count: 16), createdAt: 1, keyring: Fixture.keyring,
                               ebk: try EphemeralBackupKey.random(), chunkSize: 256)
        }
        let good = try SimulatedHSM.makeContents(keys: 1, users: 2, seed: 6, options: .deterministic)
        let user = Array(try JSONEncoder().encode(good.users[0]))
        let canonical: (HSMUser) throws -> [UInt8] = { u in
            let e = JSONEncoder(); e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]; return Array(try e.encode(u))
        }
        let cases: [(String, [PayloadObject])] = [
            ("not JSON", [PayloadObject(kind: .user, path: "users/000001.json", contents: Array("{".utf8))]),
            ("not canonical", [PayloadObject(kind: .user, path: "users/000001.json", contents: user + [0x20])]),
            ("duplicate user", [PayloadObject(kind: .user, path: "users/000001.json", contents: try canonical(good.users[0])),
                                PayloadObject(kind: .user, path: "users/000002.json", contents: try canonical(good.users[0]))]),
            ("unexpected name", [PayloadObject(kind: .user, path: "users/x.json", contents: try canonical(good.users[0]))]),
        ]
        for (what, objects) in cases {
            let b = try blob(objects)
            assertCode(["invalidObject"], what) { try target.restore(b, dryRun: false) }
            XCTAssertEqual(Fixture.snapshot(target.directory), before, what)
        }
    }
}

final class HeaderSummaryTests: XCTestCase {
    func testSummaryNeedsOnlyTheHeaderBytes() throws {
        let hsm = try Fixture.makeHSM()
        try hsm.populate(keys: 2, users: 1, seed: 3, options: .deterministic)
        let blob = try hsm.backup()
        let length = try XCTUnwrap(try InnerHeader.headerLength(prefix: blob.prefix(InnerFormat.preludeByteCount)))
        XCTAssertNil(try InnerHeader.headerLength(prefix: blob.prefix(5)))
        let summary = try InnerHeader.parse(prefix: blob.prefix(length)).summary
        XCTAssertEqual(summary.metadata, hsm.identity.metadata)
        XCTAssertEqual(summary.payload.keyCount, 2)
        XCTAssertEqual(summary.pbkFingerprint, Hex.encode(try XCTUnwrap(try hsm.pbkFingerprint())))
        let json = try JSONEncoder().encode(summary)
        XCTAssertEqual(try JSONDecoder().decode(InnerHeaderSummary.self, from: json), summary)
        assertCode(["truncated"]) { try InnerHeader.parse(prefix: blob.prefix(length - 1)) }
    }
}
