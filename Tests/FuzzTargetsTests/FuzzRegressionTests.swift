import FuzzTargets
import PayloadCodec
import XCTest

/// Findings of the fuzz campaign, each as a named test (the input also lives in
/// fuzz/corpus/<target>/regress-*, replayed by FuzzCorpusReplayTests).
final class FuzzRegressionTests: XCTestCase {
    /// payload target, 2026-11-29: a zstd frame whose header declares 5 content bytes but whose
    /// only block is an empty raw last block. Fed whole, libzstd refuses it; fed byte by byte,
    /// libzstd 1.5.4's streaming decoder ended the frame cleanly with 0 bytes, so the bounded
    /// decompressor accepted it (expected size 0) depending on how the input was split. The
    /// decompressor now checks the frame's declared content size itself.
    func testZstdFrameDeclaringMoreThanItHoldsIsRefusedHoweverItIsFed() throws {
        let frame: [UInt8] = [0x28, 0xb5, 0x2f, 0xfd, 0x20, 0x05, 0x01, 0x00, 0x00]
        for piece in [1, 2, 4, frame.count] {
            let d = try BoundedDecompressor(expectedSize: 0)
            XCTAssertThrowsError(try {
                var at = 0
                while at < frame.count {
                    try d.feed(Array(frame[at..<min(frame.count, at + piece)]))
                    at += piece
                }
                _ = try d.finish()
            }(), "piece size \(piece)") {
                XCTAssertEqual(($0 as? PayloadCodecError)?.code, .malformedCompressed, "piece size \(piece)")
            }
        }
        XCTAssertThrowsError(try Zstd.decompress(frame, expectedSize: 0)) {
            XCTAssertEqual(($0 as? PayloadCodecError)?.code, .malformedCompressed)
        }
        // The committed crash input runs through the target without a finding.
        FuzzTarget.payload.run([0x05, 0x00, 0x00, 0x00] + frame)
    }

    /// Valid frames still decompress in any split (the new check does not refuse good input).
    func testValidZstdFramesDecompressInAnySplit() throws {
        let plain = Array("hsmbackup fuzz regression ".utf8) + [UInt8](repeating: 7, count: 300)
        let z = try Zstd.compress(plain)
        for piece in [1, 3, 17, z.count] {
            let d = try BoundedDecompressor(expectedSize: plain.count)
            var at = 0
            while at < z.count { try d.feed(Array(z[at..<min(z.count, at + piece)])); at += piece }
            XCTAssertEqual(try d.finish(), plain, "piece size \(piece)")
        }
    }

    /// payload target, 2026-11-29 (second finding): a legacy zstd v0.7 magic (0xFD2FB527).
    /// libzstd decoded it whole but refused it fed byte by byte; only current frames are taken now.
    func testLegacyZstdFrameIsRefusedHoweverItIsFed() throws {
        let frame: [UInt8] = [0x27, 0xb5, 0x2f, 0xfd, 0x20, 0x00, 0x00, 0x00, 0x00]
        for piece in [1, frame.count] {
            let d = try BoundedDecompressor(expectedSize: 0)
            XCTAssertThrowsError(try {
                var at = 0
                while at < frame.count { try d.feed(Array(frame[at..<min(frame.count, at + piece)])); at += piece }
                _ = try d.finish()
            }()) { XCTAssertEqual(($0 as? PayloadCodecError)?.code, .malformedCompressed, "piece size \(piece)") }
        }
        FuzzTarget.payload.run([0x01, 0x00, 0x00, 0x00] + frame)
    }
}
