import Foundation
import Durability
import XCTest

/// Issue 14, part A, through the built CLI: killed commands (kill -9 at random moments) leave a
/// store that one `store fsck` settles, so that a second `fsck` is clean and nothing is stuck.
final class RecoveryCLITests: CLIWorldTestCase {
    /// Starts `hsmbackup ARGS` in `home` and kills it with SIGKILL after `delay` microseconds,
    /// or, with `whenFileIn`, as soon as one of those directories holds a file whose name contains
    /// `named` (a put of that object in flight).
    func killed(_ args: [String], home: String, afterMicroseconds delay: UInt32, whenFileIn dirs: [String] = [],
                named: String = "") throws {
        let p = Process()
        p.executableURL = CLI.binary
        p.arguments = args
        var env = ProcessInfo.processInfo.environment
        env["HSMBACKUP_HOME"] = home
        p.environment = env
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        if dirs.isEmpty {
            usleep(delay)
        } else {
            while p.isRunning, !dirs.contains(where: { ((try? FileManager.default.contentsOfDirectory(atPath: $0)) ?? []).contains { $0.contains(named) } }) {
                usleep(200)
            }
        }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
    }

    /// One fsck settles the store: it exits 0, a second one says the catalog and objects agree,
    /// and no backup is CREATE_IN_PROGRESS.
    func assertFsckSettles(home: String? = nil, _ context: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let h = home ?? w.home
        let first = try CLI.run(["store", "fsck"], home: h)
        XCTAssertEqual(first.exitCode, 0, "\(context)\n\(first)", file: file, line: line)
        let second = try CLI.run(["store", "fsck"], home: h)
        XCTAssertEqual(second.exitCode, 0, "\(context)\n\(second)", file: file, line: line)
        XCTAssertTrue(second.stdout.contains("catalog and objects agree"), "\(context)\n\(second)", file: file, line: line)
        XCTAssertFalse(second.stdout.contains("recovered:"), "\(context): the second fsck has nothing to do\n\(second)", file: file, line: line)
        let stuck = try CLI.run(["backup", "list", "--state", "CREATE_IN_PROGRESS", "--json"], home: h)
        XCTAssertEqual(stuck.exitCode, 0, stuck.description, file: file, line: line)
        XCTAssertEqual(try JSON.array(stuck.stdout).count, 0, "\(context): nothing stuck\n\(stuck)", file: file, line: line)
    }

    /// `envelope decrypt -o` killed at random moments leaves no temp file beside the output (the
    /// new file has no name until its commit, O_TMPFILE) and no partial output: the output is
    /// there whole, or not at all.
    func testKilledDecryptLeavesNeitherATempNorPartOfThePlaintext() throws {
        let dir = w.path("killed-decrypt")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        // Where the file system has no O_TMPFILE the temp is named, and a kill leaves it (the
        // documented fallback): nothing to test here then.
        let probe = try AtomicFile.Writer(path: dir + "/probe")
        let unnamed = probe.unnamed
        probe.abort()
        guard unnamed else { throw XCTSkip("no O_TMPFILE in \(dir)") }
        var plain = [UInt8](repeating: 0, count: 48 << 20)
        for i in stride(from: 0, to: plain.count, by: 4096) { plain[i] = UInt8(truncatingIfNeeded: i >> 12) }
        try Files.write(plain, dir + "/plain.bin")
        try w.expect(0, ["envelope", "encrypt", dir + "/plain.bin", "-o", dir + "/m.env", "--kms-key", "k1"])
        var interrupted = 0
        for round in 0..<8 {
            try killed(["envelope", "decrypt", dir + "/m.env", "-o", dir + "/out.bin", "--kms-key", "k1"], home: w.home,
                       afterMicroseconds: UInt32.random(in: 40_000...200_000))
            let names = try Files.list(dir)
            XCTAssertFalse(names.contains { $0.contains(".tmp-") }, "round \(round): \(names)")
            if names.contains("out.bin") {
                XCTAssertEqual(try Files.read(dir + "/out.bin"), plain, "round \(round): an output is whole")
                try FileManager.default.removeItem(atPath: dir + "/out.bin")
            } else {
                interrupted += 1
            }
        }
        XCTAssertGreaterThan(interrupted, 0, "no round was killed before its commit")
    }

    func testKilledBackupCreateIsFinishedOrRolledBackByFsck() throws {
        let hsm = try w.makeHSM(keys: 300)
        let temps = (0..<3).map { w.home + "/store/replica-\($0)/tmp" }
        for round in 0..<12 {
            // Even rounds: killed while the archive put is in flight (the entry exists, no
            // archive yet); odd rounds: at a random moment.
            try killed(["backup", "create", "--hsm", hsm, "--kms-key", "k1"], home: w.home,
                       afterMicroseconds: UInt32.random(in: 20_000...200_000), whenFileIn: round % 2 == 0 ? temps : [], named: "~archive")
            try assertFsckSettles("round \(round)")
        }
        // Every backup that is READY now is whole and this backup's archive.
        for e in try JSON.array(try w.expect(0, ["backup", "list", "--state", "READY", "--json"]).stdout) {
            try w.expect(0, ["verify", try XCTUnwrap(e["backupId"] as? String), "--level", "structure"])
        }
    }

