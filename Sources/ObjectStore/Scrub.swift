// Scrub (verify every replica of every object, optionally repair) and fsck (stale temps, replica
// markers); spec/FORMAT.md section 5.7.
#if canImport(Glibc)
import Foundation
import Glibc
#endif
import Durability

/// The machine-readable result of a scrub.
public struct ScrubReport: Codable, Sendable {
    public var objects = 0
    public var replicasChecked = 0
    public var corrupt = 0
    public var missing = 0
    public var repaired = 0
    public var unrecoverable = 0
    /// Replica directories that could not be used (and, with repair, were re-created).
    public var unavailableReplicas: [ReplicaFinding] = []
    public var recreatedReplicas: [Int] = []
    /// Every problem found, per object replica.
    public var findings: [ObjectFinding] = []
    public var unrecoverableKeys: [String] = []
    public var repairFailures: [ObjectFinding] = []
    /// Bad objects not repaired because `repairable` refused them (leftovers `store fsck` removes).
    public var notRepaired: [String] = []

    public var isClean: Bool { corrupt == 0 && missing == 0 && unrecoverable == 0 && unavailableReplicas.isEmpty }

    public init() {}
}

/// A replica finding together with the object it concerns.
public struct ObjectFinding: Codable, Equatable, Sendable {
    public let key: String
    public let finding: ReplicaFinding

    public init(key: String, finding: ReplicaFinding) {
        self.key = key
        self.finding = finding
    }
}

public struct StoreFsckReport: Codable, Sendable {
    public var tempsRemoved: [String] = []
    /// Temps that could not be removed (a directory tree moved out of a replica file's place
    /// that holds something undeletable), each with why.
    public var tempsNotRemoved: [ReplicaFinding] = []
    public var unavailableReplicas: [ReplicaFinding] = []

    public init() {}
}

extension LocalObjectStore {
    /// Verifies every replica of every object, one chunk in memory at a time. With `repair`,
    /// re-creates missing replica directories and rewrites bad replicas from a good one, except
    /// for keys `repairable` refuses (the catalog's leftovers: they are removed, not healed).
    /// An object that looks bad is checked again under its stripe lock, so one deleted or
    /// replaced by a committed change while the scrub ran is not reported as damage.
    /// `progress(done, total)` is called after each object.
    public func scrub(repair: Bool = false, repairable: ((String) -> Bool)? = nil,
                      progress: ((Int, Int) -> Void)? = nil) throws -> ScrubReport {
        var report = ScrubReport()
        for i in replicaPaths.indices {
            guard let problem = replicaProblem(i) else { continue }
            let dirExists = access(replicaPaths[i], F_OK) == 0
            let markerExists = access(replicaPaths[i] + "/" + ReplicaMarker.fileName, F_OK) == 0
            if repair && (!dirExists || !markerExists) {
                do {
                    try Self.initReplica(replicaPaths[i], index: i, storeId: config.storeId)
                    report.recreatedReplicas.append(i)
                    continue
                } catch {}
            }
            report.unavailableReplicas.append(problem)
        }
        let keys = try list(prefix: "")
        for (n, key) in keys.enumerated() {
            var (set, bad) = examine(key)
            if bad.contains(where: { $0.problem != .replicaUnavailable }) {
                // Seen without a lock: a delete may have been half done. Under the lock no put or
                // delete of this key is in flight; a key gone from every replica was deleted.
                let lock = try FileLock.acquire(stripeLockPath(fanOut: Self.fanOut(key)))
                set = ReplicaSet()
                (set, bad) = examine(key)
                withExtendedLifetime(lock) {}
                if set.good.isEmpty && bad.allSatisfy({ $0.problem == .missing || $0.problem == .replicaUnavailable }) {
                    progress?(n + 1, keys.count)
                    continue
                }
            }
            report.objects += 1
            let badReplicas = Set(bad.map(\.replica))
            set.good.removeAll { badReplicas.contains($0.replica) }
            let checked = replicaPaths.indices.filter { i in !bad.contains { $0.replica == i && $0.problem == .replicaUnavailable } }
            report.replicasChecked += checked.count
            for f in bad.sorted(by: { $0.replica < $1.replica }) {
                if f.problem == .replicaUnavailable { continue }
                report.findings.append(ObjectFinding(key: key, finding: f))
                if f.problem == .missing { report.missing += 1 } else { report.corrupt += 1 }
            }
            if set.good.isEmpty {
                report.unrecoverable += 1
                report.unrecoverableKeys.append(key)
            } else if repair, !(repairable?(key) ?? true) {
                report.notRepaired.append(key)
            } else if repair {
                set = ReplicaSet() // close files before rewriting
                for target in badReplicas.sorted() where !bad.contains(where: { $0.replica == target && $0.problem == .replicaUnavailable }) {
                    do {
                        if try self.repair(key, target: target) { report.repaired += 1 }
                    } catch let e as ReplicaFailure {
                        report.repairFailures.append(ObjectFinding(key: key, finding: e.finding))
                    } catch {
                        report.repairFailures.append(ObjectFinding(key: key, finding: ReplicaFinding(
                            replica: target, path: objectPath(target, key), problem: .ioError, detail: "\(error)")))
                    }
                }
            }
            progress?(n + 1, keys.count)
        }
        return report
    }

