import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// Transcript tests of `schedule` and `status` (issue 18), on a clock the tests move
/// (HSMBACKUP_TEST_CLOCK: every process sees the time the test gives it; nothing sleeps).
final class ScheduleTests: XCTestCase {
    static let t0: UInt64 = 1_767_225_600 // 2026-01-01T00:00:00Z

    static func at(_ seconds: UInt64) -> [String: String] { ["HSMBACKUP_TEST_CLOCK": "\(seconds)"] }

    /// Runs with the clock at `t`.
    @discardableResult
    static func run(_ w: CLIWorld, _ args: [String], at t: UInt64) throws -> CLIRun {
        try w.run(args, environment: at(t))
    }

    static func backups(_ w: CLIWorld, cluster: String) throws -> [[String: Any]] {
        try JSON.array(try w.expect(0, ["backup", "list", "--cluster", cluster, "--json"]).stdout)
    }

    static func logEvents(_ r: CLIRun) -> [[String: String]] {
        r.stdout.split(separator: "\n").map { line in
            var out: [String: String] = [:]
            // Values here hold no spaces except the quoted `error`, which the tests read only by prefix.
            var rest = Substring(line)
            while let eq = rest.firstIndex(of: "=") {
                let key = String(rest[..<eq]).trimmingCharacters(in: .whitespaces)
                rest = rest[rest.index(after: eq)...]
                if rest.first == "\"" {
                    rest = rest.dropFirst()
                    var value = ""
                    while let c = rest.first {
                        rest = rest.dropFirst()
                        if c == "\\", let n = rest.first { value.append(n); rest = rest.dropFirst(); continue }
                        if c == "\"" { break }
                        value.append(c)
                    }
                    out[key] = value
                } else {
                    let end = rest.firstIndex(of: " ") ?? rest.endIndex
                    out[key] = String(rest[..<end])
                    rest = rest[end...]
                }
            }
            return out
        }
    }

    // MARK: ten simulated days

    func testTenDaysOfHourlyRunsWithADailyATwiceDailyAndAFailingSchedule() throws {
        let w = try CLIWorld()
        defer { w.tearDown() }
        let t0 = Self.t0
        let daily = try w.makeHSM(keys: 3, cluster: "c-daily")
        let twice = try w.makeHSM(keys: 3, cluster: "c-twice")
        let failing = try w.makeHSM(keys: 3, cluster: "c-failing")
        for c in ["c-daily", "c-twice", "c-failing"] { try w.expect(0, ["retention", "set", "--cluster", c, "--days", "7"]) }
        try Self.run(w, ["schedule", "add", "daily", "--hsm", daily, "--kms-key", "k1", "--every", "24h"], at: t0).assertExit(0)
        try Self.run(w, ["schedule", "add", "twice", "--hsm", twice, "--kms-key", "k1", "--kms-key", "k2", "--every", "12h",
                         "--verify", "full", "--tag", "tier=gold"], at: t0).assertExit(0)
        try Self.run(w, ["schedule", "add", "failing", "--hsm", failing, "--kms-key", "k1", "--every", "24h"], at: t0).assertExit(0)

        // The failing schedule's HSM goes away after its first backup; from its next due time
        // (24h) on it fails, and is retried (and reported) every hour.
        var failures = 0, backupEvents: [String: Int] = [:]
        for hour in UInt64(0)..<240 {
            let r = try Self.run(w, ["schedule", "run"], at: t0 + hour * 3600)
            let events = Self.logEvents(r)
            for e in events where e["event"] == "backup" && e["outcome"] == "ok" { backupEvents[e["schedule"]!, default: 0] += 1 }
            // Every line is one event with the fields journald/grep users look for.
            for e in events {
                XCTAssertNotNil(e["time"], r.description)
                XCTAssertNotNil(e["event"], r.description)
                XCTAssertNotNil(e["outcome"], r.description)
                XCTAssertNotNil(e["duration_s"], r.description)
            }
            if hour == 0 { try FileManager.default.moveItem(atPath: failing, toPath: failing + ".unplugged") }
            let failed = events.filter { $0["schedule"] == "failing" && $0["outcome"] == "failed" }
            guard hour >= 24 else {
                XCTAssertEqual(r.exitCode, 0, r.description)
                XCTAssertEqual(failed.count, 0, r.description)
                continue
            }
            XCTAssertEqual(failed.count, 1, "the failing schedule is retried every hour and reported each time\n\(r.description)")
            XCTAssertEqual(failed.first?["event"], "backup", r.description)
            XCTAssertTrue(failed.first?["error"]?.contains(failing) == true, "the error names what failed\n\(r.description)")
            XCTAssertEqual(r.exitCode, 80, "a failed schedule makes the run fail\n\(r.description)")
            let summary = events.last
            XCTAssertEqual(summary?["event"], "run", r.description)
            XCTAssertEqual(summary?["failed"], "1", r.description)
            failures += 1
        }
        XCTAssertEqual(failures, 216)
        XCTAssertEqual(backupEvents, ["daily": 10, "twice": 20, "failing": 1], "one backup per interval")

        // The catalog agrees: retention (7 days) applied after each backup of the cluster.
        let d = try Self.backups(w, cluster: "c-daily"), tw = try Self.backups(w, cluster: "c-twice")
        XCTAssertEqual(d.count, 10)
        XCTAssertEqual(d.filter { $0["state"] as? String == "READY" }.count, 7, "days 0-2 expired at the day-9 run")
        XCTAssertEqual(d.filter { $0["state"] as? String == "PENDING_DELETION" }.count, 3)
        XCTAssertEqual(tw.count, 20)
        XCTAssertEqual(tw.filter { $0["state"] as? String == "READY" }.count, 14, "0h...60h expired at the 228h run")
        XCTAssertTrue(tw.allSatisfy { ($0["tags"] as? [String: String]) == ["tier": "gold", "schedule": "twice"] })
        for list in [d, tw, try Self.backups(w, cluster: "c-failing")] {
            let newest = try XCTUnwrap(list.max { ($0["createdMillis"] as! Int) < ($1["createdMillis"] as! Int) })
            XCTAssertEqual(newest["state"] as? String, "READY", "a cluster's newest backup is never expired")
        }

        // The state file records each schedule's last run, outcome and verification.
        let state = try JSON.object(String(decoding: try Data(contentsOf: URL(fileURLWithPath: w.home + "/schedule-state.json")), as: UTF8.self))
        XCTAssertEqual(state["format"] as? String, "hsmbackup-schedule-state")
        XCTAssertEqual(state["version"] as? Int, 1)
        let records = try XCTUnwrap(state["schedules"] as? [String: [String: Any]])
        XCTAssertEqual(records["twice"]?["lastOutcome"] as? String, "ok")
        XCTAssertEqual((records["twice"]?["lastVerification"] as? [String: Any])?["level"] as? String, "full")
        XCTAssertEqual((records["twice"]?["lastVerification"] as? [String: Any])?["passed"] as? Bool, true)
        XCTAssertEqual(records["failing"]?["lastOutcome"] as? String, "failed")
        XCTAssertEqual(records["failing"]?["consecutiveFailures"] as? Int, 216)
        XCTAssertEqual((state["scrub"] as? [String: Any])?["lastRun"] as? String, "2026-01-08T00:00:00Z", "weekly scrub: day 0 and day 7")

        // status: the failing schedule's cluster is stale (its newest backup is 10 days old).
        let st = try Self.run(w, ["status", "--json"], at: t0 + 239 * 3600)
        XCTAssertEqual(st.exitCode, 82, st.description)
        let clusters = try XCTUnwrap(try JSON.object(st.stdout)["clusters"] as? [[String: Any]])
        XCTAssertEqual(clusters.first { $0["cluster"] as? String == "c-failing" }?["status"] as? String, "stale")
        XCTAssertEqual(clusters.first { $0["cluster"] as? String == "c-daily" }?["status"] as? String, "ok")
        XCTAssertEqual(clusters.first { $0["cluster"] as? String == "c-twice" }?["status"] as? String, "ok")

        // A missed week (the machine was off) is caught up with one backup per schedule.
        try FileManager.default.moveItem(atPath: failing + ".unplugged", toPath: failing)
        let week = t0 + 17 * 86_400
        let caught = try Self.run(w, ["schedule", "run"], at: week)
        XCTAssertEqual(caught.exitCode, 0, caught.description)
        let caughtBackups = Self.logEvents(caught).filter { $0["event"] == "backup" }.compactMap { $0["schedule"] }
        XCTAssertEqual(caughtBackups.sorted(), ["daily", "failing", "twice"], caught.description)
        XCTAssertEqual(try Self.backups(w, cluster: "c-daily").count, 11)
        XCTAssertEqual(try Self.backups(w, cluster: "c-twice").count, 21)
        let again = try Self.run(w, ["schedule", "run"], at: week + 3600)
        XCTAssertEqual(again.exitCode, 0, again.description)
        XCTAssertFalse(again.stdout.contains("event=backup"), "nothing is due an hour later\n\(again.description)")
        XCTAssertEqual(try Self.run(w, ["status"], at: week + 3600).exitCode, 0)
    }

