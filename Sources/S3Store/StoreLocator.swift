// Opens the store a home is configured for (spec/FORMAT.md 5.11): `store.json` (an S3 store)
// or `store.conf` (the local replicated directory, spec 5.1). Every command opens its store here
// and then works on the `ReplicatedStorage` protocol alone.
#if canImport(Glibc)
import Glibc
#endif
import Durability
import Foundation
import ObjectStore

public enum StoreLocator {
    /// Makes the transport an S3 store uses; set by the program (AWSCore's by default).
    nonisolated(unsafe) public static var makeTransport: () throws -> S3Transport = { try AWSCoreS3Transport() }

    /// Whether `root` holds an S3 store configuration.
    public static func isS3(root: String) -> Bool { access(root + "/" + S3StoreConfiguration.fileName, F_OK) == 0 }

    public static func open(root: String, clock: StoreClock = ObjectStore.SystemClock(), removeStaleTemps: Bool = true) throws -> any ReplicatedStorage {
        if isS3(root: root) { return try openS3(root: root, clock: clock) }
        return try LocalObjectStore(root: root, clock: clock, removeStaleTemps: removeStaleTemps)
    }

    public static func openS3(root: String, clock: StoreClock = ObjectStore.SystemClock(), transport: S3Transport? = nil) throws -> S3ObjectStore {
        let path = root + "/" + S3StoreConfiguration.fileName
        let bytes: [UInt8]
        do { bytes = try AtomicFile.read(path, limit: 1 << 20) } catch let e as FileError {
            throw StoreError(e.code == .notFound ? .notFound : .ioError, path: path, "no store configuration: \(e.reason)")
        }
        let config = try S3StoreConfiguration.parse(bytes, path: path)
        let store = S3ObjectStore(configuration: config, configurationPath: path, localDirectory: root,
                                  transport: try transport ?? makeTransport(), clock: clock)
        try store.checkAccess()
        return store
    }

    /// `store init --s3 ...`: initializes every replica location, then writes the configuration
    /// (last: a store exists only once it is whole). Refuses a home that already has a store.
    @discardableResult
    public static func createS3(root: String, configuration: S3StoreConfiguration, transport: S3Transport? = nil,
                                clock: StoreClock = ObjectStore.SystemClock()) throws -> S3ObjectStore {
        let path = root + "/" + S3StoreConfiguration.fileName
        guard access(path, F_OK) != 0, access(root + "/" + StoreConfig.fileName, F_OK) != 0 else {
            throw StoreError(.alreadyInitialized, path: root, "a store already exists here")
        }
        let t = try transport ?? makeTransport()
        // Written inside initialize: a configuration that cannot be written takes the markers back.
        try S3ObjectStore.initialize(configuration, transport: t) {
            do {
                try AtomicFile.makeDirectory(root)
                try AtomicFile.write(try configuration.encode(), to: path)
            } catch let e as FileError {
                throw StoreError(.ioError, path: e.path, "\(e.operation): \(e.reason)")
            }
        }
        return try openS3(root: root, clock: clock, transport: t)
    }
}
