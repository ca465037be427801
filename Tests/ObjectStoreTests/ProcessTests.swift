import Foundation
import XCTest
@testable import ObjectStore

/// Tests with real child processes (StoreCrashHelper): kill -9 during puts, concurrent writers.
final class ProcessTests: XCTestCase {
    static let helper: String = {
        let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let candidates = [
            URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("StoreCrashHelper").path,
            Bundle.main.bundleURL.appendingPathComponent("StoreCrashHelper").path,
            Bundle.main.bundleURL.deletingLastPathComponent().appendingPathComponent("StoreCrashHelper").path,
            packageRoot.appendingPathComponent(".build/debug/StoreCrashHelper").path,
        ]
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) } ?? candidates.last!
    }()

    /// The helper's object for index `i` (same formula as Sources/StoreCrashHelper/main.swift).
    func expected(_ key: String) -> [UInt8] {
        let i = Int(key.split(separator: "-").last!)!
        return pattern([3_000, 200_000, 1_300_000, 70_000][i % 4] + i % 97, seed: UInt64(i))
    }

    func spawn(_ args: [String], stdout: Pipe? = nil) throws -> Process {
        XCTAssertTrue(FileManager.default.isExecutableFile(atPath: Self.helper), "build StoreCrashHelper first: \(Self.helper)")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Self.helper)
        p.arguments = args
        p.standardOutput = stdout ?? FileHandle.nullDevice
        try p.run()
        return p
    }

    func testKillNineDuringPutsLeavesWholeObjectsOnly() throws {
        let s = Scratch()
        let root = s.path + "/store"
        try LocalObjectStore.create(at: root)
        var completed: [String] = []
        var killedWithTemps = 0
        for round in 0..<50 {
            let out = Pipe()
            let p = try spawn(["put-loop", root, "r\(round)-"], stdout: out)
            // Wait until the child has opened the store, then kill it at a random point of its puts.
            var said = Data()
            // Every fifth round waits for a first completed put, so the loop proves completed
            // puts survive even when the child is slow (sanitizer builds).
            let marker = round % 5 == 0 ? "done " : "ready\n"
            while !String(decoding: said, as: UTF8.self).contains(marker) {
                let d = out.fileHandleForReading.availableData
                if d.isEmpty { break }
                said += d
            }
            usleep(UInt32.random(in: 1_000...60_000))
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            XCTAssertEqual(p.terminationReason, .uncaughtSignal)
            said += out.fileHandleForReading.readDataToEndOfFile()
            completed += String(decoding: said, as: UTF8.self).split(separator: "\n").filter { $0.hasPrefix("done ") }.map { String($0.dropFirst(5)) }
            if !tempFiles(under: root).isEmpty { killedWithTemps += 1 }
        }
        print("kill loop: 50 kills, \(killedWithTemps) left temp files (killed mid-put), \(completed.count) puts completed")
        XCTAssertFalse(completed.isEmpty)
        let store = try LocalObjectStore(root: root) // opening removes the dead writers' temps
        XCTAssertEqual(tempFiles(under: root), [])
        let listed = try store.list()
        XCTAssertTrue(Set(completed).isSubset(of: Set(listed)), "every completed put is there")
        for key in listed {
            // Every visible object is whole: either completed, or killed after its first replica was
            // published (then read-repair and scrub fill in the other replicas).
            XCTAssertEqual(try store.getAll(key, limit: 4 << 20), expected(key), key)
        }
        let scrub = try store.scrub(repair: true)
        XCTAssertEqual(scrub.corrupt, 0)
        XCTAssertEqual(scrub.unrecoverable, 0)
        XCTAssertTrue(try store.scrub().isClean)
    }

    func testConcurrentCatalogWritersLoseNoUpdate() throws {
        let s = Scratch()
        let root = s.path + "/store"
        let catalog = try BackupCatalog(store: try LocalObjectStore.create(at: root))
        _ = try catalog.add(NewBackup(backupId: "shared", clusterId: "c", hsmId: "h", manufacturer: "sim"), archive: BytesSource([1]))
        var procs: [Process] = []
        for k in 0..<4 {
            procs.append(try spawn(["catalog-add", root, "p\(k)-", "10"]))
            procs.append(try spawn(["tag", root, "shared", "t\(k)-", "12"]))
        }
        for p in procs { p.waitUntilExit(); XCTAssertEqual(p.terminationStatus, 0) }
        let all = try catalog.list()
        XCTAssertEqual(all.count, 41)
        XCTAssertTrue(all.allSatisfy { $0.state == .ready })
        let shared = try catalog.entry("shared")
        XCTAssertEqual(shared.tags.count, 48, "no tag update was lost")
        XCTAssertEqual(shared.generation, 2 + 48)
        XCTAssertEqual(try catalog.check(), [])
        XCTAssertEqual(try catalog.removeStaleTemps(), [])
    }

    func testConcurrentPutsReadsScrubsAndDeletes() throws {
        let s = Scratch()
        let root = s.path + "/store"
        let store = try LocalObjectStore.create(at: root)
        for i in 0..<12 { _ = try store.put("pre-\(i)", bytes: expected("pre-\(i)")) }
        let procs = try ["a-", "b-", "c-"].map { try spawn(["put-loop", root, $0, "6"]) }
        var deleted: [String] = []
        var i = 0
        while procs.contains(where: { $0.isRunning }) || i < 12 {
            if i < 12 {
                if i % 2 == 0 { _ = try store.delete("pre-\(i)"); deleted.append("pre-\(i)") } else {
                    XCTAssertEqual(try store.getAll("pre-\(i)"), expected("pre-\(i)"))
                }
                i += 1
            }
            let report = try store.scrub(repair: true)
            XCTAssertEqual(report.corrupt, 0)
            XCTAssertEqual(report.unrecoverable, 0)
        }
        for p in procs { p.waitUntilExit(); XCTAssertEqual(p.terminationStatus, 0) }
        var expectedKeys = (0..<12).map { "pre-\($0)" }.filter { !deleted.contains($0) }
        for prefix in ["a-", "b-", "c-"] { expectedKeys += (0..<6).map { prefix + String($0) } }
        XCTAssertEqual(try store.list(), expectedKeys.sorted())
        for key in expectedKeys { XCTAssertEqual(try store.getAll(key, limit: 4 << 20), expected(key)) }
        XCTAssertTrue(try store.scrub().isClean)
        XCTAssertEqual(tempFiles(under: root), [])
    }

    func testRacingPutsOfOneKeyStoreExactlyOneWholeObject() throws {
        let s = Scratch()
        let root = s.path + "/store"
        let store = try LocalObjectStore.create(at: root)
        for round in 0..<3 {
            let key = "same-\(round)"
            let procs = try (1...6).map { try spawn(["put-one", root, key, String($0)]) }
            for p in procs { p.waitUntilExit() }
            let winners = procs.enumerated().filter { $0.element.terminationStatus == 0 }.map { $0.offset + 1 }
            XCTAssertEqual(winners.count, 1, "exactly one put of \(key) succeeds")
            XCTAssertTrue(procs.allSatisfy { $0.terminationStatus == 0 || $0.terminationStatus == 3 })
            if let seed = winners.first {
                XCTAssertEqual(try store.getAll(key, limit: 4 << 20), pattern(1_100_000, seed: UInt64(seed)))
            }
        }
        let scrub = try store.scrub()
        XCTAssertTrue(scrub.isClean, "no replica holds a loser's bytes: \(scrub.findings)")
        XCTAssertEqual(tempFiles(under: root), [])
    }

    /// Reads the child's stdout until `marker` appears (or it ends).
    func waitFor(_ marker: String, _ out: Pipe) -> String {
        var said = Data()
        while !String(decoding: said, as: UTF8.self).contains(marker) {
            let d = out.fileHandleForReading.availableData
            if d.isEmpty { break }
            said += d
        }
        return String(decoding: said, as: UTF8.self)
    }

    /// Issue 14 item 1: `add` killed at random moments (mid-put, between put and READY, in the
    /// catalog writes). One recovery leaves no CREATE_IN_PROGRESS entry, a clean check, and every
    /// READY backup whole; a second recovery has nothing to do.
    func testKilledCreatesAreFinishedOrRolledBackByOneRecovery() throws {
        let s = Scratch()
        let root = s.path + "/store"
        try LocalObjectStore.create(at: root)
        var outcomes: [RecoveryAction.Action: Int] = [:]
        for round in 0..<20 {
            let out = Pipe()
            let p = try spawn(["add-big", root, "r\(round)-", "3", "2500000"], stdout: out)
            _ = waitFor("ready", out)
            usleep(UInt32.random(in: 0...120_000))
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            let catalog = try BackupCatalog(store: try LocalObjectStore(root: root))
            for a in try catalog.recover() { outcomes[a.action, default: 0] += 1 }
            XCTAssertEqual(try catalog.list(CatalogQuery(states: [.createInProgress])), [], "round \(round)")
            XCTAssertEqual(try catalog.check(), [], "round \(round)")
            XCTAssertEqual(try catalog.recover(), [], "round \(round): a second recovery has nothing to do")
        }
        print("killed creates: recovery did \(outcomes)")
        let catalog = try BackupCatalog(store: try LocalObjectStore(root: root))
        for e in try catalog.list() {
            XCTAssertEqual(e.state, .ready)
            let i = Int(e.backupId.split(separator: "-").last!)!
            XCTAssertEqual(try catalog.store.getAll(e.objectKey, limit: 4 << 20), pattern(2_500_000, seed: UInt64(i)), e.backupId)
        }
        XCTAssertEqual(tempFiles(under: root), [])
    }

    /// Issue 14 item 2: `copy` killed at random moments; the retry succeeds and the destination
    /// is clean (before: CREATE_IN_PROGRESS for good and `alreadyExists` on every retry).
    func testKilledCopyIsRetryable() throws {
        let s = Scratch()
        let source = try BackupCatalog(store: try LocalObjectStore.create(at: s.path + "/a"))
        let bytes = pattern(6_000_000, seed: 5)
        try source.add(NewBackup(backupId: "b1", clusterId: "c", hsmId: "h", manufacturer: "sim"), archive: BytesSource(bytes))
        for round in 0..<8 {
            let dest = s.path + "/d\(round)"
            try LocalObjectStore.create(at: dest)
            let out = Pipe()
            let p = try spawn(["copy", s.path + "/a", "b1", dest], stdout: out)
            _ = waitFor("ready", out)
            usleep(UInt32.random(in: 0...150_000))
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            let d = try BackupCatalog(store: try LocalObjectStore(root: dest))
            let copy = try source.copy("b1", to: d, newBackupId: "b1")
            XCTAssertEqual(copy.state, .ready, "round \(round)")
            XCTAssertEqual(try d.store.getAll(copy.objectKey, limit: 8 << 20), bytes, "round \(round)")
            XCTAssertEqual(try d.check(), [], "round \(round)")
            XCTAssertEqual(try d.recover(), [], "round \(round)")
        }
    }

    /// Issue 14 item 7: concurrent `init`s of one root: one makes the store, the others are
    /// `alreadyInitialized`, and every replica carries the winner's marker.
    func testConcurrentInitsOneWins() throws {
        for round in 0..<4 {
            let s = Scratch()
            let root = s.path + "/store"
            let procs = try (0..<6).map { _ in try spawn(["init", root]) }
            for p in procs { p.waitUntilExit() }
            let codes = procs.map(\.terminationStatus)
            XCTAssertEqual(codes.filter { $0 == 0 }.count, 1, "round \(round): \(codes)")
            XCTAssertEqual(codes.filter { $0 == 4 }.count, 5, "round \(round): \(codes)")
            let store = try LocalObjectStore(root: root)
            XCTAssertEqual(store.replicaPaths.indices.compactMap { store.replicaStatus($0) }, [], "round \(round)")
        }
    }

    /// Issue 14 item 8: scrub --repair while another process tags a backup in a loop (each tag
    /// replaces its metadata object): no damage is reported.
    func testScrubDuringCommittedChangesIsNotDamage() throws {
        let s = Scratch()
        let root = s.path + "/store"
        let catalog = try BackupCatalog(store: try LocalObjectStore.create(at: root))
        try catalog.add(NewBackup(backupId: "busy", clusterId: "c", hsmId: "h", manufacturer: "sim"), archive: BytesSource([1, 2, 3]))
        let p = try spawn(["tag", root, "busy", "t-", "40"])
        var scrubs = 0
        while p.isRunning || scrubs == 0 {
            let r = try catalog.scrub(repair: true)
            XCTAssertEqual(r.missing, 0, "\(r.findings)")
            XCTAssertEqual(r.corrupt, 0, "\(r.findings)")
            XCTAssertEqual(r.unrecoverable, 0, "\(r.unrecoverableKeys)")
            scrubs += 1
        }
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0)
        XCTAssertEqual(try catalog.entry("busy").tags.count, 40)
        XCTAssertEqual(try catalog.check(), [])
        print("scrubs during tags: \(scrubs)")
    }
}
