import Foundation
import Durability

/// Where an envelope's bytes come from (pull). `read` returns up to `maxCount` bytes and an
/// empty array only at the end of the input.
public protocol ByteSource: AnyObject {
    func read(maxCount: Int) throws -> [UInt8]
}

/// Where an envelope's bytes go (push).
public protocol ByteSink: AnyObject {
    func write(_ bytes: [UInt8]) throws
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
}

/// An in-memory sink.
public final class MemorySink: ByteSink {
    public private(set) var bytes: [UInt8] = []
    public init() {}
    public func write(_ b: [UInt8]) throws { bytes.append(contentsOf: b) }
}

/// A source over a FileHandle (a file, or stdin).
public final class FileHandleSource: ByteSource {
    private let handle: FileHandle
    private let name: String
    public init(_ handle: FileHandle, name: String) { self.handle = handle; self.name = name }

    public convenience init(path: String) throws {
        guard let h = FileHandle(forReadingAtPath: path) else {
            throw EnvelopeError(.io, "cannot open \(path) for reading")
        }
        self.init(h, name: path)
    }

    public func read(maxCount: Int) throws -> [UInt8] {
        do {
            guard let d = try handle.read(upToCount: maxCount) else { return [] }
            return [UInt8](d)
        } catch {
            throw EnvelopeError(.io, "reading \(name): \(error)")
        }
    }
}

/// A sink over a FileHandle (stdout). Bytes written cannot be taken back: for files use
/// `AtomicFileSink`, which publishes only on `commit()`.
public final class FileHandleSink: ByteSink {
    private let handle: FileHandle
    public init(_ handle: FileHandle) { self.handle = handle }
    public func write(_ b: [UInt8]) throws {
        do { try handle.write(contentsOf: Data(b)) } catch { throw EnvelopeError(.io, "writing: \(error)") }
    }
}

/// A sink that writes a temp file beside `path` and renames it into place on `commit()`;
/// dropped or aborted, it leaves nothing behind.
public final class AtomicFileSink: ByteSink {
    private let writer: AtomicFile.Writer
    public init(path: String, mode: mode_t = 0o600) throws {
        do { writer = try AtomicFile.Writer(path: path, mode: mode) } catch { throw EnvelopeError(.io, "\(error)") }
    }
    public func write(_ b: [UInt8]) throws {
        do { try writer.append(b) } catch { throw EnvelopeError(.io, "\(error)") }
    }
    public func commit() throws {
        do { try writer.commit() } catch { throw EnvelopeError(.io, "\(error)") }
    }
    public func abort() { writer.abort() }
}

/// A pulling reader over a source that knows its absolute offset and can read exact counts.
/// Reads never go past what the caller asks for, so a header reader reads only the header.
final class CountingReader {
    private let source: ByteSource
    private var pending: [UInt8] = []
    private var pendingStart = 0
    private(set) var offset = 0
    /// Every byte handed out also goes here (signature verification, body copy for rewrap).
    var observers: [([UInt8]) -> Void] = []

    init(_ source: ByteSource) { self.source = source }

    /// Up to `count` bytes; fewer only at the end of the input.
    func read(_ count: Int) throws -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(min(count, 1 << 20))
        while out.count < count {
            if pendingStart < pending.count {
                let n = min(count - out.count, pending.count - pendingStart)
                out.append(contentsOf: pending[pendingStart..<(pendingStart + n)])
                pendingStart += n
                continue
            }
            let chunk = try source.read(maxCount: count - out.count)
            if chunk.isEmpty { break }
            pending = chunk
            pendingStart = 0
        }
        offset += out.count
        for o in observers { o(out) }
        return out
    }

    /// True if no byte is left (may pull one byte from the source and keep it).
    func atEnd() throws -> Bool {
        if pendingStart < pending.count { return false }
        let chunk = try source.read(maxCount: 1)
        if chunk.isEmpty { return true }
        pending = chunk
        pendingStart = 0
        return false
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
