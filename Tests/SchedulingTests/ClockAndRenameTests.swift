import Foundation
import HSMBackup
import ObjectStore
import XCTest
@testable import Scheduling

/// A clock that went backwards does not stop a schedule, and a schedule removed and added again
/// under the same name does not inherit the old one's state.
final class ClockAndRenameTests: XCTestCase {
    func schedule(every: String, added: UInt64) throws -> Schedule {
        Schedule(name: "s", source: .simulatedHSM(directory: "/h"), cluster: "c", kmsKeys: ["k"], every: try Interval.parse(every),
                 verify: .envelope, tags: [:], added: Timestamp.rfc3339(added))
    }

    func record(lastRun: UInt64) -> ScheduleRecord {
        var r = ScheduleRecord()
        r.lastRun = Timestamp.rfc3339(lastRun)
        r.lastOutcome = "ok"
        return r
    }

    /// The last run is 30 days in the future (the clock was ahead then): due now, not in 31 days.
    func testALastRunInTheFutureIsDueNow() throws {
        let now: UInt64 = 2_000_000_000
        let s = try schedule(every: "1d", added: now - 90 * 86_400)
        XCTAssertTrue(DueRules.isDue(s, record(lastRun: now + 30 * 86_400), now: now))
        // Within the slack it is an ordinary recent run.
        XCTAssertFalse(DueRules.isDue(s, record(lastRun: now + 60), now: now))
    }

    /// The record of a schedule of the same name that ran before this one was added is not this
    /// schedule's: the new one is due at once, and reports no inherited run.
    func testARecordOlderThanTheScheduleIsNotItsOwn() throws {
        let now: UInt64 = 2_000_000_000
        let old = record(lastRun: now - 3_600)
        var state = ScheduleStateFile()
        state.schedules["s"] = old
        let readded = try schedule(every: "1w", added: now - 60)
        XCTAssertNil(state.record(for: readded))
        XCTAssertTrue(DueRules.isDue(readded, state.record(for: readded), now: now))
        // A record of a run after the schedule was added is its own.
        let original = try schedule(every: "1w", added: now - 86_400)
        XCTAssertEqual(state.record(for: original), old)
        XCTAssertFalse(DueRules.isDue(original, state.record(for: original), now: now))
    }

    /// A run whose backup was stored and verified but whose retention step failed is not retried
    /// an hour later (that would add a backup an hour): it waits a whole interval, like a success.
    func testARetentionFailureAfterAStoredBackupWaitsAWholeInterval() throws {
        let last: UInt64 = 2_000_000_000
        let s = try schedule(every: "1d", added: last - 86_400)
        var r = record(lastRun: last)
        r.lastOutcome = "failed"
        r.lastSuccess = r.lastRun
        XCTAssertEqual(DueRules.nextRun(s, r), last + 86_400)
        XCTAssertFalse(DueRules.isDue(s, r, now: last + 3_600))
        // A run that failed before its backup was stored is retried after an hour, as before.
        r.lastSuccess = Timestamp.rfc3339(last - 86_400)
        XCTAssertEqual(DueRules.nextRun(s, r), last + 3_600)
    }
}
