// Process hardening of a process that holds keys (spec/FORMAT.md section 7, "Anyone reading the
// tool's output or logs" and the note on core dumps): the `hsmbackup` CLI calls `apply()` before
// it parses its arguments, so no key it later unwraps, derives or reads can reach a core file,
// and other processes of the same user cannot attach to it with ptrace or read its memory
// through /proc/<pid>/mem.
//   RLIMIT_CORE        soft 0 and hard 0 (a child cannot raise it again)
//   PR_SET_DUMPABLE    0 (Linux; elsewhere only the core limit applies)
// The C calls live in the CProcess shim; this module is the only one that imports it.
import CProcess
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public enum ProcessHardening {
    /// The process's current settings.
    public struct Status: Equatable, Sendable, CustomStringConvertible {
        /// RLIMIT_CORE in bytes; `UInt64.max` is unlimited.
        public let coreLimitSoft: UInt64
        public let coreLimitHard: UInt64
        /// PR_GET_DUMPABLE (0 = not dumpable); nil where the platform has no such flag.
        public let dumpable: Int32?

        public var isHardened: Bool { coreLimitSoft == 0 && coreLimitHard == 0 && (dumpable ?? 0) == 0 }

        public var description: String {
            func limit(_ v: UInt64) -> String { v == UInt64.max ? "unlimited" : String(v) }
            return "RLIMIT_CORE \(limit(coreLimitSoft))/\(limit(coreLimitHard)), "
                + (dumpable.map { $0 == 0 ? "not dumpable" : "dumpable (\($0))" } ?? "dumpable flag unknown")
        }
    }

    /// Turns core files off and makes the process non-dumpable. Idempotent; throws (and the CLI
    /// refuses to run) if the kernel refuses either.
    public static func apply() throws {
        guard hsmb_disable_core_files() == 0 else { throw ProcessHardeningError(.coreLimit, errno: errno) }
        #if os(Linux)
        guard hsmb_set_dumpable(0) == 0 else { throw ProcessHardeningError(.dumpable, errno: errno) }
        #endif
    }

    /// Reads the settings back (getrlimit, PR_GET_DUMPABLE).
    public static func status() throws -> Status {
        var soft: UInt64 = 0, hard: UInt64 = 0
        guard hsmb_core_file_limit(&soft, &hard) == 0 else { throw ProcessHardeningError(.coreLimit, errno: errno) }
        #if os(Linux)
        let d = hsmb_get_dumpable()
        guard d >= 0 else { throw ProcessHardeningError(.dumpable, errno: errno) }
        return Status(coreLimitSoft: soft, coreLimitHard: hard, dumpable: d)
        #else
        return Status(coreLimitSoft: soft, coreLimitHard: hard, dumpable: nil)
        #endif
    }
}

/// A hardening call the kernel refused: which one, and the errno.
public struct ProcessHardeningError: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable {
        /// setrlimit/getrlimit(RLIMIT_CORE).
        case coreLimit
        /// prctl(PR_SET_DUMPABLE/PR_GET_DUMPABLE).
        case dumpable
    }
    public let code: Code
    public let errno: Int32

    public init(_ code: Code, errno: Int32) {
        self.code = code
        self.errno = errno
    }

    public var description: String {
        let call = code == .coreLimit ? "RLIMIT_CORE" : "PR_SET_DUMPABLE"
        return "\(call): \(String(cString: strerror(errno))) (errno \(errno)) [\(code.rawValue)]"
    }
}
