import Foundation
import HSMBackup
import ObjectStore
import XCTest
@testable import Scheduling

/// The schedule file's pieces on their own: intervals, due rules, log lines, versions, units.
final class ScheduleFileTests: XCTestCase {
    func testIntervalsParseAndPrintOneWay() throws {
        XCTAssertEqual(try Interval.parse("24h").seconds, 86_400)
        XCTAssertEqual(try Interval.parse("24h").description, "1d")
        XCTAssertEqual(try Interval.parse("36h").description, "1d12h")
        XCTAssertEqual(try Interval.parse("1d12h").seconds, 129_600)
        XCTAssertEqual(try Interval.parse("1w").seconds, 604_800)
        XCTAssertEqual(try Interval.parse("90m").description, "1h30m")
        XCTAssertEqual(try Interval.parse("45s").seconds, 45)
        for bad in ["", "24", "h", "0h", "-1h", "1.5h", "1 h", "1y", "h1", "99999999999999999999w", "1d 2h"] {
            XCTAssertThrowsError(try Interval.parse(bad), bad) { XCTAssertEqual(($0 as? SchedulingError)?.code, .invalidArgument, bad) }
        }
        for s in ["1d", "1d12h", "2w3d4h5m6s", "45s"] {
            let i = try Interval.parse(s)
            XCTAssertEqual(try Interval.parse(i.description), i, "one encoding per value")
            let json = try JSONEncoder().encode([i])
            XCTAssertEqual(try JSONDecoder().decode([Interval].self, from: json), [i])
        }
    }

    func schedule(every: String, added: UInt64 = 1_000_000) throws -> Schedule {
        Schedule(name: "s", source: .simulatedHSM(directory: "/h"), cluster: "c", kmsKeys: ["k"], every: try Interval.parse(every),
                 verify: .envelope, tags: [:], added: Timestamp.rfc3339(added))
    }

    func record(lastRun: UInt64, ok: Bool) -> ScheduleRecord {
        var r = ScheduleRecord()
        r.lastRun = Timestamp.rfc3339(lastRun)
        r.lastOutcome = ok ? "ok" : "failed"
        return r
    }

    func testDueRules() throws {
        let s = try schedule(every: "24h")
        XCTAssertTrue(DueRules.isDue(s, nil, now: 1_000_000), "never run: due at once")
        let last: UInt64 = 2_000_000
        let r = record(lastRun: last, ok: true)
        XCTAssertFalse(DueRules.isDue(s, r, now: last + 3_600))
        XCTAssertFalse(DueRules.isDue(s, r, now: last + 86_400 - 301), "more than the 5 min slack early")
        XCTAssertTrue(DueRules.isDue(s, r, now: last + 86_400 - 10), "a timer a few seconds early still counts")
        XCTAssertTrue(DueRules.isDue(s, r, now: last + 30 * 86_400), "a missed month: due (once)")
        XCTAssertEqual(DueRules.nextRun(s, r), last + 86_400)
        // A failure is retried after an hour, not a whole interval.
        let f = record(lastRun: last, ok: false)
        XCTAssertEqual(DueRules.nextRun(s, f), last + 3_600)
        XCTAssertTrue(DueRules.isDue(s, f, now: last + 3_600))
        // Short intervals: the slack is a twelfth of the interval.
        let short = try schedule(every: "1h")
        XCTAssertEqual(DueRules.slack(short.every), 300)
        XCTAssertEqual(DueRules.slack(try Interval.parse("12m")), 60)
        XCTAssertTrue(DueRules.scrubDue(ScheduleFile.defaultScrubEvery, nil, now: 0))
    }

