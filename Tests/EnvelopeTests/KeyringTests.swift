import BackupCrypto
import Durability
import Envelope
import Foundation
import XCTest

/// Keyrings, several EDKs, the local KMS, rewrap (spec/FORMAT.md §3.5–§3.7).
final class KeyringTests: XCTestCase {
    var dir = ""

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("kms-\(UUID().uuidString)").path
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

    func testSeveralEDKsEachOpenTheMessage() throws {
        let a = testKeyring("a", byte: 1), b = testKeyring("b", byte: 2, namespace: "other"), c = testKeyring("c", byte: 3)
        let m = try EnvelopeEncryptor.encrypt(pattern(500), keyrings: [a, b, c], frameLength: 64)
        let h = try HeaderReader.read(from: MemorySource(m))
        XCTAssertEqual(h.encryptedDataKeys.map(\.providerID), ["hsm-backup", "other", "hsm-backup"])
        XCTAssertEqual(h.encryptedDataKeys.map(\.rawAESKeyName), ["a", "b", "c"])
        for ring in [a, b, c] {
            let d = try EnvelopeDecryptor(source: MemorySource(m), keyrings: [ring])
            XCTAssertEqual(d.openedBy, ring.keyDescription)
            let sink = MemorySink()
            try d.decryptAll(to: sink)
            XCTAssertEqual(sink.bytes, pattern(500))
        }
    }

    func testWrongKeySaysWhichKeysWouldOpenIt() throws {
        let m = try EnvelopeEncryptor.encrypt([1, 2, 3], keyrings: [testKeyring("prod", byte: 1), testKeyring("escrow", byte: 2)])
        let e = assertEnvelopeError(.noUsableKey) { try EnvelopeDecryptor.decrypt(m, keyrings: [testKeyring("other", byte: 1)]) }
        XCTAssertTrue(e?.reason.contains("hsm-backup key \"prod\"") ?? false)
        XCTAssertTrue(e?.reason.contains("hsm-backup key \"escrow\"") ?? false)
        // Same name, wrong bytes: tried and failed.
        let e2 = assertEnvelopeError(.noUsableKey) { try EnvelopeDecryptor.decrypt(m, keyrings: [testKeyring("prod", byte: 9)]) }
        XCTAssertTrue(e2?.reason.contains("Tried and failed") ?? false)
    }

    func testRawAESEDKLayout() throws {
        let ring = testKeyring("k")
        let dk = try DataKey.random()
        let edk = try ring.wrap(dk, context: try EncryptionContext(["b": "2", "a": "1"]))
        XCTAssertEqual(edk.providerID, "hsm-backup")
        XCTAssertEqual(Array(edk.providerInfo.prefix(9)), [0x6b, 0, 0, 0, 0x80, 0, 0, 0, 0x0c])
        XCTAssertEqual(edk.providerInfo.count, 1 + 20)
        XCTAssertEqual(edk.ciphertext.count, 48)
        guard case .opened(let back) = try ring.unwrap(edk, context: try EncryptionContext(["a": "1", "b": "2"])) else {
            return XCTFail("did not open")
        }
        XCTAssertTrue(back.constantTimeEquals(dk))
        guard case .failed = try ring.unwrap(edk, context: try EncryptionContext(["a": "1"])) else { return XCTFail("opened with another context") }
    }