    // MARK: a failing verification

    /// A daily schedule whose full verification passes on days 1-2 and fails from day 3 on (its
    /// verification HSM is swapped for one of another manufacturer): the failed backups stay READY
    /// for inspection, tagged verification=failed, and retention (run after each of them) keeps the
    /// newest verified backup however old it gets; status exits 81 and ages the newest verified one.
    func testBackupsThatFailTheirScheduledVerificationNeverPushOutTheNewestVerifiedOne() throws {
        let w = try CLIWorld()
        defer { w.tearDown() }
        let t0 = Self.t0, day: UInt64 = 24 * 3600
        let hsm = try w.makeHSM(keys: 3, cluster: "c-v")
        let spare = w.path("spare")
        try w.expect(0, ["hsm", "create", spare, "--manufacturer", "acme", "--model", "M1", "--serial", "SP1", "--cluster", "c-spare"])
        try w.expect(0, ["retention", "set", "--cluster", "c-v", "--days", "7"])
        try Self.run(w, ["schedule", "add", "v", "--hsm", hsm, "--kms-key", "k1", "--every", "24h", "--verify", "full",
                         "--verify-hsm", spare], at: t0).assertExit(0)

        var ids: [String] = []
        for d in 0..<12 {
            if d == 2 {
                try FileManager.default.moveItem(atPath: spare, toPath: spare + ".ok")
                try FileManager.default.moveItem(atPath: w.foreignHSM, toPath: spare)
            }
            let r = try Self.run(w, ["schedule", "run"], at: t0 + UInt64(d) * day)
            let events = Self.logEvents(r).filter { $0["schedule"] == "v" }
            let backup = try XCTUnwrap(events.first { $0["event"] == "backup" }, r.description)
            XCTAssertEqual(backup["outcome"], "ok", r.description)
            ids.append(try XCTUnwrap(backup["backup_id"]))
            let verify = events.first { $0["event"] == "verify" }
            XCTAssertEqual(verify?["outcome"], d < 2 ? "ok" : "failed", r.description)
            XCTAssertEqual(r.exitCode, d < 2 ? 0 : 80, r.description)
            // Retention runs after a failed verification too, once the backup is tagged.
            XCTAssertEqual(events.first { $0["event"] == "retention" }?["outcome"], "ok", r.description)
        }

        let list = try Self.backups(w, cluster: "c-v")
        func entry(_ id: String) -> [String: Any]? { list.first { $0["backupId"] as? String == id } }
        func state(_ d: Int) -> String? { entry(ids[d])?["state"] as? String }
        func tags(_ d: Int) -> [String: String]? { entry(ids[d])?["tags"] as? [String: String] }
        XCTAssertEqual(list.count, 12)
        // Day 2's verified backup is 10 days old, past the 7-day retention, and still kept: the
        // nine newer backups failed their verification. Day 1's expired by age (a newer verified one exists).
        XCTAssertEqual(state(1), "READY", "the newest verified backup is never expired because of unverified ones")
        XCTAssertEqual(state(0), "PENDING_DELETION")
        XCTAssertEqual(tags(0), ["schedule": "v"])
        XCTAssertEqual(tags(1), ["schedule": "v"])
        for d in 2..<12 {
            XCTAssertEqual(tags(d), ["schedule": "v", "verification": "failed"], "day \(d + 1)")
            // Kept for inspection for the retention period, then expired by age like any backup.
            XCTAssertEqual(state(d), d <= 4 ? "PENDING_DELETION" : "READY", "day \(d + 1)")
        }
        let text = try w.expect(0, ["backup", "list", "--cluster", "c-v"]).stdout
        let taggedLines = text.split(separator: "\n").filter { $0.contains("verification=failed") }
        XCTAssertEqual(taggedLines.count, 10, text)
        XCTAssertTrue(taggedLines.allSatisfy { line in ids[2...].contains { line.hasPrefix($0) } }, text)

        // status: the failed verification (81), and the newest *verified* backup's age.
        let now = t0 + 11 * day + 3600
        let st = try Self.run(w, ["status", "--json"], at: now)
        XCTAssertEqual(st.exitCode, 81, st.description)
        let c = try XCTUnwrap((try JSON.object(st.stdout)["clusters"] as? [[String: Any]])?.first { $0["cluster"] as? String == "c-v" })
        XCTAssertEqual(c["status"] as? String, "verification-failed")
        XCTAssertEqual(c["newestBackupId"] as? String, ids[1])
        XCTAssertEqual(c["newestAgeSeconds"] as? Int, Int(10 * day + 3600))
        XCTAssertEqual(c["failedVerificationBackups"] as? [String], Array(ids[5...]))
        XCTAssertEqual(c["readyBackups"] as? Int, 8)
        let problems = c["problems"] as? [String] ?? []
        XCTAssertTrue(problems.contains { $0.hasPrefix("the newest verified READY backup is 1w3d1h old") }, problems.description)
        XCTAssertTrue(problems.contains { $0.hasPrefix("7 READY backup(s) failed their verification") }, problems.description)
        let plain = try Self.run(w, ["status"], at: now)
        XCTAssertTrue(plain.stdout.contains("cluster c-v  verification-failed  newest \(ids[1]) age 1w3d1h (allowed 1d2h)  8 READY (7 failed verification)"),
                      plain.description)

        // Fixed: the next run verifies, and the cluster is healthy again; the tagged ones stay tagged.
        try FileManager.default.moveItem(atPath: spare, toPath: w.foreignHSM)
        try FileManager.default.moveItem(atPath: spare + ".ok", toPath: spare)
        let fixed = try Self.run(w, ["schedule", "run"], at: t0 + 12 * day)
        XCTAssertEqual(fixed.exitCode, 0, fixed.description)
        let ok = try Self.run(w, ["status", "--json"], at: t0 + 12 * day + 60)
        XCTAssertEqual(ok.exitCode, 0, ok.description)
        let c2 = try XCTUnwrap((try JSON.object(ok.stdout)["clusters"] as? [[String: Any]])?.first { $0["cluster"] as? String == "c-v" })
        XCTAssertEqual((c2["failedVerificationBackups"] as? [String])?.count, 6, "day 6's tagged backup expired at this run")
        XCTAssertNotEqual(c2["newestBackupId"] as? String, ids[1])
        XCTAssertEqual(try Self.backups(w, cluster: "c-v").first { $0["backupId"] as? String == ids[1] }?["state"] as? String,
                       "PENDING_DELETION", "a newer verified backup exists now, so day 2's expires by age")
    }

    // MARK: the source's cluster changes

