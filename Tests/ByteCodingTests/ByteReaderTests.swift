import ByteCoding
import Foundation
import Durability
import XCTest
#if canImport(Glibc)
import Glibc
#endif

final class ByteReaderTests: XCTestCase {
    func testReadsBigEndianAndTracksAbsoluteOffsets() throws {
        var w = ByteWriter()
        w.writeUInt8(1); w.writeUInt16(0x0203); w.writeUInt32(0x0405_0607); w.writeUInt64(0x0809_0a0b_0c0d_0e0f)
        try w.writeString16("héllo", "name")
        var r = ByteReader(w.bytes, baseOffset: 100)
        XCTAssertEqual(try r.readUInt8("a"), 1)
        XCTAssertEqual(try r.readUInt16("b"), 0x0203)
        XCTAssertEqual(try r.readUInt32("c"), 0x0405_0607)
        XCTAssertEqual(r.offset, 107)
        XCTAssertEqual(try r.readUInt64("d"), 0x0809_0a0b_0c0d_0e0f)
        XCTAssertEqual(try r.readString16("name"), "héllo")
        XCTAssertNoThrow(try r.expectEnd("record"))
    }

    func testTruncationNamesFieldAndOffsetAndLeavesCursor() {
        var r = ByteReader([0, 5, 1, 2], baseOffset: 10)
        XCTAssertThrowsError(try r.readLengthPrefixed16("label")) { e in
            let err = e as! ByteCodingError
            XCTAssertEqual(err.code, .truncated)
            XCTAssertEqual(err.field, "label")
            XCTAssertEqual(err.offset, 12)
        }
        XCTAssertEqual(r.offset, 10, "a failed read leaves the cursor where it was")
    }

    func testLimitsAndTrailingBytes() {
        var r = ByteReader([0, 9] + [UInt8](repeating: 0, count: 9))
        XCTAssertThrowsError(try r.readLengthPrefixed16("blob", limit: 8)) { XCTAssertEqual(($0 as! ByteCodingError).code, .limitExceeded) }
        var r2 = ByteReader([0, 1, 7, 9])
        XCTAssertEqual(try r2.readLengthPrefixed16("blob"), [7])
        XCTAssertThrowsError(try r2.expectEnd("record")) { e in
            XCTAssertEqual((e as! ByteCodingError).code, .trailingBytes)
            XCTAssertEqual((e as! ByteCodingError).offset, 3)
        }
        var r3 = ByteReader([0, 2, 0xff, 0xfe])
        XCTAssertThrowsError(try r3.readString16("name")) { XCTAssertEqual(($0 as! ByteCodingError).code, .invalidUTF8) }
        var r4 = ByteReader([0x48, 0x53])
        XCTAssertThrowsError(try r4.expect([0x48, 0x42], "magic")) { XCTAssertEqual(($0 as! ByteCodingError).code, .unexpectedValue) }
        XCTAssertEqual(r4.offset, 0)
    }

    func testWriterRefusesOversizedFields() {
        var w = ByteWriter()
        XCTAssertThrowsError(try w.writeLengthPrefixed16([UInt8](repeating: 0, count: 70_000), "blob"))
        XCTAssertEqual(w.count, 0)
    }

    func testHexRoundTripAndRejects() {
        XCTAssertEqual(Hex.decode("00ffA0"), [0, 255, 160])
        XCTAssertEqual(Hex.encode([0, 255, 160]), "00ffa0")
        XCTAssertNil(Hex.decode("abc"))
        XCTAssertNil(Hex.decode("zz"))
    }

