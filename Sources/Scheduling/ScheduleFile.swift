import Durability
import Foundation
import HSMBackup
import ObjectStore

// The schedule file and the state file (docs/SCHEDULES.md). Both are JSON written by Foundation's
// JSONEncoder with sorted keys, atomically (temp, fsync, rename, fsync directory), owner-only,
// in the home:
//   <home>/schedules.json        what to run: {"format": "hsmbackup-schedules", "version": 1, ...}
//   <home>/schedule-state.json   what happened: {"format": "hsmbackup-schedule-state", "version": 1, ...}
// A reader refuses another format name or a version it does not know before reading anything
// else, so a newer file is never half-understood.

/// Errors of the scheduling module: a code tests can name, what and where.
public struct SchedulingError: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable {
        /// A bad name, interval, source or option.
        case invalidArgument
        /// No such schedule.
        case notFound
        /// A schedule of that name exists already.
        case alreadyExists
        /// The schedule or state file is not one this version reads.
        case badFile
        /// Another `schedule run` holds the lock.
        case busy
        /// Reading or writing a file failed.
        case io
        /// A scheduled verification found errors in the new backup.
        case verificationFailed
        /// A PKCS#11 schedule found no user PIN (environment, systemd credential or PIN file).
        case credentialMissing
    }
    public let code: Code
    public let path: String?
    public let reason: String

    public init(_ code: Code, path: String? = nil, _ reason: String) {
        self.code = code
        self.path = path
        self.reason = reason
    }

    public var description: String { (path.map { "\($0): " } ?? "") + reason }
}

/// A length of time written as a sequence of number+unit, `90m`, `12h`, `1d12h`, `1w`
/// (units s, m, h, d, w). It is encoded as that text, normalized (`36h` → `1d12h`).
public struct Interval: Codable, Hashable, Sendable, CustomStringConvertible, Comparable {
    public let seconds: UInt64

    /// The shortest interval a schedule may have.
    public static let minimum = Interval(seconds: 60)
    /// The longest (a year and a bit: longer than the longest retention).
    public static let maximum = Interval(seconds: 400 * 86_400)

    public init(seconds: UInt64) { self.seconds = seconds }

    private static let units: [(Character, UInt64)] = [("w", 604_800), ("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)]

    /// Parses `12h`, `1d12h`, `30m`, `1w`. No spaces, no signs, no fractions, no bare numbers.
    public static func parse(_ text: String) throws -> Interval {
        guard !text.isEmpty, text.utf8.count <= 32 else {
            throw SchedulingError(.invalidArgument, "interval \"\(text)\": write a number and a unit, e.g. 24h, 12h, 1d12h, 30m, 1w")
        }
        var total: UInt64 = 0
        var digits = ""
        for ch in text {
            if ch.isASCII, ch.isNumber { digits.append(ch); continue }
            guard let unit = units.first(where: { $0.0 == ch })?.1, let n = UInt64(digits), n > 0 else {
                throw SchedulingError(.invalidArgument, "interval \"\(text)\": write a number and a unit (s, m, h, d, w), e.g. 24h, 1d12h, 30m")
            }
            let (product, o1) = n.multipliedReportingOverflow(by: unit)
            let (sum, o2) = total.addingReportingOverflow(product)
            guard !o1, !o2 else { throw SchedulingError(.invalidArgument, "interval \"\(text)\" is too long") }
            total = sum
            digits = ""
        }
        guard digits.isEmpty else {
            throw SchedulingError(.invalidArgument, "interval \"\(text)\": the number \(digits) has no unit (s, m, h, d, w)")
        }
        return Interval(seconds: total)
    }

    /// Normalized text: `1d12h`, `30m`, `0s`.
    public var description: String {
        if seconds == 0 { return "0s" }
        var rest = seconds, out = ""
        for (u, size) in Self.units where rest >= size {
            out += "\(rest / size)\(u)"
            rest %= size
        }
        return out
    }

    public init(from decoder: Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        do { self = try Self.parse(text) } catch let e as SchedulingError {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: e.reason))
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }

    public static func < (a: Interval, b: Interval) -> Bool { a.seconds < b.seconds }
}

/// Where a schedule's backups come from. Encoded with a `kind` discriminator so new kinds are
/// additive: a reader that meets a kind it does not know refuses the file (badFile), naming it.
public enum ScheduleSource: Codable, Equatable, Sendable, CustomStringConvertible {
    /// A simulated HSM's state directory (`--hsm DIR`), stored as an absolute path.
    case simulatedHSM(directory: String)
    /// A PKCS#11 token (`--pkcs11 --module PATH --token LABEL`): the module stored as an absolute
    /// path, the token by its label. `allowPartial`: a backup that skips objects the token will
    /// not export still succeeds (listing them); otherwise it fails the schedule. The user PIN is
    /// never here: `schedule run` reads it at run time (`PKCS11PIN`).
    case pkcs11(module: String, tokenLabel: String, allowPartial: Bool)

