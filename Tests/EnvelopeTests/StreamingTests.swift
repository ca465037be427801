import BackupCrypto
import Envelope
import Foundation
import XCTest

/// Streaming round trips at several frame lengths (spec/FORMAT.md §3.3).
final class StreamingTests: XCTestCase {
    let ring = testKeyring()

    private func roundTrip(_ plaintext: [UInt8], frameLength: UInt32, signed: Bool, writeSize: Int,
                           file: StaticString = #filePath, line: UInt = #line) throws {
        let sink = MemorySink()
        let ctx = try EncryptionContext(["purpose": "stream", "ключ": "значение 😀"])
        let e = try EnvelopeEncryptor(sink: sink, keyrings: [ring], context: ctx,
                                      suite: signed ? .committingSigned : .committing, frameLength: frameLength)
        var i = 0
        while i < plaintext.count {
            let n = min(writeSize, plaintext.count - i)
            try e.write(Array(plaintext[i..<(i + n)]))
            i += n
        }
        try e.finish()
        XCTAssertEqual(e.messageByteCount, UInt64(sink.bytes.count), file: file, line: line)
        let d = try EnvelopeDecryptor(source: MemorySource(sink.bytes), keyrings: [ring])
        var out: [UInt8] = []
        var chunks = 0
        while let c = try d.nextChunk() {
            XCTAssertLessThanOrEqual(c.count, Int(frameLength), file: file, line: line)
            out += c
            chunks += 1
        }
        XCTAssertEqual(out, plaintext, "frame \(frameLength) size \(plaintext.count)", file: file, line: line)
        // Regular frames for every full frame, then one final frame (empty on an exact multiple).
        let expectedFrames = plaintext.count / Int(frameLength) + 1
        XCTAssertEqual(Int(d.framesRead), expectedFrames, file: file, line: line)
        XCTAssertEqual(chunks, expectedFrames, file: file, line: line)
        XCTAssertEqual(d.header.context.value(forKey: "ключ"), "значение 😀")
    }

    func testRoundTripsAtFrameLengthsOneAndSeven() throws {
        for fl: UInt32 in [1, 7] {
            for size in [0, 1, 6, 7, 8, 49, 300] {
                try roundTrip(pattern(size), frameLength: fl, signed: size % 2 == 0, writeSize: 5)
            }
        }
    }

    func testRoundTripsAt4096() throws {
        for size in [0, 4095, 4096, 4097, 3 * 4096, 100_000] {
            try roundTrip(pattern(size), frameLength: 4096, signed: size == 4096, writeSize: 1000)
        }
    }

    func testRoundTripsAtOneMiB() throws {
        let mib = 1 << 20
        for size in [0, mib, 2 * mib + 12345] {
            try roundTrip(pattern(size), frameLength: UInt32(mib), signed: size == mib, writeSize: 300_000)
        }
    }

    /// Whole frames are sealed straight from the caller's buffer and partial ones through the
    /// encryptor's own buffer: both paths, in any mix, give the identical message (same data key
    /// and message ID; the unsigned suite, so nothing is randomised).
    func testWritePatternsGiveIdenticalMessages() throws {
        let materials = try EncryptionMaterials.generate(keyrings: [ring], context: .empty, suite: .committing)
        let id = [UInt8](repeating: 0x42, count: 32)
        let plain = pattern(5 * 4096 + 1234)
        func message(_ pieces: [Int]) throws -> [UInt8] {
            let sink = MemorySink()
            let e = try EnvelopeEncryptor(sink: sink, materials: materials, frameLength: 4096, messageID: id)
            var i = 0, k = 0
            while i < plain.count {
                let m = min(pieces[k % pieces.count], plain.count - i)
                try e.write(Array(plain[i..<(i + m)]))
                i += m
                k += 1
            }
            try e.finish()
            return sink.bytes
        }
        let whole = try message([plain.count])
        XCTAssertEqual(try EnvelopeDecryptor.decrypt(whole, keyrings: [ring]).plaintext, plain)
        for pieces in [[1], [4095, 1, 4096, 3, 8192], [100, 10_000], [4096], [4097]] {
            XCTAssertEqual(try message(pieces), whole, "pieces \(pieces)")
        }
    }