    /// The HSM behind a schedule moves to another cluster: its backups go under the new cluster,
    /// and status and retention follow them there (the old cluster is reported unscheduled).
    func testStatusFollowsTheClusterTheBackupsLandInWhenTheSourceChangesCluster() throws {
        let w = try CLIWorld()
        defer { w.tearDown() }
        let t0 = Self.t0
        let hsm = try w.makeHSM(keys: 3, cluster: "c-old")
        try Self.run(w, ["schedule", "add", "s", "--hsm", hsm, "--kms-key", "k1", "--every", "24h"], at: t0).assertExit(0)
        try Self.run(w, ["schedule", "run"], at: t0).assertExit(0)

        // The device at that path is now a member of another cluster.
        try FileManager.default.moveItem(atPath: hsm, toPath: hsm + ".old")
        try w.expect(0, ["hsm", "create", hsm, "--manufacturer", "acme", "--model", "M1", "--serial", "N1", "--cluster", "c-new"])
        try w.expect(0, ["hsm", "populate", hsm, "--keys", "2", "--users", "2", "--seed", "5", "--no-rsa"])
        let r = try Self.run(w, ["schedule", "run"], at: t0 + 24 * 3600)
        XCTAssertEqual(r.exitCode, 0, r.description)
        let backup = Self.logEvents(r).first { $0["event"] == "backup" }
        XCTAssertEqual(backup?["cluster"], "c-new", r.description)
        XCTAssertEqual(Self.logEvents(r).first { $0["event"] == "retention" }?["cluster"], "c-new", r.description)
        XCTAssertEqual(try Self.backups(w, cluster: "c-new").count, 1)

        // 30h: c-old's only backup is 30h old (more than 24h + 2h), but no schedule feeds it any
        // more; c-new, where the schedule's backups land, is 6h old.
        let st = try Self.run(w, ["status", "--json"], at: t0 + 30 * 3600)
        XCTAssertEqual(st.exitCode, 0, st.description)
        let j = try JSON.object(st.stdout)
        let clusters = try XCTUnwrap(j["clusters"] as? [[String: Any]])
        let new = try XCTUnwrap(clusters.first { $0["cluster"] as? String == "c-new" }, st.description)
        XCTAssertEqual(new["schedules"] as? [String], ["s"])
        XCTAssertEqual(new["status"] as? String, "ok")
        XCTAssertEqual(new["newestAgeSeconds"] as? Int, 6 * 3600)
        XCTAssertEqual(clusters.first { $0["cluster"] as? String == "c-old" }?["status"] as? String, "unscheduled")
        XCTAssertEqual((j["schedules"] as? [[String: Any]])?.first?["cluster"] as? String, "c-new")
        let state = try JSON.object(String(decoding: try Data(contentsOf: URL(fileURLWithPath: w.home + "/schedule-state.json")), as: UTF8.self))
        XCTAssertEqual((state["schedules"] as? [String: [String: Any]])?["s"]?["cluster"] as? String, "c-new")
        XCTAssertTrue(try Self.run(w, ["schedule", "list"], at: t0 + 30 * 3600).stdout.contains("s  cluster c-new  every 1d"))

        // And it goes stale there: 51h, no run since 24h.
        let stale = try Self.run(w, ["status", "--json"], at: t0 + 51 * 3600)
        XCTAssertEqual(stale.exitCode, 82, stale.description)
        let staleNew = try XCTUnwrap((try JSON.object(stale.stdout)["clusters"] as? [[String: Any]])?.first { $0["cluster"] as? String == "c-new" })
        XCTAssertEqual(staleNew["status"] as? String, "stale")
    }

    // MARK: one instance at a time

    func testASecondRunExitsAtOnceWhileTheLockIsHeld() throws {
        let w = try CLIWorld()
        defer { w.tearDown() }
        try Self.run(w, ["schedule", "add", "s", "--hsm", w.sourceHSM, "--kms-key", "k1", "--every", "24h"], at: Self.t0).assertExit(0)

        // Another run holds the lock (this process takes it, as a running `schedule run` would).
        let fd = open(w.home + "/schedule-run.lock", O_RDWR | O_CREAT, 0o600)
        XCTAssertGreaterThanOrEqual(fd, 0)
        XCTAssertEqual(flock(fd, LOCK_EX | LOCK_NB), 0)
        let busy = try Self.run(w, ["schedule", "run"], at: Self.t0)
        XCTAssertEqual(busy.exitCode, 75, busy.description)
        XCTAssertTrue(busy.stderr.contains("another `hsmbackup schedule run`"), busy.description)
        XCTAssertEqual(busy.stdout, "", "it did nothing")
        XCTAssertEqual(try Self.backups(w, cluster: "c1").count, 0)
        close(fd)

        // Two runs started together: one makes the backup; the other finds the lock held (75)
        // or, if it started after the first ended, nothing due (0). Never two backups.
        let results = try [0, 1].concurrentMap { _ in try Self.run(w, ["schedule", "run"], at: Self.t0) }
        XCTAssertEqual(try Self.backups(w, cluster: "c1").count, 1, results.map(\.description).joined(separator: "\n"))
        XCTAssertTrue(results.allSatisfy { [0, 75].contains($0.exitCode) }, results.map(\.description).joined(separator: "\n"))
        XCTAssertTrue(results.contains { $0.exitCode == 0 && $0.stdout.contains("event=backup") })
    }

    // MARK: status