    private enum CodingKeys: String, CodingKey { case kind, directory, module, token, allowPartial }

    /// The `kind` written to the file.
    public var kind: String {
        switch self {
        case .simulatedHSM: return "simulated-hsm"
        case .pkcs11: return "pkcs11"
        }
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        switch try c.decode(String.self, forKey: .kind) {
        case "simulated-hsm": self = .simulatedHSM(directory: try c.decode(String.self, forKey: .directory))
        case "pkcs11":
            self = .pkcs11(module: try c.decode(String.self, forKey: .module), tokenLabel: try c.decode(String.self, forKey: .token),
                           allowPartial: try c.decodeIfPresent(Bool.self, forKey: .allowPartial) ?? false)
        case let other:
            throw DecodingError.dataCorruptedError(forKey: .kind, in: c, debugDescription: "unknown backup source kind \"\(other)\"")
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(kind, forKey: .kind)
        switch self {
        case .simulatedHSM(let dir):
            try c.encode(dir, forKey: .directory)
        case .pkcs11(let module, let token, let allowPartial):
            try c.encode(module, forKey: .module)
            try c.encode(token, forKey: .token)
            try c.encode(allowPartial, forKey: .allowPartial)
        }
    }

    public var description: String {
        switch self {
        case .simulatedHSM(let dir): return "hsm \(dir)"
        case .pkcs11(let module, let token, let allowPartial):
            return "pkcs11 token \"\(token)\" module \(module)\(allowPartial ? " (allow partial)" : "")"
        }
    }
}

/// One schedule: a source, its KMS keys, how often, how deep to verify, the tags its backups get.
public struct Schedule: Codable, Equatable, Sendable {
    public static let maxNameLength = 64

    public var name: String
    public var source: ScheduleSource
    /// The cluster the source belonged to when the schedule was added. Once a backup is stored,
    /// `status` groups by the cluster of its last backup (`ScheduleRecord.cluster`) instead.
    public var cluster: String
    public var kmsKeys: [String]
    public var every: Interval
    public var verify: VerificationLevel
    /// Where `verify: full` runs its dry-run restore (a spare HSM of the same manufacturer);
    /// nil: the source itself.
    public var verifyOn: ScheduleSource?
    public var tags: [String: String]
    /// When the schedule was added (RFC 3339 UTC): a schedule that never succeeded is judged
    /// against this.
    public var added: String

    public init(name: String, source: ScheduleSource, cluster: String, kmsKeys: [String], every: Interval,
                verify: VerificationLevel, verifyOn: ScheduleSource? = nil, tags: [String: String], added: String) {
        self.name = name; self.source = source; self.cluster = cluster; self.kmsKeys = kmsKeys
        self.every = every; self.verify = verify; self.verifyOn = verifyOn; self.tags = tags; self.added = added
    }

    /// Names are 1...64 of A-Z a-z 0-9 . _ - (they appear in log lines, metrics and file names).
    public static func validate(name: String) throws {
        let ok = !name.isEmpty && name.utf8.count <= maxNameLength && !name.hasPrefix(".") && !name.hasPrefix("-")
            && name.unicodeScalars.allSatisfy { $0.isASCII && (CharacterSet.alphanumerics.contains($0) || "._-".unicodeScalars.contains($0)) }
        guard ok else {
            throw SchedulingError(.invalidArgument, "schedule name \"\(name)\": use 1 to \(maxNameLength) of A-Z a-z 0-9 . _ - (not starting with . or -)")
        }
    }

    // The rules `schedule add` applies to its options and `loadSchedules` to a hand-edited file,
    // in one place: each says what is wrong, nil when the value is fine; the caller says where.

    /// A schedule's (or the scrub's) interval: `Interval.minimum` to `Interval.maximum`.
    public static func problem(every: Interval) -> String? {
        every >= Interval.minimum && every <= Interval.maximum ? nil : "\(every): give \(Interval.minimum) to \(Interval.maximum)"
    }

