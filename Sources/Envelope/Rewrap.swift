import BackupCrypto
import ByteCoding
import Durability
import Foundation

/// Rewrap (spec/FORMAT.md §3.7): the same plaintext under other KMS keys, as a **new message**.
///
/// The old message is opened with `keyrings` and decrypted frame by frame; each verified frame's
/// plaintext is encrypted at once into a new message with a fresh data key, a fresh random message
/// ID (so a fresh content key and commitment key), the same suite, caller context and frame
/// length, and one EDK per `newKeyrings`. Nothing of the old message's keys or tags is reused: a
/// second header tag under the old (content key, all-zero IV) would give away GCM's hash key to
/// anyone holding both versions (issue 12). For the signed suite a fresh P-384 key signs the new
/// message and the old signature is verified before the last plaintext is released. Memory is
/// bounded by the frame length; the plaintext stays in wiped buffers.
public enum Rewrap {
    @discardableResult
    public static func rewrap(source: ByteSource, sink: ByteSink, keyrings: [Keyring], newKeyrings: [Keyring],
                              options: DecryptOptions = DecryptOptions()) throws -> MessageHeader {
        guard !newKeyrings.isEmpty else { throw EnvelopeError(.invalidArgument, "rewrap needs at least one new keyring") }
        let d = try EnvelopeDecryptor(source: source, keyrings: keyrings, options: options)
        let old = d.header
        guard old.version == 2 else {
            throw EnvelopeError(.invalidArgument, "only format v2 messages are rewrapped; decrypt and re-encrypt v1 messages")
        }
        // A fresh data key: whoever could open the old message (an old KMS key, an exported
        // version) cannot open the new one, which is what retiring a key by rewrap needs.
        let materials = try EncryptionMaterials.generate(keyrings: newKeyrings,
                                                         context: old.context.removing(EncryptionContext.publicKeyKey),
                                                         suite: old.suite)
        // A non-framed (decode-only) body becomes a framed one.
        let frameLength = old.contentType == .framed ? old.frameLength : EnvelopeEncryptor.defaultFrameLength
        let e = try EnvelopeEncryptor(sink: sink, materials: materials, frameLength: frameLength)
        while try d.withNextChunk({ try e.write($0) }) != nil {}
        try e.finish()
        return e.header
    }

    /// Rewraps the file at `path` in place: the new message goes to a temp file beside it and
    /// replaces the old one atomically only after every frame (and the old signature) verified.
    /// A symbolic link, or a file with other hard links, is refused (`invalidArgument`): the
    /// rename replaces one name, and the file the link names, or the other names, would go on
    /// holding the message under the keys being retired.
    @discardableResult
    public static func rewrapFile(at path: String, keyrings: [Keyring], newKeyrings: [Keyring],
                                  options: DecryptOptions = DecryptOptions()) throws -> MessageHeader {
        // O_NOFOLLOW, and the type and link count of the open file itself: a path checked first
        // and opened after could be swapped for a link in between.
        let fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else {
            let e = errno
            var lst = stat()
            if e == ELOOP, lstat(path, &lst) == 0, lst.st_mode & S_IFMT == S_IFLNK {
                let target = (try? FileManager.default.destinationOfSymbolicLink(atPath: path)) ?? "?"
                throw EnvelopeError(.invalidArgument, "\(path) is a symbolic link (to \(target)): rewrap the file itself, so that no name "
                                    + "is left holding the message under the old keys")
            }
            let fe = FileError(errno: e, operation: "open", path: path)
            throw EnvelopeError(fe.code == .symlinkLoop ? .invalidArgument : .io, "cannot open \(path) for reading: \(fe.reason)")
        }
        let source = FileHandleSource(FileHandle(fileDescriptor: fd, closeOnDealloc: true), name: path)
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            throw EnvelopeError(.io, "cannot open \(path) for reading: \(String(cString: strerror(errno)))")
        }
        guard st.st_mode & S_IFMT == S_IFREG else {
            throw EnvelopeError(.invalidArgument, "cannot open \(path) for reading: \(FileError.notRegular(path, mode: st.st_mode, operation: "open").reason)")
        }
        // Regular files ignore O_NONBLOCK; cleared so the descriptor behaves as a plain one.
        let flags = fcntl(fd, F_GETFL)
        if flags >= 0 { _ = fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) }
        if st.st_nlink > 1 {
            throw EnvelopeError(.invalidArgument, "\(path) has \(st.st_nlink) hard links: a rewrap replaces one name, and the others "
                                + "would still hold the message under the old keys (remove the other links, or rewrap a copy)")
        }
        let mode = st.st_mode & 0o7777
        var options = options
        if options.readAheadBytes == 0 { options.readAheadBytes = EnvelopeFile.readChunkBytes }
        let sink = try AtomicFileSink(path: path, mode: mode_t(mode))
        do {
            let h = try rewrap(source: source, sink: sink, keyrings: keyrings, newKeyrings: newKeyrings, options: options)
            try sink.commit()
            return h
        } catch {
            sink.abort()
            throw error
        }
    }
}
