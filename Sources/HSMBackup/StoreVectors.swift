import BackupCrypto
import ByteCoding
import Durability
import Envelope
import Foundation
import HSMArchive
import ObjectStore
import SimulatedHSM

/// spec/vectors/store (spec/FORMAT.md §5.10): a 3-replica store made through the library with a
/// fixed store id, a manual clock and the archive vectors' deterministic envelopes, and its
/// expected reading.
extension ArchiveVectors {
    public static let storeRootName = "root"

    public struct StoredObject: Codable, Sendable, Equatable {
        public let key: String
        public let size: UInt64
        public let sha256: String
        /// The record's creation time (ms since the epoch).
        public let created: UInt64
        /// The replica files that hold it, relative to the store root.
        public let files: [String]
    }

    public struct StoredBackup: Codable, Sendable, Equatable {
        public let backupId: String
        public let clusterId: String
        public let hsmId: String
        public let manufacturer: String
        public let state: String
        public let created: UInt64
        public let updated: UInt64
        public let size: UInt64
        public let generation: UInt64
        public let objectKey: String
        public let neverExpires: Bool
        public let deleteRequested: UInt64?
        public let tags: [String: String]
        /// Reading the archive the entry names, at level full: "ok" or the code it MUST fail with.
        public let expect: String
        /// Keys that open its archive.
        public let openWith: [WrappingKey]
        public let description: String
    }

    public struct StoredPolicy: Codable, Sendable, Equatable {
        public let clusterId: String
        public let days: Int
        public let generation: UInt64
    }

    public struct StoreExpectation: Codable, Sendable, Equatable {
        public let format: String
        public let spec: String
        public let root: String
        public let storeId: String
        public let writeQuorum: Int
        public let replicas: [String]
        public let clockMillis: UInt64
        public let backupKeys: SpecVectors.KeySet
        /// Catalog entries in backup-id order.
        public let backups: [StoredBackup]
        public let policies: [StoredPolicy]
        /// Every object in key order.
        public let objects: [StoredObject]
        public let catalogWriteCount: UInt64
        public let catalogSha256: String
    }

