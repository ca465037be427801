// The object store interface, `ObjectStorage` (spec/FORMAT.md section 5): put from a stream, get
// as a stream, stat, list by prefix, delete. `LocalObjectStore` is the embedded default; an
// S3-compatible backend can implement the same protocol later. (The protocol is not named
// `ObjectStore`: a type named like its module breaks module-qualified names for clients.)
import Durability
import Foundation

/// A source of bytes for `put`: `read(maxCount:)` returns up to `maxCount` bytes, an empty array
/// only at the end. Same signature as Envelope's `ByteSource`, so one type can serve both
/// (`extension MemorySource: ObjectSource {}`).
public protocol ObjectSource: AnyObject {
    func read(maxCount: Int) throws -> [UInt8]
}

/// A stream of verified object bytes: `read()` returns the next piece, nil at the end. A piece is
/// released only after its chunk digest has been checked.
public protocol ObjectReading: AnyObject {
    var info: ObjectInfo { get }
    func read() throws -> [UInt8]?
}

/// A put driven by the producer: `write` pieces, then `commit` (durable on the quorum) or
/// `abort` (nothing published). Dropping an uncommitted writer aborts it.
/// `write` has the signature of Envelope's `ByteSink`, so `extension LocalObjectWriter: ByteSink {}`
/// lets an archive writer stream straight into the store.
public protocol ObjectWriting: AnyObject {
    func write(_ bytes: [UInt8]) throws
    func commit() throws -> PutReport
    func abort()
}

/// What the store knows about one object, from its checksum record.
public struct ObjectInfo: Codable, Equatable, Sendable {
    public let key: String
    public let size: UInt64
    /// SHA-256 of the object's bytes, lowercase hex.
    public let sha256: String
    /// When the object was put (milliseconds since the Unix epoch).
    public let createdMillis: UInt64
    /// Replicas that hold a copy with a valid record (stat reads records only, not all bytes).
    public let replicas: [Int]

    public init(key: String, size: UInt64, sha256: String, createdMillis: UInt64, replicas: [Int]) {
        self.key = key
        self.size = size
        self.sha256 = sha256
        self.createdMillis = createdMillis
        self.replicas = replicas
    }
}

/// The result of a put: which replicas are durable, and which could not be written (they are
/// repaired later by read-repair or `scrub --repair`).
public struct PutReport: Codable, Sendable {
    public let info: ObjectInfo
    public let written: [Int]
    public let failed: [ReplicaFinding]

    public init(info: ObjectInfo, written: [Int], failed: [ReplicaFinding]) {
        self.info = info
        self.written = written
        self.failed = failed
    }
}

/// The result of a delete: replicas whose file was removed, and those where removal failed.
public struct DeleteReport: Codable, Sendable {
    public let key: String
    public let removed: [Int]
    public let failed: [ReplicaFinding]

    public init(key: String, removed: [Int], failed: [ReplicaFinding]) {
        self.key = key
        self.removed = removed
        self.failed = failed
    }
}

public protocol ObjectStorage: AnyObject {
    /// Stores a new object; fails with `alreadyExists` if the key holds one (no rewriting).
    func put(_ key: String, from source: ObjectSource) throws -> PutReport
    /// Starts a new object that the caller writes piece by piece (same rules as `put`).
    func makeWriter(_ key: String) throws -> ObjectWriting
    /// Opens an object for streaming, verified reading.
    func get(_ key: String) throws -> ObjectReading
    func stat(_ key: String) throws -> ObjectInfo
    /// Keys that start with `prefix`, sorted.
    func list(prefix: String) throws -> [String]
    func delete(_ key: String) throws -> DeleteReport
}

extension ObjectStorage {
    /// A put from a source, through the backend's writer (the same durability and quorum rules as
    /// a producer-driven write); an error aborts it, so nothing is published.
    public func put(_ key: String, from source: ObjectSource) throws -> PutReport {
        let w = try makeWriter(key)
        do {
            while true {
                let piece = try source.read(maxCount: ObjectRecord.defaultChunkSize)
                if piece.isEmpty { break }
                try w.write(piece)
            }
            return try w.commit()
        } catch {
            w.abort()
            throw error
        }
    }

    public func put(_ key: String, bytes: [UInt8]) throws -> PutReport {
        try put(key, from: BytesSource(bytes))
    }