    /// Every replica of `key` opened and streamed through its digests: the good set, and every finding.
    private func examine(_ key: String) -> (ReplicaSet, [ReplicaFinding]) {
        let set = openReplicas(key)
        var bad = set.findings
        if let ref = set.reference {
            bad += verifyAll(set.good, against: ref, parallel: false)
        }
        return (set, bad)
    }

    /// Checks every replica of one object against its checksum record, without repairing:
    /// the problems found, in replica order (empty when every replica is good).
    public func verifyReplicas(_ key: String) -> [ReplicaFinding] {
        let set = openReplicas(key)
        var bad = set.findings
        if let ref = set.reference {
            // Each replica streams through its chunk digests on its own thread (its own file
            // descriptor); the object digest once per record (`verifyAll`): N + 1 passes of
            // SHA-256 over the object instead of 2 × N.
            bad += verifyAll(set.good, against: ref, parallel: true)
        }
        return bad.sorted { $0.replica < $1.replica }
    }

    /// Safe beside an open reader of the same key: files are opened afresh, read only, and the
    /// record memo is locked.
    public var verifiesReplicasBesideRead: Bool { true }

    public func verifyReplicasBesideRead(_ key: String, skipping: Int?, verified: VerifiedChunkFeed?) -> [ReplicaFinding] {
        let set = openReplicas(key)
        var bad = set.findings.filter { $0.replica != skipping }
        if let ref = set.reference {
            // On this thread only: it runs beside a pass that is itself CPU-bound, and a second
            // thread here would take the core the pass's parser needs. The replicas are read
            // side by side so that those that agree are hashed once, or not at all where the
            // reader lends the chunks it checked.
            // The reader's chunks count only if it checked them against this reference record.
            let lent = verified.flatMap { $0.lends(for: ref.recordBytes) ? $0 : nil }
            bad += verifyChunksTogether(set.good.filter { $0.replica != skipping }, against: ref.record, verified: lent)
        }
        return bad.sorted { $0.replica < $1.replica }
    }

    /// Removes stale temp files and reports unusable replica directories.
    public func fsck() -> StoreFsckReport {
        var report = StoreFsckReport()
        let temps = sweepTemps()
        report.tempsRemoved = (temps.removed + removeStrayTemps()).sorted()
        report.tempsNotRemoved = temps.failed
        report.unavailableReplicas = replicaPaths.indices.compactMap { replicaProblem($0) }
        return report
    }
}

/// Record bytes (a record digest covers them) whose object digest was seen to match the bytes
/// their chunk digests name. Bounded: a long-running process forgets the oldest half.
final class RecordMemo: @unchecked Sendable {
    private let lock = NSLock()
    private var seen = Set<[UInt8]>()
    private static let capacity = 256
    func contains(_ recordBytes: [UInt8]) -> Bool { lock.lock(); defer { lock.unlock() }; return seen.contains(recordBytes) }
    func insert(_ recordBytes: [UInt8]) {
        lock.lock()
        if seen.count >= Self.capacity { seen.removeAll() }
        seen.insert(recordBytes)
        lock.unlock()
    }
}

/// Slots that concurrent iterations fill, one each.
final class ConcurrentResults<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var slots: [T?]
    init(count: Int) { slots = Array(repeating: nil, count: count) }
    func set(_ i: Int, _ value: T) { lock.lock(); slots[i] = value; lock.unlock() }
    var values: [T] { lock.lock(); defer { lock.unlock() }; return slots.map { $0! } }
}

/// A value handed to concurrent iterations that each use a disjoint part of it.
struct UncheckedSendable<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
