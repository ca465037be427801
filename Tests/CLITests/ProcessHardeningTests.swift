import Foundation
import ProcessHardening
import XCTest

/// The CLI holds keys, so before anything else it turns core files off (RLIMIT_CORE 0/0) and
/// makes itself non-dumpable (PR_SET_DUMPABLE 0): spec/FORMAT.md section 7.
final class ProcessHardeningTests: XCTestCase {
    /// From inside a real CLI process: `selftest` reads the settings back with getrlimit and
    /// PR_GET_DUMPABLE (both set by `main` before the arguments are parsed).
    func testSelfTestReadsBackNoCoreFilesAndNotDumpable() throws {
        let r = try CLI.run(["selftest"])
        XCTAssertEqual(r.exitCode, 0, r.description)
        XCTAssertTrue(r.stdout.contains("ok   process hardening: RLIMIT_CORE 0/0, not dumpable"), r.description)
    }

    /// The malloc arena cap the CLI sets at start (one per core, at least 2), left to the
    /// operator when MALLOC_ARENA_MAX is set.
    func testMallocArenasAreCappedUnlessTheOperatorSetsThem() {
        let outer = getenv("MALLOC_ARENA_MAX").map { String(cString: $0) }
        unsetenv("MALLOC_ARENA_MAX")
        defer { if let outer { setenv("MALLOC_ARENA_MAX", outer, 1) } }
        XCTAssertEqual(MallocArenas.boundToCores(1), 2)
        XCTAssertEqual(MallocArenas.boundToCores(16), 16)
        setenv("MALLOC_ARENA_MAX", "4", 1)
        XCTAssertNil(MallocArenas.boundToCores(2))
        unsetenv("MALLOC_ARENA_MAX")
    }

    /// From outside: /proc/<pid>/limits of a CLI process blocked reading stdin (`store put K -`),
    /// started by a shell that first raised its own core limit, so the 0 is the CLI's doing.
    func testARunningCLIProcessHasACoreFileLimitOfZero() throws {
        guard FileManager.default.fileExists(atPath: "/proc/self/limits") else { throw XCTSkip("no /proc") }
        let home = try CLI.makeHome()
        XCTAssertEqual(try CLI.run(["store", "init"], home: home).exitCode, 0)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", "ulimit -c unlimited 2>/dev/null || ulimit -S -c \"$(ulimit -H -c)\"; echo \"shell-core-limit=$(ulimit -c)\" >&2; exec \"$0\" store put held -",
                       CLI.binary.path]
        var env = ProcessInfo.processInfo.environment
        env["HSMBACKUP_HOME"] = home
        p.environment = env
        let errURL = FileManager.default.temporaryDirectory.appendingPathComponent("hardening-err-\(UUID().uuidString)")
        FileManager.default.createFile(atPath: errURL.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: errURL) }
        let input = Pipe()
        p.standardInput = input
        p.standardOutput = FileHandle.nullDevice
        p.standardError = try FileHandle(forWritingTo: errURL)
        try p.run()
        let pid = p.processIdentifier

        // Wait (≤ 20 s) until the shell has exec'd the CLI and the CLI has set its limit; the CLI
        // then blocks reading stdin, which is still open.
        var limits = ""
        let deadline = Date().addingTimeInterval(20)
        let binary = CLI.binary.resolvingSymlinksInPath().path
        while Date() < deadline {
            let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/exe")) ?? ""
            limits = (try? String(contentsOfFile: "/proc/\(pid)/limits", encoding: .utf8)) ?? ""
            if exe == binary, Self.coreLine(limits) == ["0", "0"] { break }
            Thread.sleep(forTimeInterval: 0.02)
        }
        let ownerUid = (try? FileManager.default.attributesOfItem(atPath: "/proc/\(pid)/status"))?[.ownerAccountID] as? NSNumber
        input.fileHandleForWriting.write(Data("x".utf8))
        try input.fileHandleForWriting.close()
        p.waitUntilExit()
        let stderr = String(decoding: try Data(contentsOf: errURL), as: UTF8.self)
        XCTAssertEqual(p.terminationStatus, 0, stderr)
        let shellLimit = stderr.split(separator: "\n").first { $0.hasPrefix("shell-core-limit=") }?.dropFirst("shell-core-limit=".count)
        guard let shellLimit, shellLimit != "0" else {
            throw XCTSkip("the shell could not raise its core limit (\(stderr)); a 0 would prove nothing")
        }
        XCTAssertEqual(Self.coreLine(limits), ["0", "0"], "Max core file size of the running CLI:\n\(limits)")
        // Not dumpable: the kernel gives /proc/<pid> to root (visible only when we are not root).
        if getuid() != 0 { XCTAssertEqual(ownerUid?.intValue, 0, "/proc/\(pid) of a non-dumpable process is root's") }
    }

    /// The soft and hard values of the "Max core file size" row of /proc/<pid>/limits.
    static func coreLine(_ limits: String) -> [String] {
        guard let line = limits.split(separator: "\n").first(where: { $0.hasPrefix("Max core file size") }) else { return [] }
        return line.dropFirst("Max core file size".count).split(separator: " ").prefix(2).map(String.init)
    }

    /// The library call itself, read back in this process without changing it: the status is
    /// what /proc/self/limits says.
    func testStatusAgreesWithProcSelfLimits() throws {
        let s = try ProcessHardening.status()
        guard let limits = try? String(contentsOfFile: "/proc/self/limits", encoding: .utf8) else { throw XCTSkip("no /proc") }
        let row = Self.coreLine(limits).map { $0 == "unlimited" ? UInt64.max : UInt64($0) ?? 1 }
        XCTAssertEqual(row, [s.coreLimitSoft, s.coreLimitHard])
        XCTAssertNotNil(s.dumpable)
    }
}