    func testStatusExitCodesForAFreshAStaleAndAFailedCluster() throws {
        let w = try CLIWorld()
        defer { w.tearDown() }
        let t0 = Self.t0
        try Self.run(w, ["schedule", "add", "s", "--hsm", w.sourceHSM, "--kms-key", "k1", "--every", "24h"], at: t0).assertExit(0)

        // Never run, just added: within its schedule.
        XCTAssertEqual(try Self.run(w, ["status"], at: t0).exitCode, 0)
        try Self.run(w, ["schedule", "run"], at: t0).assertExit(0)

        // Fresh.
        let fresh = try Self.run(w, ["status", "--json"], at: t0 + 3600)
        XCTAssertEqual(fresh.exitCode, 0, fresh.description)
        let fj = try JSON.object(fresh.stdout)
        XCTAssertEqual(fj["verdict"] as? String, "ok")
        let c1 = try XCTUnwrap((fj["clusters"] as? [[String: Any]])?.first { $0["cluster"] as? String == "c1" })
        XCTAssertEqual(c1["newestAgeSeconds"] as? Int, 3600)
        XCTAssertEqual(c1["maxAgeSeconds"] as? Int, 26 * 3600, "24h + the default 2h grace")
        XCTAssertEqual((c1["lastVerification"] as? [String: Any])?["level"] as? String, "envelope")
        XCTAssertEqual((c1["lastVerification"] as? [String: Any])?["passed"] as? Bool, true)
        let store = try XCTUnwrap(fj["store"] as? [String: Any])
        XCTAssertEqual(store["replicasAvailable"] as? Int, 3)
        XCTAssertEqual((store["lastScrub"] as? [String: Any])?["outcome"] as? String, "ok")
        let sched = try XCTUnwrap((fj["schedules"] as? [[String: Any]])?.first)
        XCTAssertEqual(sched["nextRun"] as? String, "2026-01-02T00:00:00Z")

        // A replica directory gone: the store is degraded (83) while the backups are on time.
        let replica = w.home + "/store/replica-2"
        try FileManager.default.moveItem(atPath: replica, toPath: replica + ".away")
        let degraded = try Self.run(w, ["status"], at: t0 + 3600)
        XCTAssertEqual(degraded.exitCode, 83, degraded.description)
        XCTAssertTrue(degraded.stdout.contains("2/3 replicas available"), degraded.description)
        try FileManager.default.moveItem(atPath: replica + ".away", toPath: replica)

        // Stale: 27 hours without a run (24h + 2h grace allowed).
        let stale = try Self.run(w, ["status"], at: t0 + 27 * 3600)
        XCTAssertEqual(stale.exitCode, 82, stale.description)
        XCTAssertTrue(stale.stdout.contains("the newest READY backup is 1d3h old; its schedule allows 1d2h"), stale.description)
        XCTAssertEqual(try Self.run(w, ["status", "--grace", "4h"], at: t0 + 27 * 3600).exitCode, 0, "a longer grace")
        // The Prometheus file cannot be written (its directory is missing): the report is still
        // printed, stderr says so, and an ok status fails as an I/O error (74).
        let unwritable = w.path("no-such-dir") + "/hsmbackup.prom"
        let okButNoFile = try Self.run(w, ["status", "--grace", "4h", "--prometheus", unwritable], at: t0 + 27 * 3600)
        XCTAssertEqual(okButNoFile.exitCode, 74, okButNoFile.description)
        XCTAssertTrue(okButNoFile.stdout.contains("status ok"), okButNoFile.description)
        XCTAssertTrue(okButNoFile.stderr.contains("No such file or directory"), okButNoFile.description)
        XCTAssertEqual(try Self.run(w, ["status", "--prometheus", unwritable], at: t0 + 27 * 3600).exitCode, 82,
                       "a failing status keeps its own code")

        // Failed verification: a full verification on an HSM of another manufacturer cannot pass.
        let other = try w.makeHSM(keys: 2, cluster: "c-verify")
        try Self.run(w, ["schedule", "add", "v", "--hsm", other, "--kms-key", "k1", "--every", "24h", "--verify", "full",
                         "--verify-hsm", w.foreignHSM], at: t0 + 27 * 3600).assertExit(0)
        let run = try Self.run(w, ["schedule", "run"], at: t0 + 27 * 3600)
        XCTAssertEqual(run.exitCode, 80, run.description)
        let verify = Self.logEvents(run).first { $0["schedule"] == "v" && $0["event"] == "verify" }
        XCTAssertEqual(verify?["outcome"], "failed", run.description)
        XCTAssertNotNil(verify?["backup_id"], "the event names the backup")
        let prom = w.path("textfile") + "/hsmbackup.prom"
        try FileManager.default.createDirectory(atPath: (prom as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        let failed = try Self.run(w, ["status", "--prometheus", prom], at: t0 + 28 * 3600)
        XCTAssertEqual(failed.exitCode, 81, failed.description)
        XCTAssertTrue(failed.stdout.contains("cluster c-verify  verification-failed"), failed.description)
        XCTAssertTrue(failed.stdout.contains("cluster c1  ok"), "s ran again at 27h: c1 is fresh\n\(failed.description)")

        // The Prometheus file: every sample parses, has a TYPE, and carries the same figures.
        let text = String(decoding: try Data(contentsOf: URL(fileURLWithPath: prom)), as: UTF8.self)
        let samples = try PromText.parse(text)
        XCTAssertEqual(samples["hsmbackup_status{verdict=\"verification-failed\"}"], 1)
        XCTAssertEqual(samples["hsmbackup_status{verdict=\"ok\"}"], 0)
        XCTAssertEqual(samples["hsmbackup_cluster_last_verification_success{cluster=\"c-verify\",level=\"full\"}"], 0)
        XCTAssertEqual(samples["hsmbackup_cluster_last_verification_success{cluster=\"c1\",level=\"envelope\"}"], 1)
        XCTAssertEqual(samples["hsmbackup_cluster_newest_backup_age_seconds{cluster=\"c1\"}"], 3600)
        XCTAssertEqual(samples["hsmbackup_cluster_newest_backup_timestamp_seconds{cluster=\"c1\"}"], Double(t0 + 27 * 3600))
        XCTAssertEqual(samples["hsmbackup_cluster_ready_backups{cluster=\"c1\"}"], 2)
        XCTAssertEqual(samples["hsmbackup_schedule_last_run_success{schedule=\"v\",cluster=\"c-verify\"}"], 0)
        XCTAssertEqual(samples["hsmbackup_schedule_next_run_timestamp_seconds{schedule=\"s\",cluster=\"c1\"}"], Double(t0 + 51 * 3600))
        XCTAssertEqual(samples["hsmbackup_store_replicas_available"], 3)
        XCTAssertEqual(samples["hsmbackup_store_last_scrub_success"], 1)
        XCTAssertEqual(samples["hsmbackup_status_time_seconds"], Double(t0 + 28 * 3600))
        let perms = try FileManager.default.attributesOfItem(atPath: prom)[.posixPermissions] as? Int
        XCTAssertEqual(perms, 0o644, "node_exporter reads it as another user")
        XCTAssertEqual(try Files.list((prom as NSString).deletingLastPathComponent), ["hsmbackup.prom"], "no temp file left")
    }

    func testScheduleFileEditsAndRefusals() throws {
        let w = try CLIWorld()
        defer { w.tearDown() }
        try w.expect(0, ["schedule", "add", "a", "--hsm", w.sourceHSM, "--kms-key", "k1", "--every", "1d12h", "--tag", "x=y"])
        try w.expect(64, ["schedule", "add", "a", "--hsm", w.sourceHSM, "--kms-key", "k1", "--every", "24h"])       // exists
        try w.expect(64, ["schedule", "add", "b", "--hsm", w.sourceHSM, "--kms-key", "k1", "--every", "24"])        // no unit
        try w.expect(64, ["schedule", "add", "b", "--hsm", w.sourceHSM, "--kms-key", "k1", "--every", "30s"])       // too short
        try w.expect(64, ["schedule", "add", "b/c", "--hsm", w.sourceHSM, "--kms-key", "k1", "--every", "24h"])     // bad name
        try w.expect(64, ["schedule", "add", "b", "--hsm", w.sourceHSM, "--every", "24h"])                          // no key
        try w.expect(64, ["schedule", "add", "b", "--hsm", w.sourceHSM, "--kms-key", "k1", "--every", "24h",
                          "--tag", "verification=failed"])                                                    // the runner's tag
        try w.expect(66, ["schedule", "add", "b", "--hsm", w.sourceHSM, "--kms-key", "nope", "--every", "24h"])     // no such key
        try w.expect(66, ["schedule", "add", "b", "--hsm", w.path("none"), "--kms-key", "k1", "--every", "24h"])    // no HSM
        let list = try JSON.array(try w.expect(0, ["schedule", "list", "--json"]).stdout)
        XCTAssertEqual(list.count, 1)
        let s = try XCTUnwrap(list.first?["schedule"] as? [String: Any])
        XCTAssertEqual(s["every"] as? String, "1d12h")
        XCTAssertEqual((s["source"] as? [String: Any])?["kind"] as? String, "simulated-hsm")
        try w.expect(0, ["schedule", "scrub-interval", "3d"])
        let file = try JSON.object(String(decoding: try Data(contentsOf: URL(fileURLWithPath: w.home + "/schedules.json")), as: UTF8.self))
        XCTAssertEqual(file["format"] as? String, "hsmbackup-schedules")
        XCTAssertEqual(file["version"] as? Int, 1)
        XCTAssertEqual(file["scrubEvery"] as? String, "3d")
        try w.expect(0, ["schedule", "remove", "a"])
        try w.expect(66, ["schedule", "remove", "a"])

        // A file of a newer version is refused, not half-read; nothing runs.
        try Data(#"{"format": "hsmbackup-schedules", "version": 2, "schedules": []}"#.utf8).write(to: URL(fileURLWithPath: w.home + "/schedules.json"))
        let r = try w.run(["schedule", "run"])
        XCTAssertEqual(r.exitCode, 65, r.description)
        XCTAssertTrue(r.stderr.contains("version 2 is not one this hsmbackup reads"), r.description)
    }

    // MARK: systemd and cron

    /// `--name` is a unit name, never a path; a timer path that cannot be written is found
    /// before the service is written, so an install is whole or absent.
    func testScheduleInstallIsWholeOrAbsent() throws {
        let w = try CLIWorld()
        defer { w.tearDown() }
        let dir = w.path("units")
        for bad in ["--name=a/b", "--name=..", "--name=-x"] {
            let r = try w.run(["schedule", "install", "--systemd", dir, "--binary", CLI.binary.path, bad])
            XCTAssertEqual(r.exitCode, 64, r.description)
            XCTAssertTrue(r.stderr.contains("a unit name, not a path"), r.description)
        }
        try FileManager.default.createDirectory(atPath: dir + "/nightly.timer", withIntermediateDirectories: true)
        let r = try w.run(["schedule", "install", "--systemd", dir, "--binary", CLI.binary.path, "--name", "nightly"])
        XCTAssertEqual(r.exitCode, 64, r.description)
        XCTAssertEqual(try Files.list(dir), ["nightly.timer"], "no service written without its timer")
    }

    func testSystemdUnitsPassSystemdAnalyzeAndCronLine() throws {
        guard let analyze = External.find("systemd-analyze") else { return try External.missing("systemd-analyze") }
        let w = try CLIWorld()
        defer { w.tearDown() }
        let dir = w.path("units"), prom = w.path("textfile") + "/hsmbackup.prom"
        try FileManager.default.createDirectory(atPath: (prom as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        let r = try w.expect(0, ["schedule", "install", "--systemd", dir, "--binary", CLI.binary.path, "--prometheus", prom])
        XCTAssertTrue(r.stdout.contains("wrote \(dir)/hsmbackup.service"), r.description)
        let service = try String(contentsOfFile: dir + "/hsmbackup.service", encoding: .utf8)
        let timer = try String(contentsOfFile: dir + "/hsmbackup.timer", encoding: .utf8)
        for line in ["ExecStart=\(CLI.binary.path) --home \(w.home) schedule run", "NoNewPrivileges=yes", "ProtectSystem=strict",
                     "PrivateTmp=yes", "ReadWritePaths=-\(w.home) -\((prom as NSString).deletingLastPathComponent)", "Type=oneshot"] {
            XCTAssertTrue(service.split(separator: "\n").contains(Substring(line)), "\(line) in\n\(service)")
        }
        for line in ["Persistent=true", "OnCalendar=hourly", "Unit=hsmbackup.service", "WantedBy=timers.target"] {
            XCTAssertTrue(timer.split(separator: "\n").contains(Substring(line)), "\(line) in\n\(timer)")
        }
        // systemd-analyze verify: no complaint names our units (in a container it may say
        // other things about the system; --man=no: the page is not installed here).
        let ok = try External.run(analyze, ["verify", "--man=no", dir + "/hsmbackup.service", dir + "/hsmbackup.timer"])
        let ours = ok.output.split(separator: "\n").filter { $0.contains("hsmbackup.service") || $0.contains("hsmbackup.timer") }
        XCTAssertEqual(ours, [], ok.output)
        // The check is meaningful: a unit with a bad directive is named.
        let bad = dir + "/hsmbackup-bad.service"
        try (service + "ProtectSystm=strict\n").write(toFile: bad, atomically: true, encoding: .utf8)
        let flagged = try External.run(analyze, ["verify", "--man=no", bad])
        XCTAssertTrue(flagged.output.contains("hsmbackup-bad.service") && flagged.output.contains("ProtectSystm"), flagged.output)

        let cron = try w.expect(0, ["schedule", "install", "--cron", "--binary", "/usr/local/bin/hsmbackup"])
        XCTAssertEqual(cron.stdout, "7 * * * * /usr/local/bin/hsmbackup --home \(w.home) schedule run 2>&1 | logger -t hsmbackup\n")
        try w.expect(64, ["schedule", "install", "--cron", "--binary", "/opt/hsm%i/hsmbackup"])
        try w.expect(64, ["schedule", "install", "--cron", "--binary", "/opt/hsm backup/bin/hsmbackup"])
        try w.expect(64, ["schedule", "install"])
    }

    // MARK: make install

    func testMakeInstallIntoADestdirAndTheManPageRenders() throws {
        guard let make = External.find("make") else { return try External.missing("make") }
        guard let man = External.find("man") else { return try External.missing("man") }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
        guard FileManager.default.fileExists(atPath: root + "/.build/plugins/GenerateManual/outputs/hsmbackup/hsmbackup.1") else {
            return XCTFail("the man page is not generated: run `make man CONFIG=debug` (make test does)")
        }
        let dest = try CLI.makeHome()
        defer { try? FileManager.default.removeItem(atPath: dest) }
        let r = try External.run(make, ["-s", "-C", root, "install-files", "DESTDIR=\(dest)", "PREFIX=/usr/local", "INSTALL_BIN=\(CLI.binary.path)"])
        XCTAssertEqual(r.exitCode, 0, r.output)
        var files: [String] = []
        let e = FileManager.default.enumerator(atPath: dest)
        while let p = e?.nextObject() as? String {
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: dest + "/" + p, isDirectory: &isDir), !isDir.boolValue { files.append(p) }
        }
        XCTAssertEqual(files.sorted(), [
            "usr/local/bin/hsmbackup",
            "usr/local/lib/systemd/system/hsmbackup.service",
            "usr/local/lib/systemd/system/hsmbackup.timer",
            "usr/local/share/bash-completion/completions/hsmbackup",
            "usr/local/share/fish/vendor_completions.d/hsmbackup.fish",
            "usr/local/share/man/man1/hsmbackup.1",
            "usr/local/share/zsh/site-functions/_hsmbackup",
        ])
        let service = try String(contentsOfFile: dest + "/usr/local/lib/systemd/system/hsmbackup.service", encoding: .utf8)
        XCTAssertTrue(service.contains("ExecStart=/usr/local/bin/hsmbackup --home /var/lib/hsmbackup schedule run"), service)
        let bash = try String(contentsOfFile: dest + "/usr/local/share/bash-completion/completions/hsmbackup", encoding: .utf8)
        XCTAssertTrue(bash.contains("schedule") && bash.contains("status"), "the completions know the new commands")

        let page = try External.run(man, ["-l", dest + "/usr/local/share/man/man1/hsmbackup.1"], environment: ["MANPAGER": "cat", "MANWIDTH": "1000", "LANG": "C.UTF-8"])
        XCTAssertEqual(page.exitCode, 0, page.output)
        // One line per paragraph (MANWIDTH=1000), spaces collapsed.
        let rendered = page.stdout.split(whereSeparator: \.isWhitespace).joined(separator: " ")
        XCTAssertTrue(rendered.contains("HSMBACKUP(1)"), page.output)
        XCTAssertTrue(rendered.contains("Run what is due, once, and exit"), "the page documents schedule run\n\(rendered)")
        XCTAssertTrue(rendered.contains("75 another run holds the lock"), "and the exit codes\n\(rendered)")
        XCTAssertFalse(page.stderr.contains("warning"), page.stderr)

        let u = try External.run(make, ["-s", "-C", root, "uninstall", "DESTDIR=\(dest)", "PREFIX=/usr/local"])
        XCTAssertEqual(u.exitCode, 0, u.output)
        let left = (FileManager.default.enumerator(atPath: dest)?.allObjects as? [String] ?? []).filter {
            var isDir: ObjCBool = false
            return FileManager.default.fileExists(atPath: dest + "/" + $0, isDirectory: &isDir) && !isDir.boolValue
        }
        XCTAssertEqual(left, [], "uninstall removes every installed file")
    }
}

extension CLIRun {
    func assertExit(_ code: Int32, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(exitCode, code, description, file: file, line: line)
    }
}

extension Array {
    /// Runs `body` for every element at once (each on its own thread) and returns the results in order.
    func concurrentMap<T>(_ body: @escaping (Element) throws -> T) throws -> [T] {
        let lock = NSLock()
        nonisolated(unsafe) var results = [Result<T, Error>?](repeating: nil, count: count)
        nonisolated(unsafe) let items = self
        nonisolated(unsafe) let body = body
        DispatchQueue.concurrentPerform(iterations: count) { i in
            let r = Result { try body(items[i]) }
            lock.lock(); results[i] = r; lock.unlock()
        }
        return try results.map { try $0!.get() }
    }
}

/// The Prometheus text exposition format, as node_exporter's textfile collector reads it:
/// `# HELP`/`# TYPE` lines, then `name{labels} value` samples; every sample's family has a TYPE.
enum PromText {
    static func parse(_ text: String) throws -> [String: Double] {
        var types: [String: String] = [:], samples: [String: Double] = [:]
        for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
            if line.hasPrefix("# TYPE ") {
                let parts = line.split(separator: " ")
                guard parts.count == 4 else { throw CLIWorldError("bad TYPE line: \(line)") }
                types[String(parts[2])] = String(parts[3])
                continue
            }
            if line.hasPrefix("# HELP ") { continue }
            guard let space = line.lastIndex(of: " ") else { throw CLIWorldError("bad sample: \(line)") }
            let series = String(line[..<space]), valueText = line[line.index(after: space)...]
            guard let value = Double(valueText) else { throw CLIWorldError("bad value in \(line)") }
            let name = String(series.prefix { $0 != "{" })
            guard name.range(of: "^[a-zA-Z_:][a-zA-Z0-9_:]*$", options: .regularExpression) != nil else { throw CLIWorldError("bad name: \(line)") }
            guard types[name] == "gauge" else { throw CLIWorldError("\(name) has no TYPE gauge line before it") }
            if series.count > name.count {
                guard series.range(of: #"^[a-zA-Z_:][a-zA-Z0-9_:]*\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)+\}$"#, options: .regularExpression) != nil else {
                    throw CLIWorldError("bad labels: \(line)")
                }
            }
            guard samples.updateValue(value, forKey: series) == nil else { throw CLIWorldError("duplicate series \(series)") }
        }
        return samples
    }
}

/// External tools the install and unit tests need: with HSMBACKUP_REQUIRE_EXTERNAL=1 (make test)
/// a missing one fails the test; otherwise the test is skipped, saying which.
enum External {
    static func find(_ tool: String) -> String? {
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
            let p = "\(dir)/\(tool)"
            if FileManager.default.isExecutableFile(atPath: p) { return p }
        }
        return nil
    }

    static func missing(_ tool: String) throws {
        if ProcessInfo.processInfo.environment["HSMBACKUP_REQUIRE_EXTERNAL"] == "1" {
            XCTFail("\(tool) is not installed (make deps installs it)")
        } else {
            throw XCTSkip("\(tool) is not installed (make deps installs it; HSMBACKUP_REQUIRE_EXTERNAL=1 makes this a failure)")
        }
    }

    struct Result { let exitCode: Int32; let stdout: String; let stderr: String; var output: String { stdout + stderr } }

    static func run(_ tool: String, _ args: [String], environment extra: [String: String] = [:]) throws -> Result {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: tool)
        p.arguments = args
        var env = ProcessInfo.processInfo.environment
        for (k, v) in extra { env[k] = v }
        p.environment = env
        let tmp = FileManager.default.temporaryDirectory
        let o = tmp.appendingPathComponent("ext-out-\(UUID().uuidString)"), e = tmp.appendingPathComponent("ext-err-\(UUID().uuidString)")
        _ = FileManager.default.createFile(atPath: o.path, contents: nil)
        _ = FileManager.default.createFile(atPath: e.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: o); try? FileManager.default.removeItem(at: e) }
        let oh = try FileHandle(forWritingTo: o), eh = try FileHandle(forWritingTo: e)
        p.standardOutput = oh
        p.standardError = eh
        p.standardInput = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        try oh.close(); try eh.close()
        return Result(exitCode: p.terminationStatus, stdout: String(decoding: try Data(contentsOf: o), as: UTF8.self),
                      stderr: String(decoding: try Data(contentsOf: e), as: UTF8.self))
    }
}

