import ArgumentParser
import Durability
import Foundation

/// Where the embedded defaults live: `--home DIR` (root option), HSMBACKUP_HOME, or ~/.hsmbackup.
enum Home {
    static var path: String {
        // getenv, not ProcessInfo.environment: that copies the whole environment into Strings
        // that are never wiped, a raw key given as `env:VAR` included.
        if let p = getenv("HSMBACKUP_HOME"), p.pointee != 0 { return String(cString: p) }
        return NSHomeDirectory() + "/.hsmbackup"
    }
    static var kms: String { path + "/kms" }

    /// Why the home cannot be used (it exists but is not a directory), or nil. A home that does
    /// not exist yet is fine: the first command that needs it creates it.
    static var problem: String? {
        var st = stat()
        if stat(path, &st) != 0 {
            return errno == ENOENT ? nil : "home \(path): \(FileError(errno: errno, operation: "stat", path: path).reason)"
        }
        guard st.st_mode & S_IFMT == S_IFDIR else {
            return "home \(path) is a \(FileError.kindName(st.st_mode)), not a directory (--home DIR or HSMBACKUP_HOME)"
        }
        return nil
    }
    static var store: String { path + "/store" }
    static var hsms: String { path + "/hsms" }
    static var manufacturers: String { path + "/manufacturers" }
}

/// The documented exit codes. Each module's error type maps itself to one of these through
/// `CLIExitMappable`, in the command file that uses it.
enum CLIExit: Int32, CaseIterable {
    case success = 0
    case usage = 64                 // bad arguments (also ArgumentParser's validation failures)
    case verificationFailed = 65    // data failed a check: tag, signature, digest, structure
    case notFound = 66              // a file, backup id, key or HSM that does not exist
    case noUsableKey = 67           // no key we have opens the archive or envelope
    case incompatibleHSM = 68       // restore onto another manufacturer or operator key
    case internalError = 70         // a bug: please report it
    case ioError = 74               // the file system or store failed (full, unwritable, ...)
    case permissionDenied = 77      // the store refused our credentials (S3 AccessDenied, InvalidAccessKeyId ...)
    // Schedules and health (issue 18, ScheduleCommands.swift).
    case scheduleBusy = 75          // schedule run: another run holds the lock; this one did nothing
    case scheduleFailed = 80        // schedule run: a schedule or the scrub failed (the others ran)
    case statusVerificationFailed = 81 // status: a cluster's last scheduled verification failed
    case statusStale = 82           // status: a cluster's newest READY backup is older than its schedule allows
    case statusStoreDegraded = 83   // status: a store replica is unavailable or the last scrub failed

    static var summary: String {
        "0 ok, 64 usage, 65 verification failed, 66 not found, 67 no usable key, 68 incompatible HSM, 70 internal error, 74 I/O error, 77 permission denied; "
            + "verify --all: 0 every archive passed, 65 any failed, else the code of the first archive (in catalog order) that could not be judged; "
            + "schedule run: 75 another run holds the lock (restore --pkcs11: another restore holds the token), 80 a schedule or the scrub failed; "
            + "status: 81 a verification failed, 82 a backup is older than its schedule allows, 83 store degraded."
    }

    /// Maps any error to the exit code and a one-line message on stderr.
    static func translate(_ error: Error) -> Error {
        if let mappable = error as? CLIExitMappable {
            Err.line("hsmbackup: error: \(mappable.cliMessage)")
            return ExitCode(mappable.cliExit.rawValue)
        }
        return error // ArgumentParser's own errors (usage, help, ExitCode) pass through.
    }
}

/// Implemented (in the command files) by each library error type, so every failure has a
/// documented exit code and a clear message.
protocol CLIExitMappable: Error {
    var cliExit: CLIExit { get }
    var cliMessage: String { get }
}

/// `--json` output: sorted keys, so field order is stable for scripts and tests. The encoder
/// escapes C0 controls; DEL and C1 controls (U+0080...U+009F, CSI among them) are escaped here
/// too, so no string in JSON can drive a terminal either. The value is the same JSON.
enum JSONOutput {
    static func print<T: Encodable>(_ value: T) throws {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        var text = String(decoding: try enc.encode(value), as: UTF8.self)
        if text.unicodeScalars.contains(where: { $0.value >= 0x7F && $0.value <= 0x9F }) {
            var escaped = String.UnicodeScalarView()
            for u in text.unicodeScalars {
                if u.value >= 0x7F && u.value <= 0x9F {
                    escaped.append(contentsOf: String(format: "\\u%04x", u.value).unicodeScalars)
                } else {
                    escaped.append(u)
                }
            }
            text = String(escaped)
        }
        try Out.raw(Array((text + "\n").utf8))
    }
}

/// Whether to draw progress: only when stderr is a terminal.
enum Terminal {
    static var stderrIsTTY: Bool { isatty(2) == 1 }
}