    func testAtomicFileIsOwnerOnlyAndLeavesNoTempOnAbort() throws {
        let dir = NSTemporaryDirectory() + "atomic-\(UUID().uuidString)"
        try AtomicFile.makeDirectory(dir)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let old = umask(0)
        defer { umask(old) }
        try AtomicFile.write([1, 2, 3], to: dir + "/f")
        XCTAssertEqual(try AtomicFile.read(dir + "/f"), [1, 2, 3])
        let attrs = try FileManager.default.attributesOfItem(atPath: dir + "/f")
        XCTAssertEqual((attrs[.posixPermissions] as? NSNumber)?.intValue, 0o600)
        do {
            let w = try AtomicFile.Writer(path: dir + "/f")
            try w.append([9, 9])
            w.abort()
        }
        XCTAssertEqual(try AtomicFile.read(dir + "/f"), [1, 2, 3])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), ["f"])
        // A crash leaves a temp: the cleaner removes it.
        FileManager.default.createFile(atPath: dir + "/.f.tmp-dead", contents: Data([1]))
        XCTAssertEqual(try AtomicFile.removeStaleTemps(in: dir), [".f.tmp-dead"])
    }

    /// Issue 14 items 10 and 12: a FIFO, device or directory is never read (or waited on) and
    /// never replaced by a writer's rename.
    func testNonRegularFilesAreRefusedForReadingAndAsWriteTargets() throws {
        let dir = NSTemporaryDirectory() + "atomic-\(UUID().uuidString)"
        try AtomicFile.makeDirectory(dir)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let fifo = dir + "/fifo"
        XCTAssertEqual(mkfifo(fifo, 0o600), 0)
        for path in [fifo, dir, "/dev/null"] {
            XCTAssertThrowsError(try AtomicFile.read(path)) { XCTAssertEqual(($0 as? FileError)?.code, .notRegularFile, "\(path): \($0)") }
            XCTAssertThrowsError(try AtomicFile.Writer(path: path)) { XCTAssertEqual(($0 as? FileError)?.code, .notRegularFile, "\(path): \($0)") }
            XCTAssertThrowsError(try AtomicFile.checkInput(path)) { XCTAssertEqual(($0 as? FileError)?.code, .notRegularFile) }
        }
        var st = stat()
        XCTAssertEqual(lstat(fifo, &st), 0)
        XCTAssertEqual(st.st_mode & S_IFMT, S_IFIFO, "the FIFO is still a FIFO")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), ["fifo"], "no temp file left")
        XCTAssertEqual(symlink("loop-b", dir + "/loop-a"), 0)
        XCTAssertEqual(symlink("loop-a", dir + "/loop-b"), 0)
        XCTAssertThrowsError(try AtomicFile.read(dir + "/loop-a")) { XCTAssertEqual(($0 as? FileError)?.code, .symlinkLoop) }
        // A regular file and an absent path are fine targets.
        try AtomicFile.checkOutput(dir + "/absent")
        try AtomicFile.write([1], to: dir + "/f")
        try AtomicFile.checkOutput(dir + "/f")
        XCTAssertEqual(try AtomicFile.read(dir + "/f"), [1])
    }

    /// While a writer works, its file has no name where Linux allows it (O_TMPFILE), so a kill
    /// leaves nothing (not a temp holding part of a decrypted message); the commit still
    /// replaces the target whole. The named-temp fallback behaves the same at commit and abort.
    func testAWriterLeavesNoNamedTempWhileItWorks() throws {
        let dir = NSTemporaryDirectory() + "atomic-unnamed-\(UUID().uuidString)"
        try AtomicFile.makeDirectory(dir)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try AtomicFile.write([1], to: dir + "/f")
        for allowUnnamed in [true, false] {
            let w = try AtomicFile.Writer(path: dir + "/f", allowUnnamed: allowUnnamed)
            try w.append([7, 7, 7])
            let during = try FileManager.default.contentsOfDirectory(atPath: dir).sorted()
            if w.unnamed {
                XCTAssertEqual(during, ["f"], "an unnamed temp is invisible")
            } else {
                XCTAssertEqual(during.count, 2, "a named temp beside the target: \(during)")
            }
            XCTAssertEqual(try AtomicFile.read(dir + "/f"), [1], "the target is untouched until the commit")
            try w.commit()
            XCTAssertEqual(try AtomicFile.read(dir + "/f"), [7, 7, 7])
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), ["f"], "no temp left")
            let mode = (try FileManager.default.attributesOfItem(atPath: dir + "/f")[.posixPermissions] as? NSNumber)?.intValue
            XCTAssertEqual(mode, 0o600)
            let aborted = try AtomicFile.Writer(path: dir + "/f", allowUnnamed: allowUnnamed)
            try aborted.append([9])
            aborted.abort()
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), ["f"])
            XCTAssertEqual(try AtomicFile.read(dir + "/f"), [7, 7, 7])
            try AtomicFile.write([1], to: dir + "/f")
        }
    }

    /// An output named through a symbolic link replaces the link, never the file it names (a
    /// link planted in a shared directory cannot aim a root run at another file); a link to a
    /// directory or device, into /dev or /proc (`/dev/stdout` is `/proc/self/fd/1`), or a path
    /// under /proc, is refused before any temp file is made.
    func testOutputsReplaceLinksAndAreNeverMadeBesideStdout() throws {
        let dir = NSTemporaryDirectory() + "atomic-links-\(UUID().uuidString)"
        try AtomicFile.makeDirectory(dir)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try AtomicFile.write([1], to: dir + "/real")
        XCTAssertEqual(symlink("real", dir + "/link"), 0)
        XCTAssertEqual(symlink("link", dir + "/link2"), 0)
        XCTAssertEqual(symlink("nowhere", dir + "/dangling"), 0)
        try AtomicFile.write([2, 2], to: dir + "/link2")
        try AtomicFile.write([3], to: dir + "/dangling")
        var st = stat()
        for name in ["link2", "dangling"] {
            XCTAssertEqual(lstat(dir + "/" + name, &st), 0)
            XCTAssertEqual(st.st_mode & S_IFMT, S_IFREG, "\(name): the link was replaced by the output")
        }
        XCTAssertEqual(try AtomicFile.read(dir + "/real"), [1], "the file the link named is untouched")
        XCTAssertEqual(try AtomicFile.read(dir + "/link2"), [2, 2])
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/nowhere"), "nothing created where a link pointed")

        XCTAssertEqual(symlink(dir, dir + "/to-dir"), 0)
        XCTAssertEqual(symlink("/dev/stdout", dir + "/to-stdout"), 0)
        XCTAssertEqual(symlink("/dev/null", dir + "/to-null"), 0)
        for path in [dir + "/to-dir", dir + "/to-stdout", dir + "/to-null", "/dev/stdout", "/dev/fd/1",
                     "/proc/self/fd/1", "/proc/self/cwd/x"] {
            XCTAssertThrowsError(try AtomicFile.Writer(path: path), path) { e in
                XCTAssertEqual((e as? FileError)?.code, .notRegularFile, "\(path): \(e)")
            }
        }
        XCTAssertEqual(lstat("/dev/stdout", &st), 0)
        XCTAssertEqual(st.st_mode & S_IFMT, S_IFLNK, "/dev/stdout is untouched")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).sorted(),
                       ["dangling", "link", "link2", "real", "to-dir", "to-null", "to-stdout"], "no temp left")
        XCTAssertFalse(try FileManager.default.contentsOfDirectory(atPath: "/dev").contains { $0.contains(AtomicFile.tempMarker) })
        XCTAssertEqual(symlink("loop-b", dir + "/loop-a"), 0)
        XCTAssertEqual(symlink("loop-a", dir + "/loop-b"), 0)
        XCTAssertThrowsError(try AtomicFile.Writer(path: dir + "/loop-a")) { XCTAssertEqual(($0 as? FileError)?.code, .symlinkLoop) }
    }

    /// A target name near the file-name limit still gets a temp (its name is cut, not the target's).
    func testALongTargetNameIsWritten() throws {
        let dir = NSTemporaryDirectory() + "atomic-long-\(UUID().uuidString)"
        try AtomicFile.makeDirectory(dir)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let name = String(repeating: "é", count: 120) + ".bin" // 244 bytes
        for allowUnnamed in [true, false] {
            let w = try AtomicFile.Writer(path: dir + "/" + name, allowUnnamed: allowUnnamed)
            try w.append([1, 2])
            try w.commit()
            XCTAssertEqual(try AtomicFile.read(dir + "/" + name), [1, 2])
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), [name])
    }

    /// A file where a directory is wanted is refused as such (not reported later as a missing path).
    func testMakeDirectoryRefusesAFileOnTheWay() throws {
        let dir = NSTemporaryDirectory() + "atomic-mkdir-\(UUID().uuidString)"
        try AtomicFile.makeDirectory(dir + "/a")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try AtomicFile.write([1], to: dir + "/file")
        for path in [dir + "/file", dir + "/file/sub"] {
            XCTAssertThrowsError(try AtomicFile.makeDirectory(path)) { XCTAssertEqual(($0 as? FileError)?.code, .notDirectory, "\(path): \($0)") }
        }
        try AtomicFile.makeDirectory(dir + "/a") // an existing directory is fine
        XCTAssertEqual(symlink("a", dir + "/to-a"), 0)
        try AtomicFile.makeDirectory(dir + "/to-a/b") // so is a link to one
    }

    /// startWriteback (sync_file_range) between appends changes nothing in what is published,
    /// and an aborted writer that started write-back still leaves nothing behind.
    func testStartWritebackKeepsTheFileAtomicAndWhole() throws {
        let dir = NSTemporaryDirectory() + "atomic-\(UUID().uuidString)"
        try AtomicFile.makeDirectory(dir)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let piece = (0..<100_003).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let w = try AtomicFile.Writer(path: dir + "/f")
        w.startWriteback() // nothing written yet: a no-op
        for _ in 0..<3 {
            try w.append(piece)
            w.startWriteback()
        }
        w.startWriteback()
        try w.append([1])
        try w.commit()
        XCTAssertEqual(try AtomicFile.read(dir + "/f"), piece + piece + piece + [1])
        let a = try AtomicFile.Writer(path: dir + "/g")
        try a.append(piece)
        a.startWriteback()
        a.abort()
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), ["f"])
    }
}
