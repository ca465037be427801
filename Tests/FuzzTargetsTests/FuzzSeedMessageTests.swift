@testable import FuzzTargets
import XCTest

/// The fuzz seeds' deterministic messages (issue 12 audit): a fixed data key, so the message ID
/// (and the EDK IV) must differ whenever anything in the message differs, and stay the same when
/// nothing does (a reproducible corpus).
final class FuzzSeedMessageTests: XCTestCase {
    private func messageID(_ m: [UInt8]) -> [UInt8] { Array(m[3..<35]) }   // version ‖ suite ID ‖ 32-byte ID

    func testSeedMessagesNeverShareAMessageIDAndAreReproducible() throws {
        let a = try FuzzSeeds.message(suite: .committing, frameLength: 64, plaintext: [1, 2, 3], context: true)
        XCTAssertEqual(try FuzzSeeds.message(suite: .committing, frameLength: 64, plaintext: [1, 2, 3], context: true), a)
        let others = [
            try FuzzSeeds.message(suite: .committing, frameLength: 64, plaintext: [1, 2, 4], context: true),
            try FuzzSeeds.message(suite: .committing, frameLength: 128, plaintext: [1, 2, 3], context: true),
            try FuzzSeeds.message(suite: .committing, frameLength: 64, plaintext: [1, 2, 3], context: false),
            try FuzzSeeds.message(suite: .committing, frameLength: 64, plaintext: [], context: true),
        ]
        let ids = Set(([a] + others).map(messageID))
        XCTAssertEqual(ids.count, 5)
    }
}
