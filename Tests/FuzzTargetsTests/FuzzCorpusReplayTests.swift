import Foundation
import FuzzTargets
import XCTest

/// Replays the committed corpus (fuzz/corpus/<target>/: seeds and regression inputs) through
/// the same target functions libFuzzer runs, plus a short deterministic mutation pass, without
/// libFuzzer. A finding is a crash (fatalError) of the test process.
final class FuzzCorpusReplayTests: XCTestCase {
    static var corpusRoot: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("fuzz/corpus").path
    }

    static func corpus(_ t: FuzzTarget) throws -> [(String, [UInt8])] {
        let dir = corpusRoot + "/" + t.rawValue
        return try FileManager.default.contentsOfDirectory(atPath: dir).sorted().map {
            ($0, [UInt8](try Data(contentsOf: URL(fileURLWithPath: dir + "/" + $0))))
        }
    }

    func testEveryTargetHasACommittedCorpusAndReplaysIt() throws {
        for t in FuzzTarget.allCases {
            let files = try Self.corpus(t)
            XCTAssertGreaterThanOrEqual(files.count, 4, "\(t.rawValue) corpus")
            for (_, bytes) in files { t.run(bytes) }
        }
    }

    /// 300 deterministic mutations per target (xorshift PRNG, fixed seed): flips,
    /// truncations, insertions and splices of the corpus files.
    func testDeterministicMutationsOfTheCorpus() throws {
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        func next() -> Int {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17
            return Int(truncatingIfNeeded: state & 0x7fff_ffff)
        }
        for t in FuzzTarget.allCases {
            let files = try Self.corpus(t).map(\.1).filter { !$0.isEmpty }
            for _ in 0..<300 {
                var m = files[next() % files.count]
                for _ in 0..<(1 + next() % 3) where m.count > 1 {
                    let at = 1 + next() % (m.count - 1)  // byte 0 is the target's mode
                    switch next() % 4 {
                    case 0: m[at] ^= UInt8(1 + next() % 255)
                    case 1: m.removeLast(m.count - at)
                    case 2: m.insert(UInt8(next() & 0xff), at: at)
                    default: m[at] = [0x00, 0xff, 0x7f, 0x80][next() % 4]
                    }
                }
                t.run(m)
            }
        }
    }
}
