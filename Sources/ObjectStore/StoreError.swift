// The one error type of the ObjectStore module (spec/FORMAT.md section 5.9): a stable code, the
// object key, the replica (index and path) where it happened, and, when several replicas were
// tried, what was wrong with each.

/// What was wrong with one replica of one object, or with a whole replica directory.
public struct ReplicaFinding: Codable, Equatable, Sendable, CustomStringConvertible {
    public enum Problem: String, Codable, Sendable {
        /// The replica has no file for the object.
        case missing
        /// The file has no valid checksum record at its end (truncated, or the record is damaged).
        case badRecord
        /// The record is valid but the file's length does not match it.
        case sizeMismatch
        /// A chunk's bytes do not match the chunk digest in the record (bit rot).
        case chunkMismatch
        /// The object's bytes do not match the object digest in the record.
        case digestMismatch
        /// The record belongs to another key, or disagrees with the other replicas.
        case conflict
        /// The operating system refused to read or write it (I/O error, permission, no space).
        case ioError
        /// The replica directory itself is missing or not this store's (unmounted disk?).
        case replicaUnavailable
    }
    public let replica: Int
    public let path: String
    public let problem: Problem
    /// The chunk index for `chunkMismatch` and short reads.
    public let chunk: Int?
    public let detail: String
    /// For `ioError`: the operating system's error name (ENOSPC, EROFS, EACCES, EIO ...).
    public let osError: String?

    public init(replica: Int, path: String, problem: Problem, chunk: Int? = nil, detail: String, osError: String? = nil) {
        self.replica = replica
        self.path = path
        self.problem = problem
        self.chunk = chunk
        self.detail = detail
        self.osError = osError
    }

    public var description: String {
        "replica \(replica) (\(path)): \(problem.rawValue)\(chunk.map { " at chunk \($0)" } ?? ""): \(detail)"
    }

    /// Corrupt as opposed to missing (used by the scrub counters).
    public var isCorruption: Bool {
        switch problem {
        case .badRecord, .sizeMismatch, .chunkMismatch, .digestMismatch, .conflict: return true
        case .missing, .ioError, .replicaUnavailable: return false
        }
    }
}

public struct StoreError: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Codable, Sendable {
        /// A key, backup id, cluster id or tag that breaks the naming rules.
        case invalidKey
        /// An argument out of its allowed range (quorum, replica count, retention days ...).
        case invalidArgument
        /// No such object, backup or store.
        case notFound
        /// The key already holds an object (objects are never rewritten).
        case alreadyExists
        /// Fewer replicas than the write quorum could be made durable.
        case quorumNotReached
        /// No replica holds a good copy; `findings` says what was wrong with each.
        case unrecoverable
        /// A file-system call failed.
        case ioError
        /// A store file (configuration, replica marker, record) does not parse.
        case badFormat
        /// The catalog file is damaged; `reindex` rebuilds it from the objects.
        case badCatalog
        /// The operation is not allowed in the backup's current lifecycle state.
        case invalidState
        /// A store already exists where one was to be created.
        case alreadyInitialized
        /// A limit of the format was exceeded (object size, entries, tags).
        case limitExceeded
        /// The store refused our credentials or permissions (S3: AccessDenied, InvalidAccessKeyId,
        /// SignatureDoesNotMatch ...); no retry helps.
        case accessDenied
    }

    public let code: Code
    public let key: String?
    public let replica: Int?
    public let path: String?
    public let reason: String
    public let findings: [ReplicaFinding]

    public init(_ code: Code, key: String? = nil, replica: Int? = nil, path: String? = nil,
                _ reason: String, findings: [ReplicaFinding] = []) {
        self.code = code
        self.key = key
        self.replica = replica
        self.path = path
        self.reason = reason
        self.findings = findings
    }

    public var description: String {
        var s = "[\(code.rawValue)]"
        if let key { s += " \(key)" }
        if let replica { s += " replica \(replica)" }
        if let path { s += " (\(path))" }
        s += ": \(reason)"
        for f in findings { s += "; \(f)" }
        return s
    }
}
