import FuzzTargets
import PayloadCodec
import XCTest

/// Findings of the fuzz campaign, each as a named test (the input also lives in
/// fuzz/corpus/<target>/regress-*, replayed by FuzzCorpusReplayTests).
///
/// The three payload findings of 2026-11-29 were disagreements between libzstd's streaming
/// decoder (what the single-frame payload of the pre-release format needed) and its one-shot
/// decoder. Format 2 compresses each chunk as its own frame and decodes it in one call, after
/// checking the magic, the declared content size and the frame's exact extent; the streaming
/// decoder is gone, and each input is now refused by the one decoder there is.
final class FuzzRegressionTests: XCTestCase {
    private func assertRefused(_ frame: [UInt8], exactSizes: [Int], file: StaticString = #filePath, line: UInt = #line) {
        for size in exactSizes {
            XCTAssertThrowsError(try Zstd.decompress(frame, exactSize: size), "exact size \(size)", file: file, line: line) {
                XCTAssertNotNil($0 as? PayloadCodecError, file: file, line: line)
            }
        }
    }

    /// First finding: a frame whose header declares 5 content bytes but whose only block is an
    /// empty raw last block (streamed byte by byte, libzstd 1.5.4 ended it cleanly with 0 bytes).
    func testZstdFrameDeclaringMoreThanItHoldsIsRefused() throws {
        let frame: [UInt8] = [0x28, 0xb5, 0x2f, 0xfd, 0x20, 0x05, 0x01, 0x00, 0x00]
        assertRefused(frame, exactSizes: [0, 5])
        FuzzTarget.payload.run([0x05, 0x00, 0x00, 0x00] + frame)   // the committed input
        FuzzTarget.payload.run([0x05, 0x00, 0x00] + frame)
    }

    /// Second finding: a legacy zstd v0.7 magic (0xFD2FB527), decoded whole but not streamed.
    func testLegacyZstdFrameIsRefused() throws {
        let frame: [UInt8] = [0x27, 0xb5, 0x2f, 0xfd, 0x20, 0x00, 0x00, 0x00, 0x00]
        assertRefused(frame, exactSizes: [0, 1])
        XCTAssertThrowsError(try Zstd.decompress(frame, exactSize: 0)) {
            XCTAssertEqual(($0 as? PayloadCodecError)?.code, .malformedCompressed)
        }
        FuzzTarget.payload.run([0x01, 0x00, 0x00, 0x00] + frame)
    }

    /// Third finding (open at the end of stop 9): a single-segment frame declaring 0 bytes whose
    /// last block is an RLE block with its byte missing; streamed it ended cleanly, one-shot it
    /// is "data corruption". The frame cannot be delimited, so the chunk decoder refuses it.
    func testZstdFrameWithAnRLEBlockMissingItsByteIsRefused() throws {
        let frame: [UInt8] = [0x28, 0xb5, 0x2f, 0xfd, 0x20, 0x00, 0x05, 0x00, 0x00]
        assertRefused(frame, exactSizes: [0, 1, 5])
        FuzzTarget.payload.run([0x0d, 0x00, 0x00, 0x00] + frame)   // the input libFuzzer found
    }

    /// Valid frames decode to exactly their size, and only to it; a byte after the frame or a
    /// frame cut short is refused.
    func testChunkFramesDecodeExactlyAndNothingElse() throws {
        let plain = Array("hsmbackup fuzz regression ".utf8) + [UInt8](repeating: 7, count: 300)
        let z = try Zstd.compress(plain)
        XCTAssertEqual(try Zstd.decompress(z, exactSize: plain.count), plain)
        XCTAssertThrowsError(try Zstd.decompress(z, exactSize: plain.count - 1)) {
            XCTAssertEqual(($0 as? PayloadCodecError)?.code, .sizeLimitExceeded)
        }
        XCTAssertThrowsError(try Zstd.decompress(z, exactSize: plain.count + 1)) {
            XCTAssertEqual(($0 as? PayloadCodecError)?.code, .sizeMismatch)
        }
        XCTAssertThrowsError(try Zstd.decompress(z + [0], exactSize: plain.count)) {
            XCTAssertEqual(($0 as? PayloadCodecError)?.code, .trailingCompressed)
        }
        XCTAssertThrowsError(try Zstd.decompress(Array(z.dropLast()), exactSize: plain.count)) {
            XCTAssertEqual(($0 as? PayloadCodecError)?.code, .truncatedCompressed)
        }
    }
}
