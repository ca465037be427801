// What the catalog, the lifecycle, verify, scrub and restore need from a store beyond the plain
// `ObjectStorage` operations (spec/FORMAT.md section 5): replica status, existence checks, the
// per-replica verification, scrub, and where the catalog lives. `LocalObjectStore` (replica
// directories) and S3Store's `S3ObjectStore` (replica buckets) both conform; nothing above this
// protocol knows which one it has.
#if canImport(Glibc)
import Glibc
#endif
import Durability

public protocol ReplicatedStorage: ObjectStorage {
    var clock: StoreClock { get }
    /// The store's random id (lowercase hex), the same on every replica.
    var storeIdHex: String { get }
    var writeQuorum: Int { get }
    var replicaCount: Int { get }
    /// Where the store is, for people (its root directory, or its configuration file).
    var location: String { get }
    /// Where replica `i` is, for people: a directory, or `s3://bucket/prefix` (endpoint).
    func replicaLocation(_ i: Int) -> String
    /// Nil if replica `i` is usable; otherwise why not (missing directory or bucket, foreign marker).
    func replicaStatus(_ i: Int) -> ReplicaFinding?
    /// Whether any usable replica holds something under `key` (no content check).
    func anyReplicaHolds(_ key: String) -> Bool
    /// Whether any object key satisfies `match`; may stop at the first one.
    func hasObject(where match: (String) -> Bool) -> Bool
    /// Every key under `prefix` any usable replica holds, or nil (see the default below).
    func existingKeys(prefix: String) -> Set<String>?
    /// `get` with read-repair switched off for readers whose caller holds another writer open.
    func get(_ key: String, readRepair: Bool) throws -> ObjectReading
    /// Every replica of `key` checked against its checksum record, without repairing.
    func verifyReplicas(_ key: String) -> [ReplicaFinding]
    /// Whether `verifyReplicasBesideRead` may run on another thread while a reader from `get`
    /// streams the same object (issue 17: a verification reads one replica while every replica
    /// is checked). False by default.
    var verifiesReplicasBesideRead: Bool { get }
    /// `verifyReplicas` for that caller: every replica's chunks against the record, the object
    /// digest being left to the reader, which checks it over the whole stream; `skipping` the
    /// replica the reader streams (`LocalObjectReader.streamingReplica`), whose chunks the reader
    /// checks itself: each replica is hashed once. `verified`, when the reader lends its checked
    /// chunks, spares hashing the others: each equal chunk is a memcmp.
    func verifyReplicasBesideRead(_ key: String, skipping: Int?, verified: VerifiedChunkFeed?) -> [ReplicaFinding]
    /// Verifies every replica of every object; with `repair`, heals what `repairable` allows.
    func scrub(repair: Bool, repairable: ((String) -> Bool)?, progress: ((Int, Int) -> Void)?) throws -> ScrubReport
    /// Removes what dead writers left (temp files; stale multipart uploads) and reports unusable replicas.
    func fsck() -> StoreFsckReport

    // The catalog (spec 5.8): one mutable file or object, replaced whole.

    /// Where the catalog is, for messages.
    var catalogLocation: String { get }
    /// A local file that the catalog's writers on this host flock (cross-host writers are
    /// serialized by the store's compare-and-swap, where it has one).
    var catalogLockPath: String { get }
    /// A local directory for the per-backup writer locks (`backup-<fanout>.lock`).
    var lockDirectory: String { get }
    /// Creates what the catalog needs and removes dead writers' temps (under the catalog lock).
    func prepareCatalog() throws
    /// Whether the catalog exists (an unreadable one counts as existing: it is not replaced).
    func catalogExists() -> Bool
    /// The catalog's bytes, nil when there is none.
    func readCatalog(limit: Int) throws -> [UInt8]?
    /// Replaces the catalog whole. A store with compare-and-swap refuses the write when the
    /// catalog changed since this instance last read it (`StoreError.Code.invalidState`).
    func writeCatalog(_ bytes: [UInt8]) throws
    /// Removes temps a crashed catalog writer left (the caller holds the catalog lock).
    func removeCatalogTemps() throws -> [String]
    /// Deletes `key` when it is what a put that never finished leaves (an object on some replica
    /// with a checksum record on none) and says whether it did. Only for keys whose writers the
    /// caller's lock excludes (the catalog's metadata and policy objects, under the catalog
    /// lock): a put in progress looks the same for an instant.
    func removeUnfinishedPut(_ key: String) throws -> Bool
}