/// Schedules whose source is a PKCS#11 token (SoftHSM2, a token directory per test) and whose
/// keys are AWS KMS keys (moto, started by scripts/aws/with-moto.sh). Every `schedule run` is a
/// process of its own on the test's clock; the PIN and the AWS credentials travel only in the
/// environment (or a credential file), never in the schedule file.
final class SourceScheduleTests: XCTestCase {
    static let module = "/usr/lib/softhsm/libsofthsm2.so"
    static let soPIN = "so-pin-5150"
    static let userPIN = "user-pin-8086"
    static let t0 = ScheduleTests.t0

    /// A SoftHSM2 configuration of this test's own; fails (HSMBACKUP_REQUIRE_EXTERNAL=1) or skips without SoftHSM.
    struct SoftHSM {
        let conf: String
        let dir: String

        init(_ w: CLIWorld) throws {
            let missing = [SourceScheduleTests.module, "/usr/bin/softhsm2-util", "/usr/bin/pkcs11-tool"].filter { !FileManager.default.fileExists(atPath: $0) }
            if !missing.isEmpty {
                let message = "SoftHSM2 / OpenSC missing (\(missing.joined(separator: ", "))): run `make deps`"
                if ProcessInfo.processInfo.environment["HSMBACKUP_REQUIRE_EXTERNAL"] == "1" {
                    XCTFail(message)
                    throw XCTSkip("failed: " + message)
                }
                throw XCTSkip(message)
            }
            dir = w.path("softhsm")
            try FileManager.default.createDirectory(atPath: dir + "/tokens", withIntermediateDirectories: true)
            conf = dir + "/softhsm2.conf"
            try "directories.tokendir = \(dir)/tokens\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n"
                .write(toFile: conf, atomically: true, encoding: .utf8)
        }