    func testLocalKMSLifecycle() throws {
        let kms = LocalKMS(directory: dir)
        let info = try kms.createKey("prod")
        XCTAssertEqual(info.primaryVersion, 1)
        assertEnvelopeError(.keyExists) { try kms.createKey("prod") }
        assertEnvelopeError(.invalidKeyName) { try kms.createKey("../x") }
        assertEnvelopeError(.keyNotFound) { try kms.info("nope") }

        let m1 = try EnvelopeEncryptor.encrypt(pattern(100), keyrings: [try kms.keyring("prod")])
        XCTAssertEqual(try HeaderReader.read(from: MemorySource(m1)).encryptedDataKeys[0].rawAESKeyName, "prod/v1")
        XCTAssertEqual(try HeaderReader.read(from: MemorySource(m1)).encryptedDataKeys[0].providerID, LocalKMS.namespace)

        XCTAssertEqual(try kms.rotate("prod").primaryVersion, 2)
        let m2 = try EnvelopeEncryptor.encrypt(pattern(100), keyrings: [try kms.keyring("prod")])
        XCTAssertEqual(try HeaderReader.read(from: MemorySource(m2)).encryptedDataKeys[0].rawAESKeyName, "prod/v2")
        // Old versions still open old messages, through the key's keyring or the whole keystore.
        XCTAssertEqual(try EnvelopeDecryptor.decrypt(m1, keyrings: [try kms.keyring("prod")]).plaintext, pattern(100))
        XCTAssertEqual(try EnvelopeDecryptor.decrypt(m2, keyrings: [kms.decryptionKeyring]).plaintext, pattern(100))

        try kms.setEnabled("prod", version: 1, enabled: false)
        assertEnvelopeError(.keyVersionDisabled) { try EnvelopeDecryptor.decrypt(m1, keyrings: [kms.decryptionKeyring]) }
        XCTAssertNoThrow(try EnvelopeDecryptor.decrypt(m2, keyrings: [kms.decryptionKeyring]))
        try kms.setEnabled("prod", version: 2, enabled: false)
        assertEnvelopeError(.keyVersionDisabled) { try EnvelopeEncryptor.encrypt([], keyrings: [try kms.keyring("prod")]) }
        try kms.setEnabled("prod", version: 1, enabled: true)
        XCTAssertEqual(try EnvelopeDecryptor.decrypt(m1, keyrings: [kms.decryptionKeyring]).plaintext, pattern(100))
        XCTAssertEqual(try kms.info("prod").primaryVersion, 1)

        // The exported bytes open the EDK as a plain raw AES keyring (what the SDK does).
        let (v, key) = try kms.exportKey("prod", version: 1)
        XCTAssertEqual(v, 1)
        let raw = try RawAESKeyring(namespace: LocalKMS.namespace, name: "prod/v1", wrappingKey: key)
        XCTAssertEqual(try EnvelopeDecryptor.decrypt(m1, keyrings: [raw]).plaintext, pattern(100))

        try kms.createKey("escrow")
        XCTAssertEqual(try kms.listKeys().map(\.name), ["escrow", "prod"])
        // Files are owner-only.
        for path in [dir + "/keys", dir + "/keys/prod", dir + "/keys/prod/v1.key", dir + "/keys/prod/key.json"] {
            let mode = (try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as! NSNumber).intValue
            XCTAssertEqual(mode & 0o077, 0, path)
        }
    }

    /// Rotations at once (here threads; separate processes take the same lock) never share a
    /// version number or drop each other's version: every version made is listed, its key file
    /// is its own, and a message made under any of them opens. Two creates of one key: one wins.
    func testConcurrentRotationsKeepEveryVersion() throws {
        final class Tally: @unchecked Sendable {
            let lock = NSLock()
            var errors: [String] = []
            var created = 0
        }
        let dir = self.dir
        let kms = LocalKMS(directory: dir)
        try kms.createKey("busy")
        let rotations = 8
        let tally = Tally()
        DispatchQueue.concurrentPerform(iterations: rotations) { _ in
            do { try LocalKMS(directory: dir).rotate("busy") } catch {
                tally.lock.lock(); tally.errors.append("\(error)"); tally.lock.unlock()
            }
        }
        XCTAssertEqual(tally.errors, [])
        let info = try kms.info("busy")
        XCTAssertEqual(info.versions.map(\.version), Array(1...(rotations + 1)))
        var keys = Set<[UInt8]>()
        for v in info.versions {
            let k = try kms.exportKey("busy", version: v.version).key
            keys.insert(k.withUnsafeBytes { Array($0) })
        }
        XCTAssertEqual(keys.count, rotations + 1, "every version has its own key")
        DispatchQueue.concurrentPerform(iterations: 4) { _ in
            if (try? LocalKMS(directory: dir).createKey("once")) != nil { tally.lock.lock(); tally.created += 1; tally.lock.unlock() }
        }
        XCTAssertEqual(tally.created, 1)
        XCTAssertEqual(try kms.info("once").versions.count, 1)
    }