    /// Reads a whole object into memory (small objects; archives should be streamed).
    public func getAll(_ key: String, limit: Int = 64 << 20) throws -> [UInt8] {
        let r = try get(key)
        var out: [UInt8] = []
        while let piece = try r.read() {
            out.append(contentsOf: piece)
            guard out.count <= limit else {
                throw StoreError(.limitExceeded, key: key, "object larger than the in-memory limit of \(limit) bytes")
            }
        }
        return out
    }

    public func exists(_ key: String) throws -> Bool {
        do { _ = try stat(key); return true } catch let e as StoreError where e.code == .notFound { return false }
    }
}

/// An ObjectSource over bytes in memory.
public final class BytesSource: ObjectSource {
    private let bytes: [UInt8]
    private var offset = 0
    public init(_ bytes: [UInt8]) { self.bytes = bytes }
    public func read(maxCount: Int) throws -> [UInt8] {
        let n = Swift.min(maxCount, bytes.count - offset)
        defer { offset += n }
        return Array(bytes[offset..<(offset + n)])
    }
}

/// An ObjectSource over a file (or a pipe such as stdin).
public final class FileSource: ObjectSource {
    private let handle: FileHandle
    private let path: String
    /// Opens a regular file; a FIFO, device, socket or directory is refused (it could block or never end).
    public init(path: String) throws {
        self.path = path
        do { handle = FileHandle(fileDescriptor: try AtomicFile.openRegularFile(path), closeOnDealloc: true) } catch let e as FileError {
            let code: StoreError.Code = e.code == .notFound ? .notFound : e.code == .notRegularFile || e.code == .notDirectory || e.code == .symlinkLoop ? .invalidArgument : .ioError
            throw StoreError(code, path: path, "cannot open the input file: \(e.reason)")
        }
    }
    public init(handle: FileHandle, name: String) {
        self.handle = handle
        self.path = name
    }
    public func read(maxCount: Int) throws -> [UInt8] {
        do {
            return [UInt8](try handle.read(upToCount: maxCount) ?? Data())
        } catch {
            throw StoreError(.ioError, path: path, "read failed: \(error)")
        }
    }
}

/// Object keys (spec 5.2): 1...`maxLength` bytes of `[A-Za-z0-9._-]` in segments joined by `/`;
/// no segment is empty or starts with `.`. So a key maps to one file name without escaping
/// ambiguity, and no object file can look like a temp file.
public enum ObjectKey {
    public static let maxLength = 200

    public static func validate(_ key: String) throws {
        let bytes = Array(key.utf8)
        guard !bytes.isEmpty, bytes.count <= maxLength else {
            throw StoreError(.invalidKey, key: key, "a key has 1...\(maxLength) bytes")
        }
        var segmentStart = true
        for b in bytes {
            if b == UInt8(ascii: "/") {
                guard !segmentStart else { throw StoreError(.invalidKey, key: key, "empty key segment") }
                segmentStart = true
                continue
            }
            guard isNameByte(b) else { throw StoreError(.invalidKey, key: key, "byte 0x\(String(b, radix: 16)) not allowed in a key") }
            if segmentStart, b == UInt8(ascii: ".") { throw StoreError(.invalidKey, key: key, "a key segment may not start with '.'") }
            segmentStart = false
        }
        guard !segmentStart else { throw StoreError(.invalidKey, key: key, "empty key segment") }
    }

    /// Validates one name used inside keys (backup id, cluster id): no `/`.
    public static func validateName(_ name: String, what: String, maxLength: Int = 128) throws {
        let bytes = Array(name.utf8)
        guard !bytes.isEmpty, bytes.count <= maxLength, bytes.allSatisfy(isNameByte),
              bytes[0] != UInt8(ascii: ".") else {
            throw StoreError(.invalidKey, key: name, "\(what) must be 1...\(maxLength) bytes of [A-Za-z0-9._-], not starting with '.'")
        }
    }

    static func isNameByte(_ b: UInt8) -> Bool {
        (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a)
            || b == UInt8(ascii: ".") || b == UInt8(ascii: "_") || b == UInt8(ascii: "-")
    }

    /// The file name of a key in its fan-out directory: `/` becomes `~`.
    static func fileName(_ key: String) -> String {
        String(key.map { $0 == "/" ? "~" : $0 })
    }

    /// The key of a file name, or nil for names that are not object files (temps, strays).
    static func key(fromFileName name: String) -> String? {
        let key = String(name.map { $0 == "~" ? "/" : $0 })
        return (try? validate(key)) != nil ? key : nil
    }
}
