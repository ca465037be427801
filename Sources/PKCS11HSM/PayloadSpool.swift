import BackupCrypto
import ByteCoding
import Foundation
import HSMArchive
import PayloadCodec
#if canImport(Glibc)
import Glibc
#endif

// Streaming the PKCS#11 payload (spec/FORMAT.md §9.5, "Memory"). The payload tar starts with a
// manifest that lists every object's SHA-256 and size, and the inner header declares the payload
// size before the first chunk; so the key entries are made first, hashed, and spooled, then the
// manifest is written and the spool streamed after it. The spool is a temporary file, unlinked as
// soon as it is made, holding the entries sealed with AES-256-GCM under a key drawn for this
// backup that lives only in this process's memory: no secret or wrapped key reaches the disk in
// clear, and a spool changed on disk fails the backup (the tag) before the blob is finished.

/// One tar entry's bytes (header blocks and data padded to 512), exactly as PaxTar writes it in a
/// whole tar (a tar is its entries' bytes followed by two zero blocks).
enum TarEntryBytes {
    static let endOfArchive = 1024

    static func entry(path: String, contents: [UInt8]) throws -> [UInt8] {
        do {
            var t = try PaxTar.write([TarEntry(path: path, contents: contents)], limits: PayloadBundle.tarLimits)
            t.removeLast(endOfArchive)
            return t
        } catch let e as PayloadCodecError {
            throw PKCS11Error(.malformedObject, "\(path): \(e.reason)")
        }
    }
}

/// An unlinked temporary file of AES-GCM-sealed bytes: append, then read back once.
final class EncryptedSpool {
    static let pieceBytes = 64 << 10
    private var fd: Int32
    private let key: EphemeralBackupKey
    private let nonce: GCMNonce
    private var sealer: AESGCMSealer?
    private var pending: [UInt8] = []
    private var tag: [UInt8] = []
    private(set) var plaintextBytes = 0

    init() throws {
        var dir = NSTemporaryDirectory()
        if let t = getenv("TMPDIR"), t.pointee != 0 { dir = String(cString: t) }
        if !dir.hasSuffix("/") { dir += "/" }
        var template = Array((dir + "hsmbackup-p11spool-XXXXXX").utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else {
            throw PKCS11Error(.spoolFailed, "cannot make the backup's encrypted spool in \(dir): \(String(cString: strerror(errno)))")
        }
        _ = template.withUnsafeBufferPointer { unlink($0.baseAddress!) }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        self.fd = fd
        key = try EphemeralBackupKey(secret: SecureRandom.secureBytes(count: 32))
        nonce = try GCMNonce(SecureRandom.bytes(count: GCMNonce.byteCount))
        sealer = try AESGCMSealer(key: key, nonce: nonce)
    }

    deinit { if fd >= 0 { close(fd) } }

    func append(_ bytes: [UInt8]) throws {
        guard let sealer else { throw PKCS11Error(.spoolFailed, "spool written after it was closed") }
        pending += try sealer.update(bytes)
        plaintextBytes += bytes.count
        if pending.count >= Self.pieceBytes { try flush() }
    }

    private func flush() throws {
        var at = 0
        while at < pending.count {
            let n = pending.withUnsafeBytes { write(fd, $0.baseAddress! + at, $0.count - at) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw PKCS11Error(.spoolFailed, "writing the backup's encrypted spool: \(String(cString: strerror(errno)))") }
            at += n
        }
        pending.removeAll(keepingCapacity: true)
    }

    /// Hands the plaintext back in pieces of at most `pieceBytes`; the tag is checked after the last.
    func readBack(_ body: ([UInt8]) throws -> Void) throws {
        guard let sealer else { throw PKCS11Error(.spoolFailed, "spool read twice") }
        tag = try sealer.finish() // GCM emits no more ciphertext at finish; the tag stays in memory
        try flush()
        self.sealer = nil
        guard lseek(fd, 0, SEEK_SET) == 0 else { throw PKCS11Error(.spoolFailed, "rewinding the backup's spool: \(String(cString: strerror(errno)))") }
        let opener = try AESGCMOpener(key: key, nonce: nonce)
        var buffer = [UInt8](repeating: 0, count: Self.pieceBytes)
        var total = 0
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw PKCS11Error(.spoolFailed, "reading the backup's spool: \(String(cString: strerror(errno)))") }
            if n == 0 { break }
            total += n
            var plain = try buffer.withUnsafeBytes { try opener.updateUnverified(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            defer { wipe(&plain) }
            try body(plain)
        }
        guard total == plaintextBytes else { throw PKCS11Error(.spoolFailed, "the backup's spool holds \(total) bytes, \(plaintextBytes) were written") }
        do { try opener.finish(tag: tag) } catch {
            throw PKCS11Error(.spoolFailed, "the backup's encrypted spool was changed on disk (its AES-GCM tag does not match)")
        }
    }
}

/// The restore's counterpart (§9.6 step 3): each payload object, once decoded and checked, is kept
/// as its canonical JSON sealed (AES-256-GCM, one nonce per object) in an unlinked temporary file;
/// memory holds its offset, length and two flags. Phase 1 and phase 2 read objects back one at a
/// time; a record changed on disk fails its tag.
final class SpooledObjects {
    private var fd: Int32
    private let key: EphemeralBackupKey
    private let sealer: AESGCMFrameSealer
    private let opener: AESGCMFrameOpener
    private var offsets: [Int] = []
    private var lengths: [Int32] = []
    /// Bit 0: CKA_MODIFIABLE false; bit 1: CKA_DESTROYABLE false.
    private(set) var flags: [UInt8] = []
    private var end = 0

