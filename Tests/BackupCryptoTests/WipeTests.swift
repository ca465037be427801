import BackupCrypto
import XCTest

/// `wipe(&)` clears the array it is given; when that array shares its storage with another
/// copy, copy-on-write hands it fresh storage first and the shared bytes survive. The pipelines'
/// end-of-life wipes therefore use `wipeStorage(of:)`, which clears the shared storage itself.
final class WipeTests: XCTestCase {
    func testWipeOfASharedCopyLeavesTheSharedStorage() {
        let original: [UInt8] = Array(repeating: 0xA5, count: 4096)
        var copy = original
        wipe(&copy)
        XCTAssertTrue(copy.isEmpty)
        XCTAssertEqual(original, Array(repeating: 0xA5, count: 4096), "copy-on-write: the shared bytes are not touched")
    }

    func testWipeStorageClearsTheStorageEveryCopyShares() {
        let original: [UInt8] = Array(repeating: 0xA5, count: 4096)
        let copy = original
        wipeStorage(of: copy)
        XCTAssertEqual(original, Array(repeating: 0, count: 4096))
        XCTAssertEqual(copy, Array(repeating: 0, count: 4096))
        wipeStorage(of: [])   // nothing to clear, no crash
    }

    /// A reused hasher (reset after finalize, or mid-stream) gives what a fresh one gives.
    func testResetHasherMatchesAFreshOne() {
        let a = Array("the first object".utf8), b = Array("the second, longer object".utf8)
        let h = SHA256Hasher()
        h.update(a)
        _ = h.finalize()
        h.reset()
        h.update(b)
        XCTAssertEqual(h.finalize(), SHA256Hasher.hash(b))
        h.reset()
        h.update(a)          // abandoned mid-stream
        h.reset()
        h.update(a + b)
        XCTAssertEqual(h.finalize(), SHA256Hasher.hash(a + b))
    }
}
