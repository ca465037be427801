import BackupCrypto
import Envelope
import XCTest

/// Keyless structure walk and bounded memory (spec/FORMAT.md §3.3, §3.9).
final class StructureTests: XCTestCase {
    func testWalkCountsFramesOfEveryV2Vector() throws {
        for name in Vector.names where !name.hasPrefix("v1_") {
            let v = try Vector(name)
            let s = try EnvelopeStructure.walk(MemorySource(v.message))
            let frames = (v.expected["frames"] as? [[String: Any]])?.count ?? 1
            XCTAssertEqual(Int(s.frameCount), frames, name)
            XCTAssertEqual(s.plaintextBytes, UInt64(v.plaintext.count), name)
            XCTAssertEqual(s.messageBytes, v.message.count, name)
            if !s.header.suite.signs && s.header.contentType == .framed {
                XCTAssertEqual(EnvelopeStructure.frameCount(header: s.header, messageBytes: UInt64(v.message.count)), s.frameCount, name)
            }
        }
    }

    func testWalkRefusesBrokenFramingWithoutAKey() throws {
        let m = try EnvelopeEncryptor.encrypt(pattern(100), keyrings: [testKeyring()], suite: .committingSigned, frameLength: 32)
        XCTAssertEqual(try EnvelopeStructure.walk(MemorySource(m)).frameCount, 4)
        let h = try HeaderReader.read(from: MemorySource(m)).byteCount
        var e = assertEnvelopeError(.missingFinalFrame) { try EnvelopeStructure.walk(MemorySource(Array(m.prefix(h + 64)))) }
        XCTAssertEqual(e?.frame, 2)
        e = assertEnvelopeError(.truncatedFrame) { try EnvelopeStructure.walk(MemorySource(Array(m.prefix(h + 70)))) }
        XCTAssertEqual(e?.frame, 2)
        assertEnvelopeError(.truncatedFooter) { try EnvelopeStructure.walk(MemorySource(Array(m.dropLast(1)))) }
        assertEnvelopeError(.trailingBytes) { try EnvelopeStructure.walk(MemorySource(m + [0])) }
        var bad = m
        bad[h + 3] ^= 2
        e = assertEnvelopeError(.frameOutOfSequence) { try EnvelopeStructure.walk(MemorySource(bad)) }
        XCTAssertEqual(e?.frame, 1)
    }

    /// A source that records the largest read asked of it, and a sink the largest write.
    final class RecordingSource: ByteSource {
        let inner: MemorySource
        var largest = 0
        init(_ b: [UInt8]) { inner = MemorySource(b) }
        func read(maxCount: Int) throws -> [UInt8] { let r = try inner.read(maxCount: maxCount); largest = max(largest, r.count); return r }
    }
    final class RecordingSink: ByteSink {
        var largest = 0, total = 0
        var bytes: [UInt8] = []
        func write(_ b: [UInt8]) throws { largest = max(largest, b.count); total += b.count; bytes += b }
    }

    func testMemoryIsBoundedByTheFrameLength() throws {
        let ring = testKeyring()
        let sink = RecordingSink()
        let e = try EnvelopeEncryptor(sink: sink, keyrings: [ring], frameLength: 4096)
        for i in 0..<256 { try e.write(pattern(4096 + 17, seed: UInt8(i))) } // ~1 MiB in pieces
        try e.finish()
        XCTAssertLessThanOrEqual(sink.largest, 4096 + 40 + 1024) // a frame, or the header
        let src = RecordingSource(sink.bytes)
        let d = try EnvelopeDecryptor(source: src, keyrings: [ring])
        var total = 0
        while let c = try d.nextChunk() { total += c.count; XCTAssertLessThanOrEqual(c.count, 4096) }
        XCTAssertEqual(total, 256 * (4096 + 17))
        XCTAssertLessThanOrEqual(src.largest, 4096 + 16)
    }

    func testNonFramedBodyLimit() throws {
        let v = try Vector("v2_0478_rawaes_nonframed")
        var options = DecryptOptions()
        options.maximumNonFramedBodyBytes = 10
        let e = assertEnvelopeError(.bodyTooLarge) { try EnvelopeDecryptor.decrypt(v.message, keyrings: v.keyrings, options: options) }
        XCTAssertEqual(e?.frame, 1)
    }
}

final class AdapterTests: XCTestCase {
    func testEncryptorAsSinkAndDecryptedSourceAsSource() throws {
        let ring = testKeyring()
        let out = MemorySink()
        let e = try EnvelopeEncryptor(sink: out, keyrings: [ring], frameLength: 100)
        let asSink: ByteSink = e
        try asSink.write(pattern(250))
        try e.finish()
        let src = DecryptedSource(try EnvelopeDecryptor(source: MemorySource(out.bytes), keyrings: [ring]))
        var got: [UInt8] = []
        while true { let b = try src.read(maxCount: 33); if b.isEmpty { break }; got += b }
        XCTAssertEqual(got, pattern(250))
        var bad = out.bytes
        bad[bad.count - 1] ^= 1
        let src2 = DecryptedSource(try EnvelopeDecryptor(source: MemorySource(bad), keyrings: [ring]))
        XCTAssertEqual(try src2.read(maxCount: 1000).count, 100)
        XCTAssertEqual(try src2.read(maxCount: 1000).count, 100)
        assertEnvelopeError(.frameAuthenticationFailed) { try src2.read(maxCount: 1000) }
    }
}
