import Foundation
import XCTest

/// Runs the built `hsmbackup` binary as a user would and captures a transcript: the command,
/// what it printed on stdout and stderr, and its exit code.
struct CLIRun: CustomStringConvertible {
    let arguments: [String]
    let stdout: String
    let stderr: String
    let exitCode: Int32
    /// The command did not end within the harness's bound and was killed (a hang, not a result).
    var timedOut = false

    var description: String {
        "$ hsmbackup \(arguments.joined(separator: " "))\n\(stdout)\(stderr.isEmpty ? "" : "[stderr] \(stderr)")[exit \(exitCode)]"
            + (timedOut ? " [HUNG: killed after \(CLI.hangBound) s]" : "")
    }
}

enum CLI {
    /// The binary built next to this test bundle (.build/debug/hsmbackup).
    static var binary: URL {
        if let override = ProcessInfo.processInfo.environment["HSMBACKUP_BIN"] { return URL(fileURLWithPath: override) }
        // On Linux the test bundle is a file in the build directory; elsewhere a directory in it.
        let bundle = Bundle(for: Marker.self).bundleURL
        for dir in [bundle, bundle.deletingLastPathComponent()] {
            let candidate = dir.appendingPathComponent("hsmbackup")
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
        }
        return bundle.deletingLastPathComponent().appendingPathComponent("hsmbackup")
    }

    private final class Marker {}

    /// How long a command may run before the harness calls it hung and kills it. Not an
    /// assertion about speed: a bound so that a regression to a hang fails instead of stalling the suite.
    /// HSMBACKUP_TEST_HANG_BOUND (seconds) overrides it, e.g. to run these tests against an old
    /// binary (HSMBACKUP_BIN) that still hangs.
    static let hangBound: TimeInterval = ProcessInfo.processInfo.environment["HSMBACKUP_TEST_HANG_BOUND"].flatMap(TimeInterval.init) ?? 300

    /// `stdoutPath`: send stdout there instead of capturing it (`/dev/full`); `cwd`: run there.
    @discardableResult
    static func run(_ args: [String], home: String? = nil, stdin: Data? = nil,
                    environment extra: [String: String] = [:], cwd: String? = nil, stdoutPath: String? = nil) throws -> CLIRun {
        let p = Process()
        p.executableURL = binary
        p.arguments = args
        if let cwd { p.currentDirectoryURL = URL(fileURLWithPath: cwd) }
        var env = ProcessInfo.processInfo.environment
        if let home { env["HSMBACKUP_HOME"] = home }
        for (k, v) in extra { env[k] = v }
        p.environment = env
        // Output goes to temp files, so a chatty command can never block on a full pipe.
        let tmp = FileManager.default.temporaryDirectory
        let outURL = tmp.appendingPathComponent("cli-out-\(UUID().uuidString)")
        let errURL = tmp.appendingPathComponent("cli-err-\(UUID().uuidString)")
        FileManager.default.createFile(atPath: outURL.path, contents: nil)
        FileManager.default.createFile(atPath: errURL.path, contents: nil)
        defer {
            try? FileManager.default.removeItem(at: outURL)
            try? FileManager.default.removeItem(at: errURL)
        }
        let outHandle = try FileHandle(forWritingTo: outURL), errHandle = try FileHandle(forWritingTo: errURL)
        let input = Pipe()
        let redirected = try stdoutPath.map { path -> FileHandle in
            guard let h = FileHandle(forWritingAtPath: path) else { throw CLIWorldError("cannot open \(path) for the command's stdout") }
            return h
        }
        p.standardOutput = redirected ?? outHandle
        p.standardError = errHandle
        p.standardInput = input
        let ended = DispatchSemaphore(value: 0)
        p.terminationHandler = { _ in ended.signal() }
        try p.run()
        if let stdin { input.fileHandleForWriting.write(stdin) }
        try input.fileHandleForWriting.close()
        var timedOut = false
        if ended.wait(timeout: .now() + hangBound) == .timedOut {
            timedOut = true
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
        }
        try outHandle.close()
        try errHandle.close()
        try redirected?.close()
        var r = CLIRun(arguments: args, stdout: String(decoding: try Data(contentsOf: outURL), as: UTF8.self),
                       stderr: String(decoding: try Data(contentsOf: errURL), as: UTF8.self), exitCode: p.terminationStatus)
        r.timedOut = timedOut
        return r
    }

    /// Runs a shell command line (for umask and pipes), with the same capture as `run`.
    static func runShell(_ line: String, home: String? = nil) throws -> CLIRun {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", line]
        var env = ProcessInfo.processInfo.environment
        if let home { env["HSMBACKUP_HOME"] = home }
        p.environment = env
        let tmp = FileManager.default.temporaryDirectory
        let outURL = tmp.appendingPathComponent("sh-out-\(UUID().uuidString)")
        let errURL = tmp.appendingPathComponent("sh-err-\(UUID().uuidString)")
        FileManager.default.createFile(atPath: outURL.path, contents: nil)
        FileManager.default.createFile(atPath: errURL.path, contents: nil)
        defer {
            try? FileManager.default.removeItem(at: outURL)
            try? FileManager.default.removeItem(at: errURL)
        }
        let o = try FileHandle(forWritingTo: outURL), e = try FileHandle(forWritingTo: errURL)
        p.standardOutput = o
        p.standardError = e
        p.standardInput = FileHandle.nullDevice
        let ended = DispatchSemaphore(value: 0)
        p.terminationHandler = { _ in ended.signal() }
        try p.run()
        var timedOut = false
        if ended.wait(timeout: .now() + hangBound) == .timedOut {
            timedOut = true
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
        }
        try o.close(); try e.close()
        var r = CLIRun(arguments: [line], stdout: String(decoding: try Data(contentsOf: outURL), as: UTF8.self),
                       stderr: String(decoding: try Data(contentsOf: errURL), as: UTF8.self), exitCode: p.terminationStatus)
        r.timedOut = timedOut
        return r
    }

    /// A fresh home directory for one test.
    static func makeHome() throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("hsmb-home-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }
}
