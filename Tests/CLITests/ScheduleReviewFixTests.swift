import Foundation
import XCTest

/// Review findings 4, 5 and 7 on `schedule install`, `status --prometheus` and hand-edited
/// schedule files.
final class ScheduleReviewFixTests: XCTestCase {
    static let t0 = ScheduleTests.t0

    // MARK: finding 4: install never replaces a unit it did not write

    func testInstallRefusesAForeignUnitUnlessForcedAndReinstallsItsOwn() throws {
        let w = try CLIWorld()
        defer { w.tearDown() }
        let dir = w.path("units")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let foreign = "[Unit]\nDescription=OpenBSD Secure Shell server\n\n[Service]\nExecStart=/usr/sbin/sshd -D\n"
        try Data(foreign.utf8).write(to: URL(fileURLWithPath: dir + "/x.service"))

        // A foreign service: refused (64, naming it), unchanged, and no timer written either.
        let refused = try w.run(["schedule", "install", "--systemd", dir, "--binary", CLI.binary.path, "--name", "x"])
        XCTAssertEqual(refused.exitCode, 64, refused.description)
        XCTAssertTrue(refused.stderr.contains(dir + "/x.service"), "the error names the file\n\(refused.description)")
        XCTAssertTrue(refused.stderr.contains("--force"), refused.description)
        XCTAssertEqual(try String(contentsOfFile: dir + "/x.service", encoding: .utf8), foreign)
        XCTAssertEqual(try Files.list(dir), ["x.service"], "nothing else written")

        // A foreign timer alone: refused too, before the service is written.
        try Data("[Timer]\nOnCalendar=daily\n".utf8).write(to: URL(fileURLWithPath: dir + "/y.timer"))
        let refusedTimer = try w.run(["schedule", "install", "--systemd", dir, "--binary", CLI.binary.path, "--name", "y"])
        XCTAssertEqual(refusedTimer.exitCode, 64, refusedTimer.description)
        XCTAssertTrue(refusedTimer.stderr.contains(dir + "/y.timer"), refusedTimer.description)
        XCTAssertEqual(try Files.list(dir), ["x.service", "y.timer"], "no service without its timer")

        // --force replaces it.
        try w.expect(0, ["schedule", "install", "--systemd", dir, "--binary", CLI.binary.path, "--name", "x", "--force"])
        let replaced = try String(contentsOfFile: dir + "/x.service", encoding: .utf8)
        XCTAssertTrue(replaced.hasPrefix("# Written by `hsmbackup schedule install"), replaced)
        XCTAssertTrue(try String(contentsOfFile: dir + "/x.timer", encoding: .utf8).hasPrefix("# Written by `hsmbackup schedule install"))

        // Our own units are replaced without --force (a re-install with other options).
        try w.expect(0, ["schedule", "install", "--systemd", dir, "--binary", CLI.binary.path, "--name", "x", "--on-calendar", "daily"])
        XCTAssertTrue(try String(contentsOfFile: dir + "/x.timer", encoding: .utf8).contains("OnCalendar=daily"))
        XCTAssertEqual(try Files.list(dir), ["x.service", "x.timer", "y.timer"], "no temp file left")
    }

    // MARK: finding 5: a report that cannot be made does not leave "ok" in the metrics file