        /// The environment of a run with (or without) the user PIN.
        func env(pin: String? = SourceScheduleTests.userPIN, at t: UInt64? = nil, extra: [String: String] = [:]) -> [String: String] {
            var e = ["SOFTHSM2_CONF": conf, "HSMBACKUP_PKCS11_SO_PIN": SourceScheduleTests.soPIN]
            if let pin { e["HSMBACKUP_PKCS11_PIN"] = pin }
            if let t { e["HSMBACKUP_TEST_CLOCK"] = "\(t)" }
            for (k, v) in extra { e[k] = v }
            return e
        }

        func tool(_ path: String, _ args: [String]) throws {
            let r = try External.run(path, args, environment: ["SOFTHSM2_CONF": conf])
            XCTAssertEqual(r.exitCode, 0, "\(path) \(args.joined(separator: " ")): \(r.output)")
        }

        /// A token provisioned for manufacturer acme (the world's operator key), holding two
        /// extractable keys, and (`locked`) one the token will not export.
        func token(_ w: CLIWorld, _ label: String, locked: Bool = false) throws {
            try tool("/usr/bin/softhsm2-util", ["--init-token", "--free", "--label", label, "--so-pin", SourceScheduleTests.soPIN,
                                                "--pin", SourceScheduleTests.userPIN])
            let r = try w.run(["pkcs11", "provision", "--module", SourceScheduleTests.module, "--token", label, "--manufacturer", "acme"], environment: env())
            XCTAssertEqual(r.exitCode, 0, r.description)
            let login = ["--module", SourceScheduleTests.module, "--token-label", label, "--login", "--pin", SourceScheduleTests.userPIN]
            try tool("/usr/bin/pkcs11-tool", login + ["--keygen", "--key-type", "AES:32", "--label", "aes-1", "--id", "01", "--extractable"])
            try tool("/usr/bin/pkcs11-tool", login + ["--keygen", "--key-type", "GENERIC:32", "--label", "hmac-1", "--id", "02", "--extractable"])
            if locked {
                try tool("/usr/bin/pkcs11-tool", login + ["--keygen", "--key-type", "AES:32", "--label", "locked", "--id", "03", "--sensitive"])
            }
        }
    }

    func events(_ r: CLIRun, _ schedule: String, _ event: String) -> [[String: String]] {
        ScheduleTests.logEvents(r).filter { $0["schedule"] == schedule && $0["event"] == event }
    }

    // MARK: PKCS#11

    func testAPKCS11ScheduleOverSimulatedDaysAndWithoutItsPIN() throws {
        let w = try CLIWorld()
        defer { w.tearDown() }
        let hsm = try SoftHSM(w)
        try hsm.token(w, "daily-token")
        let sim = try w.makeHSM(keys: 3, cluster: "c-sim")
        // `schedule add` needs no PIN: it checks the module and the token, and stores neither PIN nor secret.
        let add = try w.run(["schedule", "add", "tok", "--pkcs11", "--module", Self.module, "--token", "daily-token", "--cluster", "c-tok",
                             "--kms-key", "k1", "--every", "24h", "--verify", "full"], environment: hsm.env(pin: nil, at: Self.t0))
        XCTAssertEqual(add.exitCode, 0, add.description)
        XCTAssertTrue(add.stdout.contains("HSMBACKUP_PKCS11_PIN"), "says where the run reads the PIN\n\(add.description)")
        try ScheduleTests.run(w, ["schedule", "add", "sim", "--hsm", sim, "--kms-key", "k1", "--every", "24h"], at: Self.t0).assertExit(0)
        let file = try String(contentsOfFile: w.home + "/schedules.json", encoding: .utf8)
        let stored = try XCTUnwrap((try JSON.object(file)["schedules"] as? [[String: Any]])?.first { $0["name"] as? String == "tok" })
        let source = try XCTUnwrap(stored["source"] as? [String: Any])
        XCTAssertEqual(source["kind"] as? String, "pkcs11")
        XCTAssertEqual(source["module"] as? String, Self.module)
        XCTAssertEqual(source["token"] as? String, "daily-token")
        XCTAssertEqual(source["allowPartial"] as? Bool, false)
        XCTAssertEqual(stored["cluster"] as? String, "c-tok")
        XCTAssertFalse(file.contains(Self.userPIN) || file.contains(Self.soPIN), file)

        // Three simulated days: a backup of the token each day, verified by a dry-run restore on it.
        for day in UInt64(0)..<3 {
            let r = try w.run(["schedule", "run"], environment: hsm.env(at: Self.t0 + day * 86_400 + 600))
            XCTAssertEqual(r.exitCode, 0, r.description)
            let backup = events(r, "tok", "backup"), verify = events(r, "tok", "verify")
            XCTAssertEqual(backup.first?["outcome"], "ok", r.description)
            XCTAssertEqual(backup.first?["source"], "pkcs11", r.description)
            XCTAssertEqual(backup.first?["skipped"], "0", r.description)
            XCTAssertEqual(backup.first?["cluster"], "c-tok", r.description)
            XCTAssertEqual(verify.first?["outcome"], "ok", r.description)
            XCTAssertEqual(verify.first?["level"], "full", r.description)
            XCTAssertEqual(events(r, "sim", "backup").first?["outcome"], "ok", r.description)
            XCTAssertFalse(r.stdout.contains(Self.userPIN) || r.stderr.contains(Self.userPIN), r.description)
            // An hour later nothing is due.
            let idle = try w.run(["schedule", "run"], environment: hsm.env(at: Self.t0 + day * 86_400 + 4_200))
            XCTAssertEqual(idle.exitCode, 0, idle.description)
            XCTAssertEqual(ScheduleTests.logEvents(idle).filter { $0["event"] == "backup" }.count, 0, idle.description)
        }
        let tokBackups = try ScheduleTests.backups(w, cluster: "c-tok")
        XCTAssertEqual(tokBackups.count, 3)
        XCTAssertTrue(tokBackups.allSatisfy { $0["state"] as? String == "READY" })
        // Each backup of the token restores: a dry run onto it by hand agrees with the schedule's verification.
        let newest = try XCTUnwrap(tokBackups.max { ($0["createdMillis"] as! Int) < ($1["createdMillis"] as! Int) }?["backupId"] as? String)
        let full = try w.run(["verify", newest, "--level", "full", "--pkcs11", "--module", Self.module, "--token", "daily-token"], environment: hsm.env())
        XCTAssertEqual(full.exitCode, 0, full.description)
        XCTAssertEqual(tokBackups.compactMap { $0["createdMillis"] as? Int }.sorted(),
                       (0..<3).map { Int((Self.t0 + UInt64($0) * 86_400 + 600) * 1000) }, "stamped by the schedule's clock")

        // status shows the source kind, per schedule.
        let st = try w.run(["status", "--json"], environment: hsm.env(at: Self.t0 + 2 * 86_400 + 700))
        XCTAssertEqual(st.exitCode, 0, st.description)
        let rows = try XCTUnwrap(try JSON.object(st.stdout)["schedules"] as? [[String: Any]])
        XCTAssertEqual(rows.first { $0["name"] as? String == "tok" }?["sourceKind"] as? String, "pkcs11")
        XCTAssertEqual(rows.first { $0["name"] as? String == "sim" }?["sourceKind"] as? String, "simulated-hsm")
        let text = try w.run(["status"], environment: hsm.env(at: Self.t0 + 2 * 86_400 + 700))
        XCTAssertTrue(text.stdout.contains("schedule tok  source pkcs11  cluster c-tok"), text.description)

        // Day 3 without a PIN: the token's schedule fails, saying where a PIN would come from;
        // the other schedule still runs.
        let noPIN = try w.run(["schedule", "run"], environment: hsm.env(pin: nil, at: Self.t0 + 3 * 86_400 + 600))
        XCTAssertEqual(noPIN.exitCode, 80, noPIN.description)
        let failed = events(noPIN, "tok", "backup")
        XCTAssertEqual(failed.first?["outcome"], "failed", noPIN.description)
        XCTAssertTrue(failed.first?["error"]?.contains("no user PIN for PKCS#11 token \"daily-token\"") == true, noPIN.description)
        XCTAssertTrue(failed.first?["error"]?.contains("LoadCredential=") == true, noPIN.description)
        XCTAssertEqual(events(noPIN, "sim", "backup").first?["outcome"], "ok", noPIN.description)
        XCTAssertEqual(try ScheduleTests.backups(w, cluster: "c-tok").count, 3, "nothing was stored for the failed run")
        let stale = try w.run(["status"], environment: hsm.env(pin: nil, at: Self.t0 + 3 * 86_400 + 700))
        XCTAssertTrue(stale.stdout.contains("no user PIN"), stale.description)

        // An hour later, the PIN as a systemd credential ($CREDENTIALS_DIRECTORY): the retry succeeds.
        let creds = w.path("credentials")
        try FileManager.default.createDirectory(atPath: creds, withIntermediateDirectories: true)
        try (Self.userPIN + "\n").write(toFile: creds + "/hsmbackup-pkcs11-pin", atomically: true, encoding: .utf8)
        let retry = try w.run(["schedule", "run"], environment: hsm.env(pin: nil, at: Self.t0 + 3 * 86_400 + 4_300, extra: ["CREDENTIALS_DIRECTORY": creds]))
        XCTAssertEqual(retry.exitCode, 0, retry.description)
        XCTAssertEqual(events(retry, "tok", "verify").first?["outcome"], "ok", retry.description)
        XCTAssertEqual(try ScheduleTests.backups(w, cluster: "c-tok").count, 4)

        // A wrong PIN in a PIN file (HSMBACKUP_PKCS11_PIN_FILE, for cron) fails that schedule only, at login.
        let pinFile = w.path("pin")
        try "not-the-pin".write(toFile: pinFile, atomically: true, encoding: .utf8)
        let wrong = try w.run(["schedule", "run"], environment: hsm.env(pin: nil, at: Self.t0 + 4 * 86_400 + 4_300, extra: ["HSMBACKUP_PKCS11_PIN_FILE": pinFile]))
        XCTAssertEqual(wrong.exitCode, 80, wrong.description)
        XCTAssertEqual(events(wrong, "tok", "backup").first?["outcome"], "failed", wrong.description)
        XCTAssertEqual(events(wrong, "sim", "backup").first?["outcome"], "ok", wrong.description)
        XCTAssertFalse(wrong.stdout.contains("not-the-pin"), wrong.description)
    }

