import BackupCrypto
import Durability
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Where an unattended `schedule run` gets the user PIN of a PKCS#11 token (docs/SCHEDULES.md,
/// "PKCS#11 tokens"). Never the schedule file, never an argument. In this order:
///   1. the environment variable `HSMBACKUP_PKCS11_PIN` (read once per run, then overwritten and
///      removed from the environment, so nothing the run starts inherits it);
///   2. the systemd credential `hsmbackup-pkcs11-pin-<SCHEDULE>`, then `hsmbackup-pkcs11-pin`:
///      files in `$CREDENTIALS_DIRECTORY` (`LoadCredential=` in the service unit);
///   3. the file named by `HSMBACKUP_PKCS11_PIN_FILE` (for cron; keep it 0600).
/// A file holds the PIN and at most one trailing newline. The PIN is kept in `SecureBytes`
/// (wiped when released); every buffer it passed through is wiped.
public final class PKCS11PINSource {
    public static let environmentVariable = "HSMBACKUP_PKCS11_PIN"
    public static let fileVariable = "HSMBACKUP_PKCS11_PIN_FILE"
    public static let credentialName = "hsmbackup-pkcs11-pin"
    /// A PIN longer than this is refused (PKCS#11 PINs are short; this bounds the read).
    public static let maximumBytes = 256

    private var fromEnvironment: SecureBytes?
    private var consumedEnvironment = false

    public init() {}

    /// The user PIN for `schedule`'s token.
    public func pin(schedule: String, token: String) throws -> SecureBytes {
        if !consumedEnvironment {
            consumedEnvironment = true
            if let p = getenv(Self.environmentVariable) {
                let n = strlen(p)
                fromEnvironment = SecureBytes(count: n) { out in out.copyMemory(from: UnsafeRawBufferPointer(start: p, count: n)) }
                memset(p, 0, n)
                unsetenv(Self.environmentVariable)
            }
        }
        if let fromEnvironment { return fromEnvironment }
        if let dir = getenv("CREDENTIALS_DIRECTORY").map({ String(cString: $0) }), !dir.isEmpty {
            for name in ["\(Self.credentialName)-\(schedule)", Self.credentialName] {
                let path = dir + "/" + name
                if FileManager.default.fileExists(atPath: path) { return try Self.read(path) }
            }
        }
        if let file = getenv(Self.fileVariable).map({ String(cString: $0) }), !file.isEmpty {
            return try Self.read(file)
        }
        throw SchedulingError(.credentialMissing,
            "no user PIN for PKCS#11 token \"\(token)\": set \(Self.environmentVariable), give the systemd credential "
            + "\(Self.credentialName) (LoadCredential= in the service; or \(Self.credentialName)-\(schedule) for this schedule alone), "
            + "or name a PIN file in \(Self.fileVariable)")
    }

    /// Reads a PIN file (a regular file) into one buffer sized once, wiped after the copy.
    static func read(_ path: String) throws -> SecureBytes {
        let fd: Int32
        do { fd = try AtomicFile.openRegularFile(path) } catch let e as FileError {
            throw SchedulingError(.credentialMissing, path: path, "cannot read the PKCS#11 PIN file: \(e.reason)")
        }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: maximumBytes + 2)
        defer { wipe(&buffer) }
        var count = 0
        while count < buffer.count {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + count, $0.count - count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SchedulingError(.credentialMissing, path: path, "cannot read the PKCS#11 PIN file: \(String(cString: strerror(errno)))")
            }
            if n == 0 { break }
            count += n
        }
        if count > 0, buffer[count - 1] == 0x0A { count -= 1 }
        if count > 0, buffer[count - 1] == 0x0D { count -= 1 }
        guard count > 0, count <= maximumBytes else {
            throw SchedulingError(.credentialMissing, path: path, count == 0 ? "the PKCS#11 PIN file is empty"
                                  : "the PKCS#11 PIN file is longer than \(maximumBytes) bytes")
        }
        return SecureBytes(copying: buffer[0..<count])
    }
}