    func testStatusPrometheusWritesTheErrorGaugeWhenTheReportFails() throws {
        let w = try CLIWorld()
        defer { w.tearDown() }
        let t0 = Self.t0
        try ScheduleTests.run(w, ["schedule", "add", "s", "--hsm", w.sourceHSM, "--kms-key", "k1", "--every", "24h"], at: t0).assertExit(0)
        try ScheduleTests.run(w, ["schedule", "run"], at: t0).assertExit(0)
        let textfile = w.path("textfile")
        try FileManager.default.createDirectory(atPath: textfile, withIntermediateDirectories: true)
        let prom = textfile + "/hsmbackup.prom"

        try ScheduleTests.run(w, ["status", "--prometheus", prom], at: t0 + 3600).assertExit(0)
        let good = try PromText.parse(try String(contentsOfFile: prom, encoding: .utf8))
        XCTAssertEqual(good["hsmbackup_status{verdict=\"ok\"}"], 1)
        XCTAssertEqual(good["hsmbackup_status_error"], 0, "the error gauge is always there, so an alert on it has a series")

        // The schedule file is damaged: every `schedule run` fails, and so must the metrics.
        try Data("{\"format\": \"hsmbackup-schedules\", \"version\": 1, \"schedules\": [".utf8)
            .write(to: URL(fileURLWithPath: w.home + "/schedules.json"))
        XCTAssertEqual(try ScheduleTests.run(w, ["schedule", "run"], at: t0 + 7200).exitCode, 65)
        let failed = try ScheduleTests.run(w, ["status", "--prometheus", prom], at: t0 + 7200)
        XCTAssertEqual(failed.exitCode, 65, "the failure's own code\n\(failed.description)")
        XCTAssertTrue(failed.stderr.contains("schedules.json"), failed.description)
        let text = try String(contentsOfFile: prom, encoding: .utf8)
        let bad = try PromText.parse(text)
        for v in ["ok", "verification-failed", "stale", "store-degraded"] {
            XCTAssertEqual(bad["hsmbackup_status{verdict=\"\(v)\"}"], 0, "no verdict: \(v)\n\(text)")
        }
        XCTAssertEqual(bad["hsmbackup_status_error"], 1, text)
        XCTAssertTrue(text.contains("# HELP hsmbackup_status_error "), text)
        XCTAssertEqual(bad["hsmbackup_status_time_seconds"], Double(t0 + 7200), text)
        let perms = try FileManager.default.attributesOfItem(atPath: prom)[.posixPermissions] as? Int
        XCTAssertEqual(perms, 0o644)
        XCTAssertEqual(try Files.list(textfile), ["hsmbackup.prom"], "written atomically: no temp file left")

        // A state file of another version: the same, with its own code.
        try FileManager.default.removeItem(atPath: w.home + "/schedules.json")
        try ScheduleTests.run(w, ["schedule", "add", "s", "--hsm", w.sourceHSM, "--kms-key", "k1", "--every", "24h"], at: t0).assertExit(0)
        try ScheduleTests.run(w, ["status", "--prometheus", prom], at: t0 + 3600).assertExit(0)
        XCTAssertEqual(try PromText.parse(try String(contentsOfFile: prom, encoding: .utf8))["hsmbackup_status_error"], 0)
        try Data(#"{"format": "hsmbackup-schedule-state", "version": 9}"#.utf8).write(to: URL(fileURLWithPath: w.home + "/schedule-state.json"))
        let badState = try ScheduleTests.run(w, ["status", "--prometheus", prom], at: t0 + 3600)
        XCTAssertEqual(badState.exitCode, 65, badState.description)
        let s = try PromText.parse(try String(contentsOfFile: prom, encoding: .utf8))
        XCTAssertEqual(s["hsmbackup_status{verdict=\"ok\"}"], 0)
        XCTAssertEqual(s["hsmbackup_status_error"], 1)
    }

    // MARK: finding 7: hand edits are validated as `schedule add` validates

    /// Rewrites schedule "s" in the home's schedules.json with `edit`.
    static func editSchedule(_ w: CLIWorld, _ edit: (inout [String: Any]) -> Void) throws {
        let path = w.home + "/schedules.json"
        var file = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])
        var schedules = try XCTUnwrap(file["schedules"] as? [[String: Any]])
        edit(&schedules[0])
        file["schedules"] = schedules
        try JSONSerialization.data(withJSONObject: file, options: [.prettyPrinted, .sortedKeys]).write(to: URL(fileURLWithPath: path))
    }

    func testHandEditedAddedEveryAndTagsAreValidatedOnLoad() throws {
        let w = try CLIWorld()
        defer { w.tearDown() }
        let t0 = Self.t0
        try ScheduleTests.run(w, ["schedule", "add", "s", "--hsm", w.sourceHSM, "--kms-key", "k1", "--every", "24h"], at: t0).assertExit(0)

        func expectRefused(_ field: String, _ what: String, file: StaticString = #filePath, line: UInt = #line) throws {
            for args in [["status"], ["schedule", "run"], ["schedule", "list"]] {
                let r = try ScheduleTests.run(w, args, at: t0 + 30 * 86_400)
                XCTAssertEqual(r.exitCode, 65, "\(what)\n\(r.description)", file: file, line: line)
                XCTAssertTrue(r.stderr.contains("schedules.json"), "names the file\n\(r.description)", file: file, line: line)
                XCTAssertTrue(r.stderr.contains("schedule \"s\""), "names the schedule\n\(r.description)", file: file, line: line)
                XCTAssertTrue(r.stderr.contains(field), "names the field \(field)\n\(r.description)", file: file, line: line)
            }
        }

        // A valid RFC 3339 time with an offset: it would never be read, so the schedule would
        // never be stale. Refused, naming the field.
        try Self.editSchedule(w) { $0["added"] = "2026-12-04T22:00:00+01:00" }
        try expectRefused("added", "an offset `added`")
        try Self.editSchedule(w) { $0["added"] = "yesterday" }
        try expectRefused("added", "a free-text `added`")
        try Self.editSchedule(w) { $0["added"] = "2026-01-01T00:00:00Z" }
        XCTAssertEqual(try ScheduleTests.run(w, ["status"], at: t0).exitCode, 0, "the UTC form loads")

        for every in ["30s", "401d"] {
            try Self.editSchedule(w) { $0["every"] = every }
            try expectRefused("every", "every \(every)")
        }
        try Self.editSchedule(w) { $0["every"] = "24h" }

        try Self.editSchedule(w) { $0["tags"] = ["verification": "failed"] }
        try expectRefused("tags", "the runner's tag")
        try Self.editSchedule(w) { $0["tags"] = [String: String]() }

        // The file as `schedule add` wrote it loads again.
        XCTAssertEqual(try ScheduleTests.run(w, ["status"], at: t0).exitCode, 0)
        try ScheduleTests.run(w, ["schedule", "run"], at: t0).assertExit(0)
    }
}