    /// A backup tag `schedule run` sets itself (`verification=failed`) may not be given.
    public static func problem(tags: [String: String]) -> String? {
        tags[BackupEntry.verificationTag] == nil ? nil
            : "\(BackupEntry.verificationTag)=…: that tag is set by `schedule run` on a backup that fails its verification"
    }

    /// `added` must be what `schedule add` writes, YYYY-MM-DDTHH:MM:SSZ: `status` judges a never
    /// successful schedule against it, and a time it cannot read would make it never stale.
    public static func problem(added: String) -> String? {
        Timestamp.seconds(rfc3339: added) != nil ? nil
            : "\"\(added)\" is not a UTC time written YYYY-MM-DDTHH:MM:SSZ (no offsets or fractions)"
    }

    /// Every rule above, for one schedule read from a file: the first broken one, with its field.
    func problem() -> (field: String, reason: String)? {
        do { try Self.validate(name: name) } catch let e as SchedulingError { return ("name", e.reason) } catch { return ("name", "\(error)") }
        if let p = Self.problem(every: every) { return ("every", p) }
        if let p = Self.problem(tags: tags) { return ("tags", p) }
        if let p = Self.problem(added: added) { return ("added", p) }
        return nil
    }
}

/// `<home>/schedules.json`.
public struct ScheduleFile: Codable, Equatable, Sendable {
    public static let formatName = "hsmbackup-schedules"
    public static let currentVersion = 1
    /// `store scrub --repair`'s default interval.
    public static let defaultScrubEvery = Interval(seconds: 7 * 86_400)

    public var format = Self.formatName
    public var version = Self.currentVersion
    /// How often `schedule run` scrubs the store (with repair).
    public var scrubEvery = Self.defaultScrubEvery
    /// In the order they were added.
    public var schedules: [Schedule] = []

    public init() {}

    public func schedule(_ name: String) -> Schedule? { schedules.first { $0.name == name } }
}

/// What `schedule run` last did for one schedule.
public struct ScheduleRecord: Codable, Equatable, Sendable {
    public struct Verification: Codable, Equatable, Sendable {
        public var at: String
        public var backupId: String
        public var level: VerificationLevel
        public var passed: Bool
        public var errors: Int
        public var warnings: Int
    }

    /// The start of the last attempt (RFC 3339 UTC).
    public var lastRun: String?
    /// `ok` or `failed`.
    public var lastOutcome: String?
    /// Why the last attempt failed, and at which step (backup, verify, retention).
    public var lastError: String?
    public var lastBackupId: String?
    /// The cluster the last stored backup was filed under (the source's cluster at that run; it
    /// can differ from the schedule's `cluster`, recorded when it was added). `status` and
    /// retention follow this one. Absent until a backup was stored (state files before it too).
    public var cluster: String?
    /// The start of the last attempt that succeeded.
    public var lastSuccess: String?
    public var lastVerification: Verification?
    public var consecutiveFailures: Int = 0

    public init() {}
}

extension Schedule {
    /// The cluster the schedule's backups land in: that of its last stored backup, else the one
    /// recorded when it was added.
    public func currentCluster(_ r: ScheduleRecord?) -> String { r?.cluster ?? cluster }
}

/// What the last scheduled scrub found.
public struct ScrubRecord: Codable, Equatable, Sendable {
    public var lastRun: String
    public var outcome: String
    public var objects: Int
    public var corrupt: Int
    public var missing: Int
    public var repaired: Int
    public var unrecoverable: Int
    public var error: String?
}

/// `<home>/schedule-state.json`: written by `schedule run` only, under its lock.
public struct ScheduleStateFile: Codable, Equatable, Sendable {
    public static let formatName = "hsmbackup-schedule-state"
    public static let currentVersion = 1

    public var format = Self.formatName
    public var version = Self.currentVersion
    public var schedules: [String: ScheduleRecord] = [:]
    public var scrub: ScrubRecord?

    public init() {}
}

/// The files of the scheduler in one home.
public struct ScheduleHome: Sendable {
    public let home: String
    public init(home: String) { self.home = home }

    public var scheduleFile: String { home + "/schedules.json" }
    public var stateFile: String { home + "/schedule-state.json" }
    /// Held (flock) by `schedule run` for its whole run.
    public var runLock: String { home + "/schedule-run.lock" }
    /// Held briefly by `schedule add|remove|scrub` while they rewrite the schedule file.
    public var editLock: String { home + "/schedules.json.lock" }
    public var store: String { home + "/store" }
    public var kms: String { home + "/kms" }

