import Foundation
import XCTest
@testable import HSMBackup

/// Issue 17: the read-ahead thread of verify and restore hands items over in order, then the
/// producer's end or error, and can be stopped mid-stream without hanging.
final class ReadAheadTests: XCTestCase {
    private struct Boom: Error, Equatable { let at: Int }

    func testItemsArriveInOrderThenTheEnd() {
        var n = 0
        let ahead = ReadAhead<Int>(maximumBatches: 2, batchItems: 3) {
            guard n < 100 else { return nil }
            n += 1
            return n
        }
        defer { ahead.stop() }
        var got: [Int] = []
        reading: while true {
            switch ahead.next() {
            case .item(let i): got.append(i)
            case .end: break reading
            case .failed(let e): XCTFail("\(e)"); break reading
            }
        }
        XCTAssertEqual(got, Array(1...100))
        if case .end = ahead.next() {} else { XCTFail("the end repeats") }
    }

    func testTheErrorComesAfterTheItemsBeforeIt() {
        var n = 0
        let ahead = ReadAhead<Int>(maximumBatches: 2, batchItems: 4) {
            n += 1
            if n == 10 { throw Boom(at: n) }
            return n
        }
        defer { ahead.stop() }
        var got: [Int] = []
        var error: Error?
        reading: while true {
            switch ahead.next() {
            case .item(let i): got.append(i)
            case .end: break reading
            case .failed(let e): error = e; break reading
            }
        }
        XCTAssertEqual(got, Array(1...9))
        XCTAssertEqual(error as? Boom, Boom(at: 10))
    }

    /// A consumer that stops early (a full check that throws) leaves no producer blocked on a
    /// full queue: `stop` returns, and the producer made at most what fits plus one batch.
    func testStoppingMidStreamReturns() {
        let made = Box()
        let ahead = ReadAhead<Int>(maximumBatches: 2, batchItems: 4) {
            made.n += 1
            return made.n // endless
        }
        if case .item(let first) = ahead.next() { XCTAssertEqual(first, 1) } else { XCTFail("an item first") }
        ahead.stop()
        XCTAssertLessThanOrEqual(made.n, 4 * 4 + 1)
    }

    private final class Box: @unchecked Sendable { var n = 0 }
}