    /// A rotate (or create) killed between its key file and key.json leaves a key file no version
    /// names: the next rotate skips that number and works; the orphan is left alone.
    func testAnInterruptedRotateDoesNotBlockTheNext() throws {
        let kms = LocalKMS(directory: dir)
        try kms.createKey("k")
        try AtomicFile.write([UInt8](repeating: 7, count: 32), to: dir + "/keys/k/v2.key") // the orphan
        XCTAssertEqual(try kms.rotate("k").versions.map(\.version), [1, 3])
        XCTAssertEqual(try AtomicFile.read(dir + "/keys/k/v2.key"), [UInt8](repeating: 7, count: 32))
        // A create killed early looks like a key whose key.json was lost: refused, not taken over.
        try FileManager.default.createDirectory(atPath: dir + "/keys/fresh", withIntermediateDirectories: true)
        try AtomicFile.write([UInt8](repeating: 8, count: 32), to: dir + "/keys/fresh/v1.key")
        assertEnvelopeError(.keystoreCorrupt) { try kms.createKey("fresh") }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir + "/keys/fresh"), ["v1.key"])
    }

    /// `create-key` makes a key only when there is positively none. A key.json that does not
    /// parse, one that names another key (keys/old copied to keys/prod), one that cannot be read,
    /// and key versions with no key.json are reported with their own code, and nothing on disk
    /// changes: a key.json listing only a new version would drop the old ones, and with them
    /// every archive made under them.
    func testCreateKeyRefusesAKeyItCannotReadAndChangesNothing() throws {
        let kms = LocalKMS(directory: dir)
        try kms.createKey("old")
        try kms.rotate("old")
        let m = try EnvelopeEncryptor.encrypt(pattern(100), keyrings: [try kms.keyring("old")])
        try FileManager.default.copyItem(atPath: dir + "/keys/old", toPath: dir + "/keys/prod")
        try kms.createKey("bad")
        try AtomicFile.write(Array("{\"name\": ".utf8), to: dir + "/keys/bad/key.json")
        try kms.createKey("lost")
        try kms.rotate("lost")
        try FileManager.default.removeItem(atPath: dir + "/keys/lost/key.json")
        try kms.createKey("unreadable")
        try FileManager.default.removeItem(atPath: dir + "/keys/unreadable/key.json")
        try FileManager.default.createDirectory(atPath: dir + "/keys/unreadable/key.json", withIntermediateDirectories: false)
        let before = try snapshot(dir + "/keys")

        for name in ["prod", "bad"] {
            let e = assertEnvelopeError(.keystoreCorrupt, name) { try kms.createKey(name) }
            XCTAssertTrue(e?.reason.contains("keys/\(name)/key.json") ?? false, "\(e?.reason ?? "")")
            XCTAssertEqual(e?.reason.contains("key \"old\", not \"prod\""), name == "prod", "\(e?.reason ?? "")")
        }
        let lost = assertEnvelopeError(.keystoreCorrupt) { try kms.createKey("lost") }
        XCTAssertTrue(lost?.reason.contains(dir + "/keys/lost") ?? false, "names the directory: \(lost?.reason ?? "")")
        XCTAssertTrue(lost?.reason.contains("v1.key, v2.key") ?? false, "\(lost?.reason ?? "")")
        assertEnvelopeError(.io) { try kms.createKey("unreadable") }
        XCTAssertEqual(try snapshot(dir + "/keys"), before, "a refused create-key changes nothing")
        XCTAssertEqual(try EnvelopeDecryptor.decrypt(m, keyrings: [try kms.keyring("old")]).plaintext, pattern(100))
    }

    /// Every file and directory under `root` (the lock file aside) with its bytes.
    private func snapshot(_ root: String) throws -> [String: Data] {
        var out: [String: Data] = [:]
        for case let rel as String in FileManager.default.enumerator(atPath: root)! where !rel.hasSuffix(".lock") {
            var isDir: ObjCBool = false
            _ = FileManager.default.fileExists(atPath: root + "/" + rel, isDirectory: &isDir)
            out[rel] = isDir.boolValue ? Data("<dir>".utf8) : try Data(contentsOf: URL(fileURLWithPath: root + "/" + rel))
        }
        return out
    }

    /// Raw AES keyrings match an EDK by the bytes of its provider ID and key name, as the SDKs do:
    /// Swift's `==` takes NFC "café" for NFD "café" (canonical equivalence), the format does not.
    func testKeyNamesAndNamespacesMatchByBytes() throws {
        let nfc = "caf\u{e9}", nfd = "cafe\u{301}"
        XCTAssertEqual(nfc, nfd, "Swift calls them equal")
        for (writer, reader) in [(testKeyring(nfd, byte: 1), testKeyring(nfc, byte: 1)),
                                 (testKeyring("k", byte: 1, namespace: nfd), testKeyring("k", byte: 1, namespace: nfc))] {
            let m = try EnvelopeEncryptor.encrypt(pattern(10), keyrings: [writer])
            let edk = try HeaderReader.read(from: MemorySource(m)).encryptedDataKeys[0]
            guard case .notMine = try reader.unwrap(edk, context: try HeaderReader.read(from: MemorySource(m)).context) else {
                return XCTFail("\(reader.keyDescription) took the EDK of \(writer.keyDescription)")
            }
            let e = assertEnvelopeError(.noUsableKey) { try EnvelopeDecryptor.decrypt(m, keyrings: [reader]) }
            XCTAssertFalse(e?.reason.contains("Tried and failed") ?? true, "not tried at all")
            XCTAssertEqual(try EnvelopeDecryptor.decrypt(m, keyrings: [writer]).plaintext, pattern(10))
        }
        // key.json must name its directory's key by bytes too: KELVIN SIGN is `==` to "K".
        let kelvin = Array(#"{"name": "\u212Aey", "created": "2026-01-01T00:00:00Z", "versions": []}"#.utf8)
        XCTAssertEqual("\u{212A}ey", "Key", "Swift calls them equal")
        assertEnvelopeError(.keystoreCorrupt) { try LocalKMS.parseKeyInfo(kelvin, name: "Key", path: "key.json") }
        XCTAssertNil(LocalKMS.parseEDKKeyName("prod/\u{301}v1"))
        XCTAssertNil(LocalKMS.parseEDKKeyName("prod/v1\u{301}"))
        XCTAssertEqual(LocalKMS.parseEDKKeyName("prod/v12")?.version, 12)
    }

    /// `AtomicFile.create` never replaces: the second create of a name fails `exists` and the
    /// first file stays.
    func testAtomicCreateNeverReplaces() throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try AtomicFile.create([1], at: dir + "/k")
        XCTAssertThrowsError(try AtomicFile.create([2], at: dir + "/k")) { XCTAssertEqual(($0 as? FileError)?.code, .exists) }
        XCTAssertEqual(try AtomicFile.read(dir + "/k"), [1])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), ["k"], "no temp left")
    }

    func testRewrapWritesANewMessageUnderNewKeys() throws {
        let kms = LocalKMS(directory: dir)
        try kms.createKey("old")
        try kms.createKey("new")
        try kms.createKey("dr")
        for suite in [AlgorithmSuite.committing, .committingSigned] {
            let plain = pattern(5000)
            let ctx = try EncryptionContext(["tenant": "acme"])
            let m = try EnvelopeEncryptor.encrypt(plain, keyrings: [try kms.keyring("old")], context: ctx, suite: suite, frameLength: 512)
            let oldHeader = try HeaderReader.read(from: MemorySource(m))
            let sink = MemorySink()
            let newHeader = try Rewrap.rewrap(source: MemorySource(m), sink: sink, keyrings: [kms.decryptionKeyring],
                                              newKeyrings: [try kms.keyring("new"), try kms.keyring("dr")])
            let out = sink.bytes
            XCTAssertEqual(try HeaderReader.read(from: MemorySource(out)).bytes, newHeader.bytes)
            XCTAssertEqual(newHeader.encryptedDataKeys.map(\.rawAESKeyName), ["new/v1", "dr/v1"])
            XCTAssertEqual(newHeader.suite, suite)
            XCTAssertEqual(newHeader.frameLength, 512)
            XCTAssertEqual(newHeader.context.value(forKey: "tenant"), "acme")
            // A new message: another message ID, so another content key and commitment key (and,
            // from the fresh data key, a commitment the old data key cannot reproduce).
            XCTAssertNotEqual(newHeader.messageID, oldHeader.messageID)
            XCTAssertNotEqual(newHeader.suiteData, oldHeader.suiteData)
            XCTAssertNotEqual(newHeader.headerTag, oldHeader.headerTag)
            if suite.signs {
                XCTAssertNotEqual(newHeader.context.value(forKey: EncryptionContext.publicKeyKey),
                                  oldHeader.context.value(forKey: EncryptionContext.publicKeyKey))
            }
            XCTAssertEqual(out.count, m.count - oldHeader.byteCount + newHeader.byteCount + (suite.signs ? out.count - bodyEnd(out) - (m.count - bodyEnd(m)) : 0))
            XCTAssertEqual(try EnvelopeDecryptor.decrypt(out, keyrings: [try kms.keyring("dr")]).plaintext, plain)
            XCTAssertEqual(try EnvelopeDecryptor.decrypt(out, keyrings: [try kms.keyring("new")]).plaintext, plain)
            assertEnvelopeError(.noUsableKey) { try EnvelopeDecryptor.decrypt(out, keyrings: [try kms.keyring("old")]) }
        }
    }

    /// A non-framed v2 body (the SDKs can write one; we only read it) comes out framed.
    func testRewrapOfANonFramedMessageWritesAFramedOne() throws {
        let v = try Vector("v2_0478_rawaes_nonframed")
        let sink = MemorySink()
        let b = testKeyring("b", byte: 2)
        let h = try Rewrap.rewrap(source: MemorySource(v.message), sink: sink, keyrings: v.keyrings, newKeyrings: [b])
        XCTAssertEqual(h.contentType, .framed)
        XCTAssertEqual(h.frameLength, EnvelopeEncryptor.defaultFrameLength)
        XCTAssertEqual(try EnvelopeDecryptor.decrypt(sink.bytes, keyrings: [b]).plaintext, v.plaintext)
    }

    /// An EDK for a key version the local KMS holds that does not open is an altered header
    /// (its context is the EDK's AAD), a verification failure; a raw key that does not open its
    /// EDK is just not the right key (spec/FORMAT.md §3.9).
    func testAnAlteredContextUnderAHeldLocalKeyIsNotAMissingKey() throws {
        let kms = LocalKMS(directory: dir)
        try kms.createKey("k")
        let ctx = try EncryptionContext(["tenant": "acme"])
        let m = try EnvelopeEncryptor.encrypt(pattern(100), keyrings: [try kms.keyring("k")], context: ctx)
        var altered = m
        let value = Array("acme".utf8)
        let at = try XCTUnwrap((0...(m.count - 4)).first { Array(m[$0..<($0 + 4)]) == value })
        altered[at + 3] = UInt8(ascii: "f")
        assertEnvelopeError(.encryptedDataKeyAuthenticationFailed) { try EnvelopeDecryptor.decrypt(altered, keyrings: [kms.decryptionKeyring]) }
        assertEnvelopeError(.encryptedDataKeyAuthenticationFailed) { try EnvelopeDecryptor.decrypt(altered, keyrings: [try kms.keyring("k")]) }
        XCTAssertEqual(try EnvelopeDecryptor.decrypt(m, keyrings: [kms.decryptionKeyring]).plaintext, pattern(100))
        let raw = testKeyring("r", byte: 1)
        let m2 = try EnvelopeEncryptor.encrypt(pattern(100), keyrings: [raw], context: ctx)
        assertEnvelopeError(.noUsableKey) { try EnvelopeDecryptor.decrypt(m2, keyrings: [testKeyring("r", byte: 2)]) }
    }

    func testRewrapFileIsAtomicAndRefusesADamagedBody() throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let a = testKeyring("a", byte: 1), b = testKeyring("b", byte: 2)
        let m = try EnvelopeEncryptor.encrypt(pattern(3000), keyrings: [a], suite: .committingSigned, frameLength: 256)
        let path = dir + "/x.hsmbak"
        try Data(m).write(to: URL(fileURLWithPath: path))
        try Rewrap.rewrapFile(at: path, keyrings: [a], newKeyrings: [b])
        let out = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        XCTAssertEqual(try EnvelopeDecryptor.decrypt(out, keyrings: [b]).plaintext, pattern(3000))
        var bad = out
        bad[bad.count - 200] ^= 1
        try Data(bad).write(to: URL(fileURLWithPath: path))
        assertEnvelopeError(.frameAuthenticationFailed) { try Rewrap.rewrapFile(at: path, keyrings: [b], newKeyrings: [a]) }
        XCTAssertEqual([UInt8](try Data(contentsOf: URL(fileURLWithPath: path))), bad)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), ["x.hsmbak"])
    }

    /// The link refusals hold for the file rewrapFile opened, not for what the path named a moment
    /// earlier: here another thread keeps swapping the path between a regular file and a symbolic
    /// link to (or a third name of) another message. Every rewrap either is refused or rewraps
    /// the regular file; none reads the other message through the link or the extra name.
    func testRewrapFileJudgesTheFileItOpenedNotThePathBefore() throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let a = testKeyring("a", byte: 1)
        func message(_ which: String) throws -> [UInt8] {
            try EnvelopeEncryptor.encrypt(pattern(64), keyrings: [a], context: try EncryptionContext(["which": which]))
        }
        let plain = try message("plain"), other = try message("other")
        let path = dir + "/m.env", linked = dir + "/linked.env", hard = dir + "/hard.env"
        try AtomicFile.write(other, to: linked)
        try AtomicFile.write(other, to: hard)
        XCTAssertEqual(link(hard, dir + "/hard-2.env"), 0) // so that a name swapped in is a third one

        // The plain refusals, with their codes and messages as before.
        XCTAssertEqual(symlink(linked, path), 0)
        let e = assertEnvelopeError(.invalidArgument) { try Rewrap.rewrapFile(at: path, keyrings: [a], newKeyrings: [a]) }
        XCTAssertTrue(e?.reason.contains("is a symbolic link (to \(linked))") ?? false, "\(e?.reason ?? "")")
        try FileManager.default.removeItem(atPath: path)
        XCTAssertEqual(link(hard, path), 0)
        let h = assertEnvelopeError(.invalidArgument) { try Rewrap.rewrapFile(at: path, keyrings: [a], newKeyrings: [a]) }
        XCTAssertTrue(h?.reason.contains("has 3 hard links") ?? false, "\(h?.reason ?? "")")

        final class Flag: @unchecked Sendable {
            let lock = NSLock()
            var stop = false
            var isStopped: Bool { lock.lock(); defer { lock.unlock() }; return stop }
        }
        for kind in ["symbolic", "hard"] {
            let flag = Flag()
            let swapper = Thread { [dir] in
                var i = 0
                while !flag.isStopped {
                    i += 1
                    let tmp = dir + "/swap-\(i)"
                    if i % 2 == 0 {
                        _ = kind == "symbolic" ? symlink(linked, tmp) : link(hard, tmp)
                    } else {
                        try? Data(plain).write(to: URL(fileURLWithPath: tmp))
                    }
                    rename(tmp, path)
                }
            }
            swapper.start()
            var rewrapped = 0, refused = 0
            let deadline = Date().addingTimeInterval(1)
            while Date() < deadline {
                do {
                    let which = try Rewrap.rewrapFile(at: path, keyrings: [a], newKeyrings: [a]).context.value(forKey: "which")
                    XCTAssertEqual(which, "plain", "through a \(kind) link, rewrapFile read the message the link names")
                    if which != "plain" { break }
                    rewrapped += 1
                } catch let e as EnvelopeError {
                    XCTAssertEqual(e.code, .invalidArgument, "\(e)")
                    refused += 1
                }
            }
            flag.lock.lock(); flag.stop = true; flag.lock.unlock()
            while !swapper.isFinished { usleep(1000) }
            XCTAssertGreaterThan(refused, 0, kind)
            print("\(kind) links swapped in: \(rewrapped) rewrapped, \(refused) refused")
        }
        for file in [linked, hard] {
            XCTAssertEqual(try EnvelopeDecryptor.decrypt(try AtomicFile.read(file), keyrings: [a]).header.context.value(forKey: "which"), "other")
        }
    }

    /// Offset of the footer of a framed signed message (walks the frames without keys).
    private func bodyEnd(_ m: [UInt8]) -> Int {
        let h = try! HeaderReader.read(from: MemorySource(m))
        var o = h.byteCount
        let f = Int(h.frameLength)
        while true {
            if m[o..<(o + 4)].elementsEqual([255, 255, 255, 255]) {
                let len = Int(m[o + 20]) << 24 | Int(m[o + 21]) << 16 | Int(m[o + 22]) << 8 | Int(m[o + 23])
                return o + 24 + len + 16
            }
            o += 4 + 12 + f + 16
        }
    }

    func testArchiveMetadataRoundTripAndMismatch() throws {
        var md = ArchiveMetadata(backupID: "backup-123", clusterID: "cluster-1", hsmID: "hsm-a", manufacturer: "Acme HSM",
                                 model: "X1", firmware: "2.3.4", created: "2026-11-29T19:05:07Z")
        md.payloadBytes = 123_456
        md.objectCount = 42
        let ctx = try md.merged(into: try EncryptionContext(["operator-label": "prod"]))
        XCTAssertEqual(ctx.value(forKey: "hsmbackup.format"), "hsmbak")
        XCTAssertEqual(ctx.value(forKey: "operator-label"), "prod")
        let back = try ArchiveMetadata(context: ctx)
        XCTAssertEqual(back, md)

        var inner = md
        inner.objectCount = nil
        XCTAssertNoThrow(try md.checkAgrees(with: inner))
        inner.hsmID = "hsm-b"
        let e = assertEnvelopeError(.archiveMetadataMismatch) { try md.checkAgrees(with: inner) }
        XCTAssertTrue(e?.reason.contains("hsmbackup.hsm-id") ?? false)

        assertEnvelopeError(.archiveMetadataInvalid) { try ArchiveMetadata(context: ctx.removing("hsmbackup.hsm-id")) }
        assertEnvelopeError(.archiveMetadataInvalid) { try ArchiveMetadata(context: try ctx.setting("hsmbackup.object-count", to: "042")) }
        assertEnvelopeError(.archiveMetadataInvalid) { try ArchiveMetadata(context: try ctx.setting("hsmbackup.format-version", to: "2")) }
        assertEnvelopeError(.archiveMetadataInvalid) { try ArchiveMetadata(context: try ctx.setting("hsmbackup.colour", to: "red")) }
        assertEnvelopeError(.archiveMetadataInvalid) { try ArchiveMetadata(context: try ctx.setting("hsmbackup.created", to: "yesterday")) }
        assertEnvelopeError(.archiveMetadataInvalid) { try md.merged(into: try EncryptionContext(["hsmbackup.x": "1"])) }
        // Keys of earlier drafts that no writer wrote (§3.8): unknown now, so refused.
        for key in ["hsmbackup.inner-bytes", "hsmbackup.copy-of", "hsmbackup.copy-source", "hsmbackup.copied-at"] {
            assertEnvelopeError(.archiveMetadataInvalid) { try ArchiveMetadata(context: try ctx.setting(key, to: "1")) }
        }
        // The reserved prefix is 10 bytes: a combining mark after it does not take a key out of
        // it (by Characters, "hsmbackup.\u{301}x" does not "have the prefix" "hsmbackup.").
        let marked = "hsmbackup.\u{301}x"
        XCTAssertFalse(marked.hasPrefix(ArchiveMetadata.prefix), "Swift says it has no prefix")
        assertEnvelopeError(.archiveMetadataInvalid) { try md.merged(into: try EncryptionContext([marked: "1"])) }
        assertEnvelopeError(.archiveMetadataInvalid) { try ArchiveMetadata(context: try ctx.setting(marked, to: "1")) }
        assertEnvelopeError(.archiveMetadataInvalid) { try ArchiveMetadata(context: try ctx.setting("hsmbackup.format\u{301}", to: "1")) }
        // Operator keys follow §3.2.2 only: an empty value is theirs to use.
        XCTAssertEqual(try ArchiveMetadata(context: try ctx.setting("operator-note", to: "")), md)

        // Readable from the header alone, with no key.
        let m = try EnvelopeEncryptor.encrypt(pattern(10), keyrings: [testKeyring()], context: ctx)
        XCTAssertEqual(try ArchiveMetadata(context: try HeaderReader.read(from: MemorySource(m)).context), md)
    }
}

