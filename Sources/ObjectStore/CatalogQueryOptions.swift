// The text form of a catalog listing (`hsmbackup store ls`, `backup list`): the options a user
// types, parsed into a `CatalogQuery`, and the query written back as options (spec/FORMAT.md
// section 5.8, "A listing by cluster, state or creation time"):
//   cluster  a cluster id (compared as is)
//   states   zero or more of CREATE_IN_PROGRESS, READY, PENDING_DELETION, DELETED
//   since    ISO 8601 internet time (seconds, "Z" or an offset); created ≥ since
//   before   ISO 8601 internet time; created < before
//   limit    at most this many backups
// Times before 1970 read as 0. The parser lives here, not in the CLI, so the fuzz target
// `catalog-query` runs the same code as the command line.
import Foundation

/// A listing's options as text, exactly as the command line takes them.
public struct CatalogQueryOptions: Equatable, Sendable {
    public var cluster: String?
    public var states: [String]
    public var since: String?
    public var before: String?
    public var limit: Int?

    public init(cluster: String? = nil, states: [String] = [], since: String? = nil, before: String? = nil, limit: Int? = nil) {
        self.cluster = cluster
        self.states = states
        self.since = since
        self.before = before
        self.limit = limit
    }

    /// Parses the options; a bad state or time is `invalidArgument` naming the option.
    public func query() throws -> CatalogQuery {
        var set: Set<BackupState>?
        if !states.isEmpty {
            var s = Set<BackupState>()
            for name in states {
                guard let st = BackupState(rawValue: name) else {
                    throw StoreError(.invalidArgument, key: name,
                                     "unknown state; one of \(BackupState.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                s.insert(st)
            }
            set = s
        }
        let q = CatalogQuery(clusterId: cluster, states: set, createdFromMillis: try since.map { try Self.millis($0, "since") },
                             createdBeforeMillis: try before.map { try Self.millis($0, "before") }, limit: limit)
        try q.validate()
        return q
    }

    /// The options that parse to `q` (states in code order, times in UTC to the second).
    public init(_ q: CatalogQuery) {
        self.init(cluster: q.clusterId,
                  states: BackupState.allCases.filter { q.states?.contains($0) ?? false }.map(\.rawValue),
                  since: q.createdFromMillis.map(Self.iso), before: q.createdBeforeMillis.map(Self.iso), limit: q.limit)
    }

    static func millis(_ text: String, _ option: String) throws -> UInt64 {
        guard let d = ISO8601DateFormatter().date(from: text) else {
            throw StoreError(.invalidArgument, key: text, "--\(option): not an ISO 8601 time")
        }
        let ms = (d.timeIntervalSince1970 * 1000).rounded(.down)
        guard ms > 0 else { return 0 }
        guard let v = UInt64(exactly: ms) else { throw StoreError(.invalidArgument, key: text, "--\(option): time out of range") }
        return v
    }

    static func iso(_ millis: UInt64) -> String {
        ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: Double(millis / 1000)))
    }
}

extension CatalogQuery {
    /// A negative limit is `invalidArgument` (fuzz finding, catalog-query: it trapped the listing).
    public func validate() throws {
        if let l = limit, l < 0 { throw StoreError(.invalidArgument, "--limit must be 0 or more, not \(l)") }
    }
}