    func testAPKCS11BackupThatWouldSkipKeysFailsUnlessAllowPartial() throws {
        let w = try CLIWorld()
        defer { w.tearDown() }
        let hsm = try SoftHSM(w)
        try hsm.token(w, "locked-token", locked: true)
        for (name, extra) in [("strict", [String]()), ("lenient", ["--allow-partial"])] {
            let r = try w.run(["schedule", "add", name, "--pkcs11", "--module", Self.module, "--token", "locked-token", "--cluster", "c-\(name)",
                               "--kms-key", "k1", "--every", "24h", "--verify", "full"] + extra, environment: hsm.env(pin: nil, at: Self.t0))
            XCTAssertEqual(r.exitCode, 0, r.description)
        }
        let r = try w.run(["schedule", "run"], environment: hsm.env(at: Self.t0 + 60))
        XCTAssertEqual(r.exitCode, 80, r.description)
        let strict = events(r, "strict", "backup").first, lenient = events(r, "lenient", "backup").first
        XCTAssertEqual(strict?["outcome"], "failed", r.description)
        XCTAssertTrue(strict?["error"]?.contains("locked") == true, "the error names the key not backed up\n\(r.description)")
        XCTAssertEqual(lenient?["outcome"], "ok", r.description)
        XCTAssertEqual(lenient?["skipped"], "1", r.description)
        XCTAssertEqual(events(r, "lenient", "verify").first?["outcome"], "ok", r.description)
        XCTAssertEqual(try ScheduleTests.backups(w, cluster: "c-strict").count, 0, "a refused partial backup stores nothing")
        XCTAssertEqual(try ScheduleTests.backups(w, cluster: "c-lenient").count, 1)
    }

    func testScheduleAddRefusalsForPKCS11AndTheUnitsLoadThePINCredential() throws {
        let w = try CLIWorld()
        defer { w.tearDown() }
        let hsm = try SoftHSM(w)
        try hsm.token(w, "T")
        let base = ["--kms-key", "k1", "--every", "24h"]
        let refusals: [([String], Int32, String)] = [
            (["schedule", "add", "a", "--pkcs11"] + base, 64, "--pkcs11 needs --module PATH and --token LABEL"),
            (["schedule", "add", "a", "--pkcs11", "--module", Self.module] + base, 64, "--pkcs11 needs --module PATH and --token LABEL"),
            (["schedule", "add", "a", "--pkcs11", "--token", "T"] + base, 64, "--pkcs11 needs --module PATH and --token LABEL"),
            (["schedule", "add", "a", "--module", Self.module, "--token", "T"] + base, 64, "--module, --token and --cluster go with --pkcs11"),
            (["schedule", "add", "a", "--pkcs11", "--module", Self.module, "--token", "T", "--hsm", w.sourceHSM] + base, 64, "give one"),
            (["schedule", "add", "a", "--pkcs11", "--module", Self.module, "--token", "T", "--pin", Self.userPIN] + base, 64, "--pin"),
            (["schedule", "add", "a", "--pkcs11", "--module", Self.module, "--token", "T", "--user-pin", Self.userPIN] + base, 64, "--user-pin"),
            (["schedule", "add", "a", "--pkcs11", "--module", Self.module, "--token", "T", "--verify", "full", "--verify-hsm", w.targetHSM] + base, 64, "--verify-hsm is for --hsm schedules"),
            (["schedule", "add", "a", "--hsm", w.sourceHSM, "--allow-partial"] + base, 64, "--allow-partial goes with --pkcs11"),
            (["schedule", "add", "a", "--pkcs11", "--module", Self.module, "--token", "no-such-token"] + base, 66, "no-such-token"),
            (["schedule", "add", "a", "--pkcs11", "--module", w.root + "/missing.so", "--token", "T"] + base, 66, "missing.so"),
            (["schedule", "add", "a", "--hsm", w.sourceHSM, "--kms-key", "alias/backups", "--every", "24h"], 64, "an alias only encrypts"),
            (["schedule", "add", "a", "--hsm", w.sourceHSM, "--kms-key", "arn:aws:kms:us-east-1:123456789012:alias/b", "--every", "24h"], 64, "an alias only encrypts"),
            (["schedule", "add", "a", "--hsm", w.sourceHSM, "--kms-key", "arn:aws:kms:nowhere", "--every", "24h"], 64, "arn:aws:kms:nowhere"),
        ]
        for (args, code, message) in refusals {
            let r = try w.run(args, environment: hsm.env(pin: nil, at: Self.t0))
            XCTAssertEqual(r.exitCode, code, r.description)
            XCTAssertTrue(r.stderr.contains(message), "\(message) in\n\(r.description)")
            let stored = (try? String(contentsOfFile: w.home + "/schedules.json", encoding: .utf8)) ?? ""
            XCTAssertFalse(stored.contains("\"a\""), "nothing stored\n\(r.description)")
        }
        XCTAssertFalse(try w.run(["schedule", "add", "--help"]).stdout.contains("--pin "), "there is no PIN option")

        // Without a PKCS#11 schedule the service carries the credential line commented out; with
        // one it loads the PIN file as the credential `schedule run` reads.
        let plain = w.path("units")
        try w.expect(0, ["schedule", "install", "--systemd", plain, "--binary", CLI.binary.path])
        let before = try String(contentsOfFile: plain + "/hsmbackup.service", encoding: .utf8)
        XCTAssertTrue(before.split(separator: "\n").contains("#LoadCredential=hsmbackup-pkcs11-pin:/etc/hsmbackup/pkcs11-pin"), before)
        XCTAssertFalse(before.split(separator: "\n").contains { $0.hasPrefix("LoadCredential=") }, before)
        let add = try w.run(["schedule", "add", "tok", "--pkcs11", "--module", Self.module, "--token", "T", "--kms-key", "k1", "--every", "24h"],
                            environment: hsm.env(pin: nil, at: Self.t0))
        XCTAssertEqual(add.exitCode, 0, add.description)
        let units = w.path("units")
        try w.expect(0, ["schedule", "install", "--systemd", units, "--binary", CLI.binary.path])
        let service = try String(contentsOfFile: units + "/hsmbackup.service", encoding: .utf8)
        XCTAssertTrue(service.split(separator: "\n").contains("LoadCredential=hsmbackup-pkcs11-pin:/etc/hsmbackup/pkcs11-pin"), service)
        XCTAssertFalse(service.contains(Self.userPIN), service)
        let custom = w.path("units")
        try w.expect(0, ["schedule", "install", "--systemd", custom, "--binary", CLI.binary.path, "--pkcs11-pin-file", "/etc/credstore/token-pin"])
        XCTAssertTrue(try String(contentsOfFile: custom + "/hsmbackup.service", encoding: .utf8).contains("LoadCredential=hsmbackup-pkcs11-pin:/etc/credstore/token-pin\n"))
        try w.expect(64, ["schedule", "install", "--systemd", custom, "--binary", CLI.binary.path, "--pkcs11-pin-file", "relative/pin"])
        if let analyze = External.find("systemd-analyze") {
            let ok = try External.run(analyze, ["verify", "--man=no", units + "/hsmbackup.service", units + "/hsmbackup.timer"])
            let ours = ok.output.split(separator: "\n").filter { $0.contains("hsmbackup.service") || $0.contains("hsmbackup.timer") }
            XCTAssertEqual(ours, [], ok.output)
        }
    }