extension KeyringTests {
    /// `created` must name a real instant (§3.8.1); the identity strings obey §4.3.2.
    func testArchiveMetadataTimesAreRealDatesAndIdentitiesFollowTheirRules() throws {
        let md = ArchiveMetadata(backupID: "b1", clusterID: "c1", hsmID: "h1", manufacturer: "M", model: "m", firmware: "1",
                                 created: "2026-01-01T00:00:00Z")
        let ctx = try md.merged()
        for good in ["1970-01-01T00:00:00Z", "2024-02-29T23:59:59Z", "2000-02-29T12:00:00Z", "9999-12-31T23:59:59Z"] {
            XCTAssertNoThrow(try ArchiveMetadata(context: try ctx.setting("hsmbackup.created", to: good)), good)
        }
        for bad in ["1969-12-31T23:59:59Z", "2026-02-29T00:00:00Z", "1900-02-29T00:00:00Z", "2026-13-01T00:00:00Z",
                    "2026-04-31T00:00:00Z", "2026-00-10T00:00:00Z", "2026-01-00T00:00:00Z", "2026-01-01T24:00:00Z",
                    "2026-01-01T00:60:00Z", "2026-01-01T00:00:60Z", "2026-01-01 00:00:00Z", "2026-01-01T00:00:00+00:00"] {
            assertEnvelopeError(.archiveMetadataInvalid, bad) { try ArchiveMetadata(context: try ctx.setting("hsmbackup.created", to: bad)) }
        }
        for (key, bad) in [("hsmbackup.cluster-id", "../x"), ("hsmbackup.cluster-id", ".hidden"), ("hsmbackup.cluster-id", "café"),
                           ("hsmbackup.cluster-id", String(repeating: "c", count: 129)), ("hsmbackup.hsm-id", String(repeating: "h", count: 129)),
                           ("hsmbackup.hsm-id", "a\nb"), ("hsmbackup.model", String(repeating: "m", count: 257)),
                           ("hsmbackup.manufacturer", "acme\u{85}")] {
            assertEnvelopeError(.archiveMetadataInvalid, key) { try ArchiveMetadata(context: try ctx.setting(key, to: bad)) }
        }
        XCTAssertNoThrow(try ArchiveMetadata(context: try ctx.setting("hsmbackup.hsm-id", to: String(repeating: "é", count: 64))))
    }

    func testArchiveMetadataReadFromTheHeaderOnly() throws {
        let md = ArchiveMetadata(backupID: "b1", clusterID: "c1", hsmID: "h1", manufacturer: "M", model: "m", firmware: "1",
                                 created: "2026-01-01T00:00:00Z")
        let m = try EnvelopeEncryptor.encrypt(pattern(5000), keyrings: [testKeyring()], context: try md.merged(), frameLength: 128)
        let src = MemorySource(m)
        let (h, back) = try ArchiveMetadata.read(from: src)
        XCTAssertEqual(back, md)
        XCTAssertEqual(src.bytesRead, h.byteCount)
        let plain = try EnvelopeEncryptor.encrypt([1], keyrings: [testKeyring()])
        assertEnvelopeError(.archiveMetadataInvalid) { try ArchiveMetadata.read(from: MemorySource(plain)) }
    }
}