    /// Writes spec/vectors/store: `<directory>/root` (the store, rebuilt from nothing) and
    /// `expected.json`. Lock files and empty directories (created on demand) are removed, so the
    /// directory holds exactly what version control keeps.
    @discardableResult
    public static func generateStore(directory: String) throws -> [String] {
        let root = directory + "/" + storeRootName
        let fm = FileManager.default
        // Rebuilt from nothing; only ever removes a store (or an empty directory) there.
        if fm.fileExists(atPath: root) {
            guard try fm.fileExists(atPath: root + "/" + StoreConfig.fileName) || fm.contentsOfDirectory(atPath: root).isEmpty else {
                throw HSMBackupError(.invalidArgument, "\(root) exists and is not a store: not removing it")
            }
            try fm.removeItem(atPath: root)
        }
        try AtomicFile.makeDirectory(directory, mode: 0o755)
        let clock = ManualClock(millis: storeClockStart)
        let store = try LocalObjectStore.create(at: root, replicaCount: 3, clock: clock, storeId: storeId)
        let catalog = try BackupCatalog(store: store, clock: clock)
        let kms = try kmsKey(), rewrap = try rewrapKey()
        let kmsInfo = describe(kms, kmsKeyBytes), rewrapInfo = describe(rewrap, rewrapKeyBytes)
        var notes: [String: (expect: String, open: [WrappingKey], description: String)] = [:]

        func backup(_ name: String, keys: Int, seed: UInt64, hours: UInt64, hsmId: String, cluster: String,
                    tags: [String: String] = [:], neverExpires: Bool = false) throws -> (id: String, inner: [UInt8], archive: [UInt8]) {
            let contents = try SimulatedHSM.makeContents(keys: keys, users: 1, seed: seed, options: .deterministic)
            let created = SpecVectors.createdAt - 86_400 + hours * 3600
            let inner = try innerBlob(file: name, contents: contents, identity: identity(hsmId: hsmId, cluster: cluster), seed: seed,
                                      createdAt: created, chunkSize: 1024)
            let a = try archive(name: "store-" + name, inner: inner.blob, keys: [kms], signed: false, frameLength: 4096)
            let id = inner.info.backupId
            _ = try catalog.add(NewBackup(backupId: id, clusterId: cluster, hsmId: hsmId, manufacturer: SpecVectors.manufacturerId,
                                          tags: tags, neverExpires: neverExpires, createdMillis: created * 1000),
                                archive: BytesSource(a.bytes))
            clock.advance(millis: 60_000)
            return (id, inner.blob, a.bytes)
        }

        let b1 = try backup("b1", keys: 2, seed: 2001, hours: 1, hsmId: "hsm-example-1", cluster: "cluster-example",
                            tags: ["env": "prod", "owner": "vault-ops"], neverExpires: true)
        notes[b1.id] = ("ok", [kmsInfo], "READY, never-expires, two tags")
        let b2 = try backup("b2", keys: 3, seed: 2002, hours: 2, hsmId: "hsm-example-1", cluster: "cluster-example")
        // Rewrapped as BackupService.rewrap does it: a new message (its own data key and message
        // ID) under vectors-kms/v2, stored as archive-g<generation+1>; the old object deleted.
        let e2 = try catalog.entry(b2.id)
        let newKey = "backups/\(b2.id)/archive-g\(e2.generation + 1)"
        let rewrapped = try archive(name: "store-b2-rewrap", inner: b2.inner, keys: [rewrap], signed: false, frameLength: 4096)
        let put = try store.put(newKey, bytes: rewrapped.bytes)
        _ = try catalog.update(b2.id) { e in
            e.objectKey = newKey
            e.size = put.info.size
        }
        _ = try store.delete(e2.objectKey)
        clock.advance(millis: 60_000)
        notes[b2.id] = ("ok", [rewrapInfo], "READY, rewrapped under vectors-kms/v2 (object \(newKey))")
        let b3 = try backup("b3", keys: 1, seed: 2003, hours: 3, hsmId: "hsm-example-2", cluster: "cluster-two")
        _ = try catalog.delete(b3.id)
        clock.advance(millis: 60_000)
        notes[b3.id] = ("ok", [kmsInfo], "PENDING_DELETION (deleted at the clock's time; restorable for 7 days)")
        // Must fail: the archive stored under b4's id is b1's archive (a valid archive of another backup).
        let b4 = try backup("b4", keys: 2, seed: 2004, hours: 4, hsmId: "hsm-example-1", cluster: "cluster-example")
        let e4 = try catalog.entry(b4.id)
        _ = try store.delete(e4.objectKey)
        let swapped = try store.put(e4.objectKey, bytes: b1.archive)
        _ = try catalog.update(b4.id) { $0.size = swapped.info.size }
        clock.advance(millis: 60_000)
        notes[b4.id] = (HSMBackupError.Code.metadataMismatch.rawValue, [kmsInfo],
                        "READY, but its archive object holds backup \(b1.id)'s archive (a swap under the catalog)")
        try catalog.setRetention("cluster-example", days: 30)

        // Expected reading, from what the library reads back.
        let snapshot = try catalog.load()
        let backups = snapshot.entries.values.sorted { Array($0.backupId.utf8).lexicographicallyPrecedes(Array($1.backupId.utf8)) }.map { e in
            StoredBackup(backupId: e.backupId, clusterId: e.clusterId, hsmId: e.hsmId, manufacturer: e.manufacturer, state: e.state.rawValue,
                         created: e.createdMillis, updated: e.updatedMillis, size: e.size, generation: e.generation,
                         objectKey: e.objectKey, neverExpires: e.neverExpires, deleteRequested: e.deleteRequestedMillis, tags: e.tags,
                         expect: notes[e.backupId]?.expect ?? "ok", openWith: notes[e.backupId]?.open ?? [],
                         description: notes[e.backupId]?.description ?? "")
        }
        let policies = snapshot.policies.values.sorted { $0.clusterId < $1.clusterId }.map {
            StoredPolicy(clusterId: $0.clusterId, days: $0.days, generation: $0.generation)
        }
        var objects: [StoredObject] = []
        for key in try store.list().sorted(by: { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }) {
            let bytes = try store.getAll(key)
            let info = try store.stat(key)
            let fileName = key.replacingOccurrences(of: "/", with: "~")
            let fan = Hex.encode(sha256(Array(key.utf8)).prefix(1))
            let files = (0..<3).map { "replica-\($0)/objects/\(fan)/\(fileName)" }.filter { fm.fileExists(atPath: root + "/" + $0) }
            objects.append(StoredObject(key: key, size: UInt64(bytes.count), sha256: Hex.encode(sha256(bytes)),
                                        created: info.createdMillis, files: files))
        }
        let catalogBytes = try AtomicFile.read(catalog.path, limit: 1 << 20)
        let expected = StoreExpectation(
            format: "hsmbackup store vectors v1", spec: "spec/FORMAT.md section 5", root: storeRootName, storeId: Hex.encode(storeId),
            writeQuorum: store.config.writeQuorum, replicas: store.config.replicas, clockMillis: clock.nowMillis(),
            backupKeys: backupKeySet, backups: backups, policies: policies, objects: objects,
            catalogWriteCount: snapshot.writeCount, catalogSha256: Hex.encode(sha256(catalogBytes)))
        try AtomicFile.write(try prettyJSON(expected), to: directory + "/" + expectedFileName, mode: 0o644)

        // Drop what is made on demand (lock files, empty directories): git keeps neither.
        try pruneOnDemand(root)
        return try files(under: directory)
    }

    /// Removes lock files, then empty directories, depth first.
    static func pruneOnDemand(_ dir: String) throws {
        let fm = FileManager.default
        for name in try fm.contentsOfDirectory(atPath: dir) {
            let path = dir + "/" + name
            var isDir: ObjCBool = false
            guard fm.fileExists(atPath: path, isDirectory: &isDir) else { continue }
            if isDir.boolValue {
                try pruneOnDemand(path)
                if try fm.contentsOfDirectory(atPath: path).isEmpty { try fm.removeItem(atPath: path) }
            } else if name.hasSuffix(".lock") {
                try fm.removeItem(atPath: path)
            }
        }
    }

    /// Every regular file under `dir`, as paths relative to it, sorted.
    public static func files(under dir: String) throws -> [String] {
        guard let e = FileManager.default.enumerator(atPath: dir) else { return [] }
        var out: [String] = []
        while let rel = e.nextObject() as? String {
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: dir + "/" + rel, isDirectory: &isDir), !isDir.boolValue { out.append(rel) }
        }
        return out.sorted()
    }
}