    func testKilledBackupCopyIsRetryable() throws {
        let id = try w.createStoredBackup()
        for round in 0..<5 {
            let other = w.path("home-copy")
            try FileManager.default.createDirectory(atPath: other, withIntermediateDirectories: true)
            XCTAssertEqual(try CLI.run(["store", "init"], home: other).exitCode, 0)
            try killed(["backup", "copy", id, "--to-store", other + "/store"], home: w.home,
                       afterMicroseconds: UInt32.random(in: 20_000...300_000))
            let retry = try w.run(["backup", "copy", id, "--to-store", other + "/store"])
            XCTAssertEqual(retry.exitCode, 0, "round \(round): a copy is retryable\n\(retry)")
            try assertFsckSettles(home: other, "round \(round)")
            let list = try JSON.array(try CLI.run(["backup", "list", "--json"], home: other).stdout)
            XCTAssertEqual(list.map { $0["state"] as? String }, ["READY"])
        }
        try w.expect(0, ["backup", "delete", id])
    }

    func testFsckAfterRewrapIsClean() throws {
        let id = try w.createStoredBackup()
        try w.expect(0, ["backup", "rewrap", id, "--kms-key", "k2"])
        let fsck = try w.expect(0, ["store", "fsck"])
        XCTAssertTrue(fsck.stdout.contains("catalog and objects agree"), fsck.description)
        try w.expect(0, ["store", "reindex"])
        XCTAssertEqual(try w.entry(id)["state"] as? String, "READY")
        try w.expect(0, ["verify", id, "--level", "envelope", "--kms-key", "k2"])
        try w.expect(0, ["backup", "delete", id])
        try assertFsckSettles("after rewrap")
    }

    func testAMissingCatalogIsDamageNotAnEmptyStore() throws {
        let id = try w.createStoredBackup()
        let catalog = w.home + "/store/catalog/catalog.bin"
        try FileManager.default.removeItem(atPath: catalog)
        let list = try w.expect(65, ["backup", "list"])
        XCTAssertTrue(list.stderr.contains("badCatalog") && list.stderr.contains("store reindex"), list.description)
        try w.expect(65, ["backup", "create", "--hsm", w.sourceHSM, "--kms-key", "k1"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: catalog), "no catalog that forgets the other backups")
        try w.expect(65, ["store", "fsck"])
        try w.expect(0, ["store", "reindex"])
        XCTAssertEqual(try w.entry(id)["state"] as? String, "READY")
        try w.expect(0, ["backup", "delete", id])
        try assertFsckSettles("after reindex")
    }

    func testKilledRestoreLeavesNoPlaintextTemp() throws {
        let id = try w.createStoredBackup()
        let target = try w.makeHSM(keys: 5)
        let before = try w.contents(target)
        let source = try w.contents(w.sourceHSM)
        func temps() throws -> [String] {
            try FileManager.default.contentsOfDirectory(atPath: target).filter { $0.hasPrefix(".contents.state.tmp-") }
        }
        for round in 0..<6 {
            try killed(["restore", id, "--hsm", target], home: w.home, afterMicroseconds: UInt32.random(in: 20_000...250_000))
            XCTAssertEqual(try temps(), [], "round \(round): the new contents file has no name until its commit")
            let now = try w.contents(target)
            XCTAssertTrue(now == before || now == source, "round \(round): all old or all new")
        }
        // A temp of an older writer (or one killed between naming and renaming) goes on the next open.
        try Files.write([1, 2, 3], target + "/.contents.state.tmp-0badc0de")
        _ = try w.contents(target)
        XCTAssertEqual(try temps(), [])
        try w.expect(0, ["backup", "delete", id])
    }

    func testConcurrentStoreInitsOneWins() throws {
        for round in 0..<3 {
            let home = w.path("home-init")
            try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true)
            let group = DispatchGroup()
            let results = RunResults()
            for _ in 0..<6 {
                DispatchQueue.global().async(group: group) {
                    let r = try? CLI.run(["store", "init"], home: home)
                    results.append(r)
                }
            }
            group.wait()
            let runs = results.all
            XCTAssertEqual(runs.count, 6)
            XCTAssertEqual(runs.filter { $0?.exitCode == 0 }.count, 1, "round \(round): \(runs.map { $0?.description ?? "nil" })")
            for r in runs where r?.exitCode != 0 {
                XCTAssertEqual(r?.exitCode, 64)
                XCTAssertTrue(r?.stderr.contains("alreadyInitialized") == true, r?.description ?? "")
            }
            let stat = try JSON.object(try CLI.run(["store", "stat", "--json"], home: home).stdout)
            let replicas = try XCTUnwrap(stat["replicas"] as? [[String: Any]])
            XCTAssertEqual(replicas.map { $0["available"] as? Bool }, [true, true, true], "round \(round)")
        }
    }
}

/// Results collected from concurrent runs.
private final class RunResults: @unchecked Sendable {
    private let lock = NSLock()
    private var runs: [CLIRun?] = []
    func append(_ r: CLIRun?) { lock.lock(); runs.append(r); lock.unlock() }
    var all: [CLIRun?] { lock.lock(); defer { lock.unlock() }; return runs }
}