extension ReplicatedStorage {
    public var verifiesReplicasBesideRead: Bool { false }
    public func verifyReplicasBesideRead(_ key: String, skipping: Int?, verified: VerifiedChunkFeed?) -> [ReplicaFinding] {
        verifyReplicas(key).filter { $0.replica != skipping }
    }

    /// Every replica's problem, in replica order.
    public func unavailableReplicas() -> [ReplicaFinding] {
        (0..<replicaCount).compactMap { replicaStatus($0) }
    }
}

/// A reader that reports what it met on the way: damaged or missing replicas, and the replicas
/// read-repair rewrote at the end of the stream.
public protocol ReplicaReadReporting: ObjectReading {
    var findings: [ReplicaFinding] { get }
    var repaired: [Int] { get }
}

extension LocalObjectReader: ReplicaReadReporting {}

extension LocalObjectStore: ReplicatedStorage {
    public var location: String { root }
    public var storeIdHex: String { config.storeIdHex }
    public var writeQuorum: Int { config.writeQuorum }
    public var replicaCount: Int { replicaPaths.count }
    public func replicaLocation(_ i: Int) -> String { replicaPaths[i] }

    public static let catalogDirectory = "catalog"
    public static let catalogFileName = "catalog.bin"

    public var catalogLocation: String { root + "/" + Self.catalogDirectory + "/" + Self.catalogFileName }
    public var catalogLockPath: String { root + "/" + Self.catalogDirectory + "/catalog.lock" }
    public var lockDirectory: String { root + "/" + Self.locksDir }

    public func prepareCatalog() throws {
        try Self.fileOp(root) { try AtomicFile.makeDirectory(root + "/" + Self.catalogDirectory) }
        // Temps of a catalog writer that died; only while no live writer holds the lock.
        if let lock = try? FileLock.tryAcquire(catalogLockPath) {
            _ = try? AtomicFile.removeStaleTemps(in: root + "/" + Self.catalogDirectory)
            withExtendedLifetime(lock) {}
        }
    }

    public func catalogExists() -> Bool { access(catalogLocation, F_OK) == 0 }

    public func readCatalog(limit: Int) throws -> [UInt8]? {
        let path = catalogLocation
        do { return try AtomicFile.read(path, limit: limit) } catch let e as FileError {
            guard e.code == .notFound else { throw StoreError(.ioError, path: path, "\(e.operation): \(e.reason)") }
            return nil
        }
    }

    public func writeCatalog(_ bytes: [UInt8]) throws {
        let path = catalogLocation
        try Self.fileOp(path) { try AtomicFile.write(bytes, to: path) }
    }

    public func removeCatalogTemps() throws -> [String] {
        try Self.fileOp(root) { try AtomicFile.removeStaleTemps(in: root + "/" + Self.catalogDirectory) }
    }

    /// Never: a replica file appears whole (record included) by one rename, so an unfinished put
    /// leaves only a temp, which `fsck` removes; a file without a valid record is damage, for
    /// scrub to report and repair.
    public func removeUnfinishedPut(_ key: String) throws -> Bool { false }
}


extension ReplicatedStorage {
    /// Every key under `prefix` that any usable replica holds, when one listing is cheaper than
    /// one existence check per key (S3); nil when not (the local store) or when it failed.
    public func existingKeys(prefix: String) -> Set<String>? { nil }

    /// Every object key, sorted.
    public func list() throws -> [String] { try list(prefix: "") }
}