    // MARK: AWS KMS

    /// moto's endpoint and keys (scripts/aws/moto.sh), or a skip / failure (HSMBACKUP_REQUIRE_EXTERNAL=1).
    struct Moto {
        let endpoint: String, region: String, accessKeyID: String, secret: String, venv: String

        static func require() throws -> Moto {
            let env = ProcessInfo.processInfo.environment
            guard let e = env["HSMBACKUP_TEST_AWS_ENDPOINT"], let a = env["HSMBACKUP_TEST_AWS_ACCESS_KEY_ID"],
                  let s = env["HSMBACKUP_TEST_AWS_SECRET_ACCESS_KEY"], let v = env["HSMBACKUP_TEST_AWS_VENV"] else {
                let why = "no moto server: run through `make test` or scripts/aws/with-moto.sh (HSMBACKUP_TEST_AWS_* unset)"
                if env["HSMBACKUP_REQUIRE_EXTERNAL"] == "1" { XCTFail(why); throw XCTSkip("failed: " + why) }
                throw XCTSkip(why)
            }
            return Moto(endpoint: e, region: env["HSMBACKUP_TEST_AWS_REGION"] ?? "us-east-1", accessKeyID: a, secret: s, venv: v)
        }

        /// What a process needs to reach moto; `secret` overrides the secret key (wrong credentials).
        func env(secret: String? = nil, at t: UInt64? = nil) -> [String: String] {
            var e = ["AWS_ACCESS_KEY_ID": accessKeyID, "AWS_SECRET_ACCESS_KEY": secret ?? self.secret, "AWS_ENDPOINT_URL": endpoint,
                     "AWS_REGION": region, "AWS_DEFAULT_REGION": region, "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
                     "AWS_CONFIG_FILE": "/nonexistent/config"]
            if let t { e["HSMBACKUP_TEST_CLOCK"] = "\(t)" }
            return e
        }

        func createKey() throws -> String {
            let r = try External.run(venv + "/bin/aws", ["kms", "create-key", "--endpoint-url", endpoint, "--region", region,
                                                         "--query", "KeyMetadata.Arn", "--output", "text"], environment: env())
            XCTAssertEqual(r.exitCode, 0, r.output)
            return r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        }
    }

    func testAnAWSKMSKeyScheduleBacksUpAndVerifiesAndWrongCredentialsFailOnlyIt() throws {
        let moto = try Moto.require()
        let w = try CLIWorld()
        defer { w.tearDown() }
        let arn = try moto.createKey()
        XCTAssertTrue(arn.hasPrefix("arn:aws:kms:"), arn)
        let cloud = try w.makeHSM(keys: 3, cluster: "c-aws"), local = try w.makeHSM(keys: 3, cluster: "c-local")
        // No credentials needed to add it; none stored.
        try ScheduleTests.run(w, ["schedule", "add", "aws", "--hsm", cloud, "--kms-key", arn, "--kms-key", "k1", "--every", "24h"], at: Self.t0).assertExit(0)
        try ScheduleTests.run(w, ["schedule", "add", "local", "--hsm", local, "--kms-key", "k2", "--every", "24h"], at: Self.t0).assertExit(0)
        let file = try String(contentsOfFile: w.home + "/schedules.json", encoding: .utf8)
        XCTAssertTrue(file.contains(arn), file)
        XCTAssertFalse(file.contains(moto.secret) || file.contains(moto.accessKeyID), file)

        let r = try w.run(["schedule", "run"], environment: moto.env(at: Self.t0 + 60))
        XCTAssertEqual(r.exitCode, 0, r.description)
        XCTAssertEqual(events(r, "aws", "backup").first?["outcome"], "ok", r.description)
        XCTAssertEqual(events(r, "aws", "verify").first?["outcome"], "ok", r.description)
        XCTAssertEqual(events(r, "aws", "verify").first?["level"], "envelope", r.description)
        let id = try XCTUnwrap(events(r, "aws", "backup").first?["backup_id"])
        // The backup opens with the AWS key alone (its EDK is KMS's), and with the local key alone.
        let viaAWS = try w.run(["verify", id, "--level", "envelope", "--kms-key", arn], environment: moto.env())
        XCTAssertEqual(viaAWS.exitCode, 0, viaAWS.description)
        let inspect = try w.run(["verify", id, "--level", "envelope", "--kms-key", "k1"])
        XCTAssertEqual(inspect.exitCode, 0, inspect.description)

        // The next day with a wrong secret key: that schedule fails (nothing stored), the local one runs.
        let bad = try w.run(["schedule", "run"], environment: moto.env(secret: "wrong-secret-key-0000000000000000000000", at: Self.t0 + 86_400 + 60))
        XCTAssertEqual(bad.exitCode, 80, bad.description)
        let failed = events(bad, "aws", "backup").first
        XCTAssertEqual(failed?["outcome"], "failed", bad.description)
        XCTAssertTrue(failed?["error"]?.hasSuffix("(exit 67)") == true, "the key cannot be used with these credentials\n\(bad.description)")
        XCTAssertFalse(bad.stdout.contains("wrong-secret-key"), bad.description)
        XCTAssertEqual(events(bad, "local", "backup").first?["outcome"], "ok", bad.description)
        XCTAssertEqual(try ScheduleTests.backups(w, cluster: "c-aws").count, 1, "nothing stored for the failed run")
        XCTAssertEqual(try ScheduleTests.backups(w, cluster: "c-local").count, 2)

        // No credentials at all: the same, with the configuration error named.
        var none = moto.env(at: Self.t0 + 86_400 + 3_700)
        none["AWS_ACCESS_KEY_ID"] = ""
        none["AWS_SECRET_ACCESS_KEY"] = ""
        let missing = try w.run(["schedule", "run"], environment: none)
        XCTAssertEqual(missing.exitCode, 80, missing.description)
        XCTAssertEqual(events(missing, "aws", "backup").first?["outcome"], "failed", missing.description)
        XCTAssertTrue(events(missing, "aws", "backup").first?["error"]?.hasSuffix("(exit 64)") == true, "no credentials: a configuration error\n\(missing.description)")

        // And with the right ones again, the retry an hour later succeeds.
        let retry = try w.run(["schedule", "run"], environment: moto.env(at: Self.t0 + 86_400 + 7_300))
        XCTAssertEqual(retry.exitCode, 0, retry.description)
        XCTAssertEqual(events(retry, "aws", "verify").first?["outcome"], "ok", retry.description)
    }
}