    public func loadSchedules() throws -> ScheduleFile {
        guard let bytes = try readIfPresent(scheduleFile) else { return ScheduleFile() }
        let file = try decode(ScheduleFile.self, bytes, path: scheduleFile, format: ScheduleFile.formatName, version: ScheduleFile.currentVersion)
        // A hand-edited file passes the checks `schedule add` applies, or nothing reads it: a
        // value the runner or `status` cannot use must fail loudly, not be skipped quietly.
        var seen = Set<String>()
        for (i, s) in file.schedules.enumerated() {
            if let (field, reason) = s.problem() {
                let which = field == "name" ? "schedules[\(i)]" : "schedule \"\(s.name)\""
                throw SchedulingError(.badFile, path: scheduleFile, "\(which): \(field): \(reason)")
            }
            guard seen.insert(s.name).inserted else { throw SchedulingError(.badFile, path: scheduleFile, "schedule \"\(s.name)\" appears twice") }
        }
        if let p = Schedule.problem(every: file.scrubEvery) { throw SchedulingError(.badFile, path: scheduleFile, "scrubEvery: \(p)") }
        return file
    }

    public func saveSchedules(_ file: ScheduleFile) throws { try write(file, to: scheduleFile) }

    public func loadState() throws -> ScheduleStateFile {
        guard let bytes = try readIfPresent(stateFile) else { return ScheduleStateFile() }
        return try decode(ScheduleStateFile.self, bytes, path: stateFile, format: ScheduleStateFile.formatName, version: ScheduleStateFile.currentVersion)
    }

    public func saveState(_ state: ScheduleStateFile) throws { try write(state, to: stateFile) }

    /// Runs `body` holding the edit lock (blocking: edits are short).
    public func editing<T>(_ body: () throws -> T) throws -> T {
        try makeHome()
        let lock = try ScheduleLock.acquire(editLock, wait: true)
        defer { lock.release() }
        return try body()
    }

    /// Creates the home (owner-only) if it is not there yet, as every command that needs it does.
    public func makeHome() throws {
        do { try AtomicFile.makeDirectory(home) } catch let e as FileError { throw SchedulingError(.io, path: home, e.reason) }
    }

    private func readIfPresent(_ path: String) throws -> [UInt8]? {
        do { return try AtomicFile.read(path, limit: 16 << 20) } catch let e as FileError {
            if e.code == .notFound { return nil }
            throw SchedulingError(.io, path: path, e.reason)
        }
    }

    private struct Header: Decodable { let format: String?; let version: Int? }

    private func decode<T: Decodable>(_ type: T.Type, _ bytes: [UInt8], path: String, format: String, version: Int) throws -> T {
        let data = Data(bytes)
        // Format and version first: an unknown version is refused before its fields are read.
        guard let header = try? JSONDecoder().decode(Header.self, from: data) else {
            throw SchedulingError(.badFile, path: path, "not a JSON object")
        }
        guard header.format == format else {
            throw SchedulingError(.badFile, path: path, "format is \"\(header.format ?? "(none)")\", expected \"\(format)\"")
        }
        guard header.version == version else {
            throw SchedulingError(.badFile, path: path, "version \(header.version.map(String.init) ?? "(none)") is not one this hsmbackup reads (it reads \(version))")
        }
        do { return try JSONDecoder().decode(T.self, from: data) } catch {
            throw SchedulingError(.badFile, path: path, Self.describe(error))
        }
    }

    static func describe(_ error: Error) -> String {
        switch error {
        case DecodingError.dataCorrupted(let c): return "\(c.codingPath.map(\.stringValue).joined(separator: ".")): \(c.debugDescription)"
        case DecodingError.keyNotFound(let k, let c): return "\((c.codingPath + [k]).map(\.stringValue).joined(separator: ".")): missing"
        case DecodingError.typeMismatch(_, let c), DecodingError.valueNotFound(_, let c):
            return "\(c.codingPath.map(\.stringValue).joined(separator: ".")): \(c.debugDescription)"
        default: return "\(error)"
        }
    }

    private func write<T: Encodable>(_ value: T, to path: String) throws {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        do {
            try AtomicFile.makeDirectory(home)
            try AtomicFile.write(Array(try enc.encode(value)) + [0x0A], to: path)
        } catch let e as FileError {
            throw SchedulingError(.io, path: path, e.reason)
        }
    }
}
