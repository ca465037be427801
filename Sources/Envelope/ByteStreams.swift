import BackupCrypto
import Durability
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Where an envelope's bytes come from (pull). `read` returns up to `maxCount` bytes and an
/// empty array only at the end of the input; `read(into:)` fills up to `buffer.count` bytes of a
/// caller's buffer and returns 0 only at the end (the default goes through `read(maxCount:)`).
public protocol ByteSource: AnyObject {
    func read(maxCount: Int) throws -> [UInt8]
    func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int
}

extension ByteSource {
    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let b = try read(maxCount: buffer.count)
        precondition(b.count <= buffer.count, "ByteSource.read(maxCount:) returned more than asked")
        b.withUnsafeBytes { if $0.count > 0 { buffer.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
        return b.count
    }
}

/// Where an envelope's bytes go (push). `write(_: UnsafeRawBufferPointer)` lets a producer hand
/// over bytes from its own reusable buffer (the default copies them into an array).
public protocol ByteSink: AnyObject {
    func write(_ bytes: [UInt8]) throws
    func write(_ bytes: UnsafeRawBufferPointer) throws
}

extension ByteSink {
    public func write(_ bytes: UnsafeRawBufferPointer) throws { try write(Array(bytes)) }
}

/// An in-memory source (tests, small messages).
public final class MemorySource: ByteSource {
    private let bytes: [UInt8]
    private var position = 0
    /// How many bytes have been handed out (tests check that inspection reads only the header).
    public var bytesRead: Int { position }

    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public func read(maxCount: Int) throws -> [UInt8] {
        let n = min(maxCount, bytes.count - position)
        defer { position += n }
        return Array(bytes[position..<(position + n)])
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = min(buffer.count, bytes.count - position)
        if n > 0 {
            bytes.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress! + position, byteCount: n) }
        }
        position += n
        return n
    }
}

/// An in-memory sink.
public final class MemorySink: ByteSink {
    public private(set) var bytes: [UInt8] = []
    public init() {}
    public func write(_ b: [UInt8]) throws { bytes.append(contentsOf: b) }
    public func write(_ b: UnsafeRawBufferPointer) throws { bytes.append(contentsOf: b) }
}

/// A source over a FileHandle (a file, or stdin). Reads go straight to read(2) on its file
/// descriptor, into the caller's buffer when it brings one.
public final class FileHandleSource: ByteSource {
    private let handle: FileHandle
    private let name: String
    public init(_ handle: FileHandle, name: String) { self.handle = handle; self.name = name }

    /// Opens a regular file; a FIFO, device, socket or directory is refused (it could block or
    /// never end), as `invalidArgument`.
    public convenience init(path: String) throws {
        let fd: Int32
        do { fd = try AtomicFile.openRegularFile(path) } catch let e as FileError {
            throw EnvelopeError(e.code == .notRegularFile || e.code == .symlinkLoop ? .invalidArgument : .io,
                                "cannot open \(path) for reading: \(e.reason)")
        }
        self.init(FileHandle(fileDescriptor: fd, closeOnDealloc: true), name: path)
    }

    public func read(maxCount: Int) throws -> [UInt8] {
        guard maxCount > 0 else { return [] }
        // Not zero-filled first: the array holds only the bytes read.
        return try [UInt8](unsafeUninitializedCapacity: maxCount) { buffer, initialized in
            initialized = 0
            initialized = try read(into: UnsafeMutableRawBufferPointer(buffer))
        }
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        guard buffer.count > 0 else { return 0 }
        while true {
            let n = Glibc.read(handle.fileDescriptor, buffer.baseAddress!, buffer.count)
            if n >= 0 { return n }
            if errno == EINTR { continue }
            throw EnvelopeError(.io, "reading \(name): \(String(cString: strerror(errno)))")
        }
    }
}

/// A sink over a FileHandle (stdout). Bytes written cannot be taken back: for files use
/// `AtomicFileSink`, which publishes only on `commit()`.
public final class FileHandleSink: ByteSink {
    private let handle: FileHandle
    public init(_ handle: FileHandle) { self.handle = handle }
    public func write(_ b: [UInt8]) throws {
        try b.withUnsafeBytes { try write($0) }
    }
    public func write(_ b: UnsafeRawBufferPointer) throws {
        var off = 0
        while off < b.count {
            let n = Glibc.write(handle.fileDescriptor, b.baseAddress! + off, b.count - off)
            if n < 0 {
                if errno == EINTR { continue }
                throw EnvelopeError(.io, "writing: \(String(cString: strerror(errno)))")
            }
            off += n
        }
    }
}

/// A sink that writes a temp file beside `path` and renames it into place on `commit()`;
/// dropped or aborted, it leaves nothing behind. Writes are gathered in a `bufferBytes` buffer
/// (decrypted plaintext, so it is a `SecretBuffer`: wiped when the sink goes) and reach the file
/// in large write(2) calls; `commit()` writes what is left, then fsync, rename, fsync directory.
public final class AtomicFileSink: ByteSink {
    public static let bufferBytes = 1 << 20
    private let writer: AtomicFile.Writer
    private let buffer = SecretBuffer(capacity: AtomicFileSink.bufferBytes)
    private var used = 0
    /// Every this many bytes the kernel is asked to start writing the file back, so that the
    /// disk works while the message is produced and commit's fsync has little left to wait for.
    public static let writebackBytes = 8 << 20
    private var writebackAt = 0

