import ArgumentParser
import BackupCrypto
import ByteCoding
import Durability
import Envelope
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Where a raw AES key's bytes come from (spec §7: a key never appears on the command line,
/// where every local user can read it in /proc/PID/cmdline). The value of `--raw-aes-key` and
/// `--to-raw-aes-key` names a source; the source holds the key as hex (surrounding whitespace
/// ignored), which is what `kms export` prints:
///   file:PATH   a regular file (keep it 0600)
///   fd:N        an open file descriptor, read to its end (`fd:3 3<key.hex`, or a pipe)
///   env:VAR     an environment variable (removed from the environment once read)
enum RawKeySource {
    static let syntax = "file:PATH, fd:N or env:VAR"
    /// A hex key of 32 bytes is 64 characters; allow a trailing newline and some spaces.
    static let maximumBytes = 1024

    /// Refuses, before anything runs, a value that is not a source (a key typed on the command line).
    static func checkSyntax(_ spec: String) throws {
        guard spec.hasPrefix("file:") || spec.hasPrefix("fd:") || spec.hasPrefix("env:") else {
            throw ValidationError("--raw-aes-key and --to-raw-aes-key take where to read the key from (\(syntax)), never the key itself: "
                + "a command line is visible to every local user (/proc/PID/cmdline)")
        }
    }

    static func read(_ spec: String, option: String) throws -> WrappingKey {
        var text = try bytes(spec, option: option)
        defer { wipe(&text) }
        // Trim ASCII whitespace at both ends without copying the secret into a String.
        var lo = 0, hi = text.count
        func isSpace(_ c: UInt8) -> Bool { c == 0x20 || c == 0x09 || c == 0x0A || c == 0x0D }
        while lo < hi, isSpace(text[lo]) { lo += 1 }
        while hi > lo, isSpace(text[hi - 1]) { hi -= 1 }
        guard var key = text[lo..<hi].withUnsafeBytes({ Hex.decode(utf8: $0) }) else {
            throw ValidationError("\(option) \(spec): the key must be hex (16, 24 or 32 bytes, as `hsmbackup kms export` prints it)")
        }
        defer { wipe(&key) }
        guard let k = try? WrappingKey(bytes: key) else {
            throw ValidationError("\(option) \(spec): the key must be 16, 24 or 32 bytes, not \(key.count)")
        }
        return k
    }

    private static func bytes(_ spec: String, option: String) throws -> [UInt8] {
        if spec.hasPrefix("file:") {
            let path = String(spec.dropFirst(5))
            // Our own read (not AtomicFile.read, whose buffers are not wiped): a regular file only.
            let fd: Int32
            do { fd = try AtomicFile.openRegularFile(path) } catch let e as FileError {
                throw e.code == .notFound ? e : FileError(code: e.code, operation: "read key", path: path, reason: e.reason)
            }
            defer { close(fd) }
            return try readAll(fd, what: path, option: option, spec: spec)
        }
        if spec.hasPrefix("env:") {
            let name = String(spec.dropFirst(4))
            guard !name.isEmpty, let value = getenv(name) else {
                throw ValidationError("\(option) \(spec): the environment variable \(name.isEmpty ? "(empty name)" : name) is not set")
            }
            let n = strlen(value)
            var out = [UInt8](UnsafeRawBufferPointer(start: value, count: n))
            // Overwrite and drop the variable: nothing this process starts inherits it.
            memset(value, 0, n)
            unsetenv(name)
            if out.count > maximumBytes { wipe(&out); throw ValidationError("\(option) \(spec): longer than \(maximumBytes) bytes") }
            return out
        }
        if spec.hasPrefix("fd:") {
            guard let fd = Int32(spec.dropFirst(3)), fd >= 0 else { throw ValidationError("\(option) \(spec): fd:N takes a descriptor number") }
            var st = stat()
            guard fstat(fd, &st) == 0 else {
                throw ValidationError("\(option) \(spec): descriptor \(fd) is not open (\(String(cString: strerror(errno))))")
            }
            let kind = st.st_mode & S_IFMT
            guard kind == S_IFREG || kind == S_IFIFO || kind == S_IFSOCK else {
                throw ValidationError("\(option) \(spec): descriptor \(fd) is a \(FileError.kindName(st.st_mode)); give a file or a pipe")
            }
            defer { close(fd) }
            return try readAll(fd, what: "fd \(fd)", option: option, spec: spec)
        }
        throw ValidationError("--raw-aes-key and --to-raw-aes-key take where to read the key from (\(syntax)), never the key itself: "
            + "a command line is visible to every local user (/proc/PID/cmdline)")
    }

    /// Reads a key file or descriptor to its end into one buffer sized once (so no reallocation
    /// leaves a copy behind), wiped on every path but the successful return.
    private static func readAll(_ fd: Int32, what: String, option: String, spec: String) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: maximumBytes + 1)
        var count = 0
        do {
            while count <= maximumBytes {
                let n = out.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + count, $0.count - count) }
                if n < 0 {
                    if errno == EINTR { continue }
                    throw FileError(errno: errno, operation: "read key", path: what)
                }
                if n == 0 { break }
                count += n
            }
            if count > maximumBytes { throw ValidationError("\(option) \(spec): longer than \(maximumBytes) bytes") }
        } catch {
            wipe(&out)
            throw error
        }
        // Shrinking in place keeps the storage (removeLast does not reallocate).
        out.removeLast(out.count - count)
        return out
    }
}