    /// The file path (1 MiB blocks, read-ahead, buffered atomic output) gives the same bytes back
    /// at the default frame length, and `withNextChunk` lends exactly the frames `nextChunk` copies.
    func testFileRoundTripAtTheDefaultFrameLength() throws {
        XCTAssertEqual(EnvelopeEncryptor.defaultFrameLength % 128, 0, "the Python SDK encrypts only multiples of 128")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("env-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let fl = Int(EnvelopeEncryptor.defaultFrameLength)
        let plain = pattern(3 * EnvelopeFile.readChunkBytes + fl / 2 + 7)
        try Data(plain).write(to: URL(fileURLWithPath: dir + "/in"))
        let h = try EnvelopeFile.encrypt(input: dir + "/in", output: dir + "/msg", keyrings: [ring], context: .empty)
        XCTAssertEqual(h.frameLength, EnvelopeEncryptor.defaultFrameLength)
        let r = try EnvelopeFile.decrypt(input: dir + "/msg", output: dir + "/out", keyrings: [ring])
        XCTAssertEqual([UInt8](try Data(contentsOf: URL(fileURLWithPath: dir + "/out"))), plain)
        XCTAssertEqual(Int(r.frames), plain.count / fl + 1)
        let msg = [UInt8](try Data(contentsOf: URL(fileURLWithPath: dir + "/msg")))
        let a = try EnvelopeDecryptor(source: MemorySource(msg), keyrings: [ring])
        var b = try EnvelopeDecryptor(source: MemorySource(msg), keyrings: [ring], options: { var o = DecryptOptions(); o.readAheadBytes = 1 << 20; return o }())
        var lent: [[UInt8]] = [], copied: [[UInt8]] = []
        while let c = try a.nextChunk() { copied.append(c) }
        while let c = try b.withNextChunk({ Array($0) }) { lent.append(c) }
        XCTAssertEqual(lent, copied)
        XCTAssertEqual(lent.joined().count, plain.count)
        b = try EnvelopeDecryptor(source: MemorySource(msg), keyrings: [ring])
        XCTAssertNotNil(try b.withNextChunk { _ in true })
    }

    func testDecryptFileLeavesNoOutputOnFailure() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("env-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let plain = pattern(10_000)
        try Data(plain).write(to: URL(fileURLWithPath: dir + "/in"))
        try EnvelopeFile.encrypt(input: dir + "/in", output: dir + "/msg", keyrings: [ring], context: .empty, frameLength: 128)
        let r = try EnvelopeFile.decrypt(input: dir + "/msg", output: dir + "/out", keyrings: [ring])
        XCTAssertEqual([UInt8](try Data(contentsOf: URL(fileURLWithPath: dir + "/out"))), plain)
        XCTAssertEqual(r.plaintextBytes, 10_000)
        var bad = [UInt8](try Data(contentsOf: URL(fileURLWithPath: dir + "/msg")))
        bad[bad.count - 3] ^= 0xFF // final frame tag
        try Data(bad).write(to: URL(fileURLWithPath: dir + "/bad"))
        let e = assertEnvelopeError(.frameAuthenticationFailed) {
            try EnvelopeFile.decrypt(input: dir + "/bad", output: dir + "/out2", keyrings: [ring])
        }
        XCTAssertEqual(e?.frame, 79)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).sorted(), ["bad", "in", "msg", "out"])
        assertEnvelopeError(.noUsableKey) {
            try EnvelopeFile.decrypt(input: dir + "/msg", output: dir + "/out3", keyrings: [testKeyring(byte: 1)])
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out3"))
    }
}