    public init(path: String, mode: mode_t = 0o600) throws {
        do { writer = try AtomicFile.Writer(path: path, mode: mode) } catch let e as FileError {
            // A path that cannot be an output (a device, a link to stdout or to nothing) is the
            // caller's mistake, as for inputs; anything else is I/O.
            throw EnvelopeError(e.code == .notRegularFile || e.code == .symlinkLoop ? .invalidArgument : .io, "\(e)")
        }
    }

    public func write(_ b: [UInt8]) throws {
        try b.withUnsafeBytes { try write($0) }
    }

    public func write(_ b: UnsafeRawBufferPointer) throws {
        guard b.count > 0 else { return }
        if used + b.count > buffer.capacity { try flush() }
        if b.count >= buffer.capacity {
            try append(b)
            return
        }
        buffer.withUnsafeMutableBytes { $0.baseAddress!.advanced(by: used).copyMemory(from: b.baseAddress!, byteCount: b.count) }
        used += b.count
    }

    public func commit() throws {
        try flush()
        do { try writer.commit() } catch { throw EnvelopeError(.io, "\(error)") }
        buffer.wipe()
    }

    public func abort() {
        used = 0
        buffer.wipe()
        writer.abort()
    }

    private func flush() throws {
        guard used > 0 else { return }
        let n = used
        used = 0
        try buffer.withUnsafeMutableBytes { try append(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
    }

    private func append(_ b: UnsafeRawBufferPointer) throws {
        do { try writer.append(b) } catch { throw EnvelopeError(.io, "\(error)") }
        if writer.bytesWritten - writebackAt >= Self.writebackBytes {
            writer.startWriteback()
            writebackAt = writer.bytesWritten
        }
    }
}

/// A pulling reader over a source that knows its absolute offset and can read exact counts.
/// With `readAhead` 0 it never asks the source for more than the caller asks for, so a header
/// reader reads only the header (inspection); with `readAhead` > 0 it asks in blocks of at least
/// that size (file decryption). Bytes are lent from one reusable buffer (`withBytes`) or copied
/// out (`read`); the buffer grows only as bytes actually arrive, so a declared length cannot make
/// it allocate more than about twice what the input holds.
final class CountingReader {
    private let source: ByteSource
    private let buffer = SecretBuffer() // message bytes (ciphertext); wiped anyway, it costs nothing
    private var start = 0
    private var end = 0
    private(set) var offset = 0
    var readAhead = 0
    /// Every byte handed out also goes here (signature verification).
    var observers: [(UnsafeRawBufferPointer) -> Void] = []

    init(_ source: ByteSource, readAhead: Int = 0) {
        self.source = source
        self.readAhead = readAhead
    }

    /// Buffers up to `count` bytes (fewer only at the end of the input); returns how many.
    private func fill(_ count: Int) throws -> Int {
        while end - start < count {
            let have = end - start
            let want = max(count - have, readAhead)
            if buffer.capacity - end < want {
                if start > 0 {
                    if have > 0 { buffer.withUnsafeMutableBytes { $0.baseAddress!.copyMemory(from: $0.baseAddress! + start, byteCount: have) } }
                    start = 0
                    end = have
                }
                if buffer.capacity - end < want {
                    buffer.reserve(max(buffer.capacity, min(have + want, max(buffer.capacity * 2, 1 << 16))), preserving: end)
                }
            }
            let room = min(want, buffer.capacity - end)
            let n = try buffer.withUnsafeMutableBytes { b in
                try source.read(into: UnsafeMutableRawBufferPointer(rebasing: b[end..<(end + room)]))
            }
            if n == 0 { break }
            end += n
        }
        return min(end - start, count)
    }

    /// Consumes up to `count` bytes (fewer only at the end of the input) and lends them to `body`;
    /// the pointer is valid only inside `body`.
    func withBytes<R>(_ count: Int, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        let n = try fill(count)
        let at = start
        start += n
        offset += n
        return try buffer.withUnsafeMutableBytes { b in
            let bytes = UnsafeRawBufferPointer(rebasing: b[at..<(at + n)])
            for o in observers { o(bytes) }
            return try body(bytes)
        }
    }

    /// Up to `count` bytes; fewer only at the end of the input.
    func read(_ count: Int) throws -> [UInt8] {
        try withBytes(count) { Array($0) }
    }

    /// True if no byte is left (may pull bytes from the source and keep them).
    func atEnd() throws -> Bool {
        try fill(1) == 0
    }
}

/// The verified plaintext of a message as a pull source (for a reader of the inner blob that
/// wants a `ByteSource`). Holds at most one frame; an error of the decryptor is rethrown.
public final class DecryptedSource: ByteSource {
    public let decryptor: EnvelopeDecryptor
    private var pending: [UInt8] = []
    private var start = 0
    private var ended = false

    public init(_ decryptor: EnvelopeDecryptor) { self.decryptor = decryptor }

    public func read(maxCount: Int) throws -> [UInt8] {
        while start == pending.count {
            if ended { return [] }
            guard let next = try decryptor.nextChunk() else { ended = true; return [] }
            pending = next
            start = 0
        }
        let n = min(maxCount, pending.count - start)
        defer { start += n }
        return Array(pending[start..<(start + n)])
    }
}
