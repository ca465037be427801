import BackupCrypto
import ByteCoding
import Durability
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The per-token restore lock (spec/FORMAT.md §9.6): an exclusive `flock(2)` on
/// `<lock dir>/pkcs11-<hex>.lock`, where `<hex>` is the first 16 bytes of
/// SHA-256(realpath(module) || 0x00 || token serial || 0x00 || token label). A restore (not a dry
/// run) holds it from before it reads the archive to its end, so two restores onto one token never
/// run phase 2 at the same time (phase 2 removes every object under the temporary label, which
/// would include a running restore's). A second restore does not wait: it fails at once with
/// `tokenBusy` (exit 75) and changes nothing. The kernel drops the lock when its process dies.
///
/// The lock directory is `HSMBACKUP_PKCS11_LOCK_DIR` when set, else `<home>/locks` (home:
/// `HSMBACKUP_HOME`, else `~/.hsmbackup`); processes restoring onto one token must share it.
final class TokenLock {
    let path: String
    private let lock: HolderLock

    private init(_ lock: HolderLock) { self.lock = lock; path = lock.path }

    static func directory() -> String {
        if let d = getenv("HSMBACKUP_PKCS11_LOCK_DIR"), d.pointee != 0 { return String(cString: d) }
        if let h = getenv("HSMBACKUP_HOME"), h.pointee != 0 { return String(cString: h) + "/locks" }
        return NSHomeDirectory() + "/.hsmbackup/locks"
    }

    static func path(modulePath: String, token: TokenInfo) -> String {
        var resolved = modulePath
        if let r = realpath(modulePath, nil) { resolved = String(cString: r); free(r) }
        let key = Array(resolved.utf8) + [0] + Array(token.serialNumber.utf8) + [0] + Array(token.label.utf8)
        return directory() + "/pkcs11-" + Hex.encode(Array(SHA256Hasher.hash(key).prefix(16))) + ".lock"
    }

    /// The restore journal beside the lock (§9.6): written before phase 2 makes its first token
    /// object, removed when the restore ends (done, or wholly rolled back). One found by the next
    /// restore means the last one onto this token was killed in phase 2, possibly after some
    /// objects got their final labels: the duplicate refusal says so and how to finish.
    var journalPath: String { String(path.dropLast(".lock".count)) + ".journal" }

    /// Records that phase 2 of the restore of `backupId` begins. Under the lock.
    func beginJournal(backupId: String, token: TokenInfo) throws {
        let stamp = ISO8601DateFormatter().string(from: Date())
        let text = "restore of backup \(backupId) onto token \"\(token.label)\" (serial \(token.serialNumber)), phase 2 begun \(stamp) by pid \(getpid())\n"
        do { try AtomicFile.write(Array(text.utf8), to: journalPath) } catch let e as FileError {
            throw PKCS11Error(.lockFailed, "cannot write the restore journal \(journalPath): \(e.operation): \(e.reason); nothing was changed")
        }
    }

    /// What an interrupted restore's journal says, or nil when there is none.
    func interruptedRestore() -> String? {
        guard let bytes = try? AtomicFile.read(journalPath, limit: 4096) else { return nil }
        let text = String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return text.isEmpty ? "an unnamed restore" : text
    }

    func endJournal() { unlink(journalPath) }

    /// Puts back an earlier journal's text (best effort: the restore that called it is failing).
    func restoreJournal(_ text: String) { try? AtomicFile.write(Array((text + "\n").utf8), to: journalPath) }

    /// Takes the lock or fails (`tokenBusy` when another process holds it).
    static func acquire(modulePath: String, token: TokenInfo) throws -> TokenLock {
        let path = path(modulePath: modulePath, token: token)
        let dir = (path as NSString).deletingLastPathComponent
        do {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw PKCS11Error(.lockFailed, "cannot make the lock directory \(dir): \(error.localizedDescription)")
        }
        do {
            return TokenLock(try HolderLock.acquire(path, wait: false))
        } catch {
            switch error.kind {
            case .open: throw PKCS11Error(.lockFailed, "cannot open the token's restore lock \(path): \(error.reason)")
            case .busy:
                let holder = error.holder.map { " (pid \($0))" } ?? ""
                throw PKCS11Error(.tokenBusy, "another restore\(holder) onto token \"\(token.label)\" (serial \(token.serialNumber)) holds \(path); this one changed nothing")
            case .flock: throw PKCS11Error(.lockFailed, "flock \(path): \(error.reason)")
            }
        }
    }

    func release() { lock.release() }
}