    func testLogLinesAreOneEventPerLineAndCannotBeForged() {
        let e = LogEvent([("event", "backup"), ("schedule", "s"), ("error", "no such file \"x\"\nevent=fake outcome=ok"), ("empty", "")])
        XCTAssertEqual(e.description, #"event=backup schedule=s error="no such file \"x\"\nevent=fake outcome=ok" empty="""#)
        XCTAssertFalse(e.description.contains("\n"))
        XCTAssertEqual(LogEvent([("k", "a\u{1B}[31m")]).description, #"k="a\u{1B}[31m""#)
        XCTAssertEqual(LogEvent([("k", "back\\slash")]).description, #"k="back\\slash""#)
    }

    func testFilesAreVersionedAndAnUnknownVersionOrKindIsRefused() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sched-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let home = ScheduleHome(home: dir)
        XCTAssertEqual(try home.loadSchedules(), ScheduleFile(), "no file: no schedules")
        var file = ScheduleFile()
        file.schedules.append(try schedule(every: "12h"))
        try home.saveSchedules(file)
        XCTAssertEqual(try home.loadSchedules(), file)
        let text = try String(contentsOfFile: home.scheduleFile, encoding: .utf8)
        XCTAssertTrue(text.contains(#""every" : "12h""#), text)
        XCTAssertTrue(text.contains(#""kind" : "simulated-hsm""#), text)
        let mode = try FileManager.default.attributesOfItem(atPath: home.scheduleFile)[.posixPermissions] as? Int
        XCTAssertEqual(mode, 0o600)

        func refused(_ json: String, _ expect: String, file: StaticString = #filePath, line: UInt = #line) {
            try? Data(json.utf8).write(to: URL(fileURLWithPath: home.scheduleFile))
            XCTAssertThrowsError(try home.loadSchedules(), file: file, line: line) { e in
                XCTAssertEqual((e as? SchedulingError)?.code, .badFile, file: file, line: line)
                XCTAssertTrue("\(e)".contains(expect), "\(e)", file: file, line: line)
            }
        }
        refused(#"{"format": "hsmbackup-schedules", "version": 2, "schedules": "anything"}"#, "version 2")
        refused(#"{"format": "something-else", "version": 1}"#, "something-else")
        refused(text.replacingOccurrences(of: "simulated-hsm", with: "cloudhsm"), "unknown backup source kind \"cloudhsm\"")
        refused(text.replacingOccurrences(of: "simulated-hsm", with: "pkcs11"), "source.module: missing")
        refused(text.replacingOccurrences(of: #""12h""#, with: #""12""#), "has no unit")
        refused("[]", "not a JSON object")
        file.schedules.append(file.schedules[0])
        try home.saveSchedules(file)
        XCTAssertThrowsError(try home.loadSchedules()) { XCTAssertTrue("\($0)".contains("appears twice")) }
    }

    func testALockHeldIsBusyAtOnce() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("lock-\(UUID().uuidString)").path
        defer { unlink(path) }
        let held = try ScheduleLock.acquire(path, wait: false)
        // flock locks belong to the open file description: a second open in this process conflicts too.
        XCTAssertThrowsError(try ScheduleLock.acquire(path, wait: false)) { e in
            XCTAssertEqual((e as? SchedulingError)?.code, .busy)
            XCTAssertTrue("\(e)".contains("(pid \(getpid()))"), "\(e)")
        }
        held.release()
        XCTAssertNoThrow(try ScheduleLock.acquire(path, wait: false).release())
    }

    func testUnitOptionsRefuseWhatUnitFilesAndCrontabWouldMisread() {
        for (binary, home) in [("bin/hsmbackup", "/h"), ("/b", "h"), ("/b c", "/h"), ("/b", "/h%i"), ("/b", "/h\n"), ("/b;rm", "/h")] {
            XCTAssertThrowsError(try UnitOptions(binary: binary, home: home).validate(), "\(binary) \(home)")
        }
        XCTAssertNoThrow(try UnitOptions(binary: "/usr/bin/hsmbackup", home: "/var/lib/hsmbackup").validate())
        var o = UnitOptions(binary: "/usr/bin/hsmbackup", home: "/var/lib/hsmbackup")
        o.prometheusFile = "/var/lib/node_exporter/textfile/hsmbackup.prom"
        XCTAssertTrue(Units.service(o).contains("ReadWritePaths=-/var/lib/hsmbackup -/var/lib/node_exporter/textfile\n"))
        o.extraWritable = ["/mnt/disk2/replica"]
        XCTAssertTrue(Units.service(o).contains("ReadWritePaths=-/var/lib/hsmbackup -/mnt/disk2/replica -/var/lib/node_exporter/textfile\n"))
        XCTAssertTrue(Units.service(o).contains("ExecStopPost=-/usr/bin/hsmbackup --home /var/lib/hsmbackup status --prometheus /var/lib/node_exporter/textfile/hsmbackup.prom\n"))
    }

    /// systemd refuses to start a unit one of whose ReadWritePaths= does not exist (226/NAMESPACE,
    /// before hsmbackup runs), and nothing creates the home on a fresh `make install`: the default
    /// home is the unit's StateDirectory= (systemd creates it, owned by User=), and every
    /// writable path is "-"-prefixed (a missing one is then hsmbackup's to report).
    func testServiceUnitStartsOnAFreshMachineWhoseHomeDoesNotExistYet() {
        var o = UnitOptions(binary: "/usr/local/bin/hsmbackup", home: "/var/lib/hsmbackup")
        o.user = "hsmbackup"
        o.extraWritable = ["/mnt/disk2/replica"]
        let lines = Units.service(o).split(separator: "\n").map(String.init)
        XCTAssertTrue(lines.contains("StateDirectory=hsmbackup"), lines.joined(separator: "\n"))
        XCTAssertTrue(lines.contains("StateDirectoryMode=0700"))
        let rw = lines.first { $0.hasPrefix("ReadWritePaths=") } ?? ""
        for path in rw.dropFirst("ReadWritePaths=".count).split(separator: " ") {
            XCTAssertTrue(path.hasPrefix("-"), "\(path) would stop the unit from starting while it does not exist")
        }
        // A home elsewhere is not a state directory (StateDirectory= only takes paths under /var/lib).
        let other = Units.service(UnitOptions(binary: "/usr/local/bin/hsmbackup", home: "/srv/hsmbackup"))
        XCTAssertFalse(other.contains("StateDirectory="))
        XCTAssertTrue(other.contains("ReadWritePaths=-/srv/hsmbackup\n"))
    }
}