    init() throws {
        var dir = NSTemporaryDirectory()
        if let t = getenv("TMPDIR"), t.pointee != 0 { dir = String(cString: t) }
        if !dir.hasSuffix("/") { dir += "/" }
        var template = Array((dir + "hsmbackup-p11restore-XXXXXX").utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else {
            throw PKCS11Error(.spoolFailed, "cannot make the restore's encrypted spool in \(dir): \(String(cString: strerror(errno)))")
        }
        _ = template.withUnsafeBufferPointer { unlink($0.baseAddress!) }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        self.fd = fd
        key = try EphemeralBackupKey(secret: SecureRandom.secureBytes(count: 32))
        sealer = try AESGCMFrameSealer(key: key)
        opener = try AESGCMFrameOpener(key: key)
    }

    deinit { if fd >= 0 { close(fd) } }

    var count: Int { offsets.count }

    private func nonce(_ i: Int) throws -> GCMNonce {
        var n = [UInt8](repeating: 0, count: GCMNonce.byteCount)
        for b in 0..<8 { n[4 + b] = UInt8(truncatingIfNeeded: UInt64(i) >> (8 * b)) }
        return try GCMNonce(n)
    }

    func append(_ o: TokenObject, json: [UInt8]) throws {
        let i = offsets.count
        var out = [UInt8](repeating: 0, count: json.count + AESGCM.tagByteCount)
        try json.withUnsafeBytes { p in
            try out.withUnsafeMutableBytes { c in
                try sealer.seal(p, nonce: try nonce(i), aad: UnsafeRawBufferPointer(start: nil, count: 0),
                                ciphertext: UnsafeMutableRawBufferPointer(rebasing: c[0..<json.count]),
                                tag: UnsafeMutableRawBufferPointer(rebasing: c[json.count...]))
            }
        }
        var at = 0
        while at < out.count {
            let n = out.withUnsafeBytes { pwrite(fd, $0.baseAddress! + at, $0.count - at, off_t(end + at)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw PKCS11Error(.spoolFailed, "writing the restore's encrypted spool: \(String(cString: strerror(errno)))") }
            at += n
        }
        offsets.append(end)
        lengths.append(Int32(json.count))
        end += out.count
        var f: UInt8 = 0
        if o.attributes.contains(where: { $0.type == 0x170 && $0.value == "00" }) { f |= 1 }
        if o.attributes.contains(where: { $0.type == 0x172 && $0.value == "00" }) { f |= 2 }
        flags.append(f)
    }

    func object(_ i: Int) throws -> TokenObject {
        let n = Int(lengths[i])
        var buf = [UInt8](repeating: 0, count: n + AESGCM.tagByteCount)
        var at = 0
        while at < buf.count {
            let r = buf.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + at, $0.count - at, off_t(offsets[i] + at)) }
            if r < 0 && errno == EINTR { continue }
            guard r > 0 else { throw PKCS11Error(.spoolFailed, "reading the restore's spool: \(r < 0 ? String(cString: strerror(errno)) : "short file")") }
            at += r
        }
        var plain = [UInt8](repeating: 0, count: n)
        defer { wipe(&plain); wipe(&buf) }
        do {
            try buf.withUnsafeBytes { c in
                try plain.withUnsafeMutableBytes { p in
                    try opener.open(UnsafeRawBufferPointer(rebasing: c[0..<n]), tag: UnsafeRawBufferPointer(rebasing: c[n...]), nonce: try nonce(i),
                                    aad: UnsafeRawBufferPointer(start: nil, count: 0), plaintext: p)
                }
            }
        } catch {
            throw PKCS11Error(.spoolFailed, "the restore's encrypted spool was changed on disk (object \(i + 1) fails its AES-GCM tag)")
        }
        return try JSONDecoder().decode(TokenObject.self, from: Data(plain))
    }
}
