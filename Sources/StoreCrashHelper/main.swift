// A tiny child process for the ObjectStore tests: puts objects until killed, writes catalog
// entries concurrently with its siblings, and measures catalog listing. Not installed; tests only.
import Foundation
import ObjectStore

/// The same deterministic bytes the tests expect for object index `i`.
func pattern(_ count: Int, seed: UInt64) -> [UInt8] {
    var x = seed &* 0x9E37_79B9_7F4A_7C15 | 1
    return (0..<count).map { _ in
        x ^= x << 13; x ^= x >> 7; x ^= x << 17
        return UInt8(truncatingIfNeeded: x)
    }
}

/// The same bytes, generated while the store reads them, so a put spends its whole time inside
/// `put` (where the kill should land).
final class PatternSource: ObjectSource {
    private var x: UInt64
    private var left: Int
    init(_ count: Int, seed: UInt64) { x = seed &* 0x9E37_79B9_7F4A_7C15 | 1; left = count }
    func read(maxCount: Int) throws -> [UInt8] {
        let n = Swift.min(maxCount, left, 64 << 10)
        left -= n
        return (0..<n).map { _ in
            x ^= x << 13; x ^= x >> 7; x ^= x << 17
            return UInt8(truncatingIfNeeded: x)
        }
    }
}

/// Sizes cycle through small, one-chunk and multi-chunk objects.
func objectSize(_ i: Int) -> Int { [3_000, 200_000, 1_300_000, 70_000][i % 4] + i % 97 }

func say(_ s: String) {
    FileHandle.standardOutput.write(Data((s + "\n").utf8)) // unbuffered: a killed child loses nothing it said
}

let args = CommandLine.arguments
guard args.count >= 3 else {
    FileHandle.standardError.write(Data("usage: StoreCrashHelper put-loop|put-one|catalog-add|add-big|copy|init|tag|bench-catalog|bench-io ROOT ...\n".utf8))
    exit(64)
}
do {
    let root = args[2]
    switch args[1] {
    case "put-loop": // ROOT PREFIX [COUNT]: puts PREFIX0, PREFIX1 ... and says "done KEY" after each
        let store = try LocalObjectStore(root: root)
        let count = args.count > 4 ? Int(args[4])! : Int.max
        say("ready")
        var i = 0
        while i < count {
            let key = args[3] + String(i)
            _ = try store.put(key, from: PatternSource(objectSize(i), seed: UInt64(i)))
            say("done \(key)")
            i += 1
        }
    case "put-one": // ROOT KEY SEED: exits 0 when stored, 3 when the key already held an object
        let store = try LocalObjectStore(root: root)
        do {
            _ = try store.put(args[3], from: PatternSource(1_100_000, seed: UInt64(args[4])!))
        } catch let e as StoreError where e.code == .alreadyExists {
            exit(3)
        }
    case "catalog-add": // ROOT PREFIX COUNT: creates, puts and readies COUNT backups
        let catalog = try BackupCatalog(store: try LocalObjectStore(root: root))
        for i in 0..<Int(args[4])! {
            let (e, _) = try catalog.add(NewBackup(backupId: args[3] + String(i), clusterId: "cluster-\(i % 3)",
                                                   hsmId: "hsm-1", manufacturer: "sim"),
                                         archive: BytesSource(pattern(1000 + i, seed: UInt64(i))))
            say("added \(e.backupId)")
        }
    case "add-big": // ROOT PREFIX COUNT SIZE: like catalog-add with SIZE-byte archives (to be killed mid-way)
        let catalog = try BackupCatalog(store: try LocalObjectStore(root: root))
        say("ready")
        for i in 0..<Int(args[4])! {
            let (e, _) = try catalog.add(NewBackup(backupId: args[3] + String(i), clusterId: "cluster-\(i % 3)",
                                                   hsmId: "hsm-1", manufacturer: "sim"),
                                         archive: PatternSource(Int(args[5])!, seed: UInt64(i)))
            say("added \(e.backupId)")
        }
    case "copy": // SOURCE_ROOT BACKUP DEST_ROOT: copies the backup under its own id
        let source = try BackupCatalog(store: try LocalObjectStore(root: root))
        let destination = try BackupCatalog(store: try LocalObjectStore(root: args[4]))
        say("ready")
        _ = try source.copy(args[3], to: destination, newBackupId: args[3])
        say("copied")
    case "init": // ROOT: exits 0 when it made the store, 4 when one was there
        do { try LocalObjectStore.create(at: root) } catch let e as StoreError where e.code == .alreadyInitialized {
            exit(4)
        }
    case "tag": // ROOT BACKUP PREFIX COUNT: adds COUNT tags, one read-modify-write each
        let catalog = try BackupCatalog(store: try LocalObjectStore(root: root))
        for i in 0..<Int(args[5])! { try catalog.tag(args[3], [args[4] + String(i): "v"]) }
    case "bench-catalog": // ROOT N: writes a catalog of N entries and times loading and listing
        let store = try (try? LocalObjectStore(root: root)) ?? LocalObjectStore.create(at: root)
        let catalog = try BackupCatalog(store: store)
        let n = Int(args[3])!
        var s = CatalogSnapshot()
        for i in 0..<n {
            let id = "backup-" + String(i)
            s.entries[id] = BackupEntry(backupId: id, clusterId: "cluster-\(i % 100)", hsmId: "hsm-\(i % 7)", manufacturer: "sim",
                                        state: i % 10 == 0 ? .pendingDeletion : .ready,
                                        createdMillis: 1_767_225_600_000 + UInt64(i) * 60_000, updatedMillis: 1_767_225_600_000,
                                        size: 123_456, tags: ["env": "prod"], objectKey: BackupCatalog.archiveKey(id))
        }
        if args.count < 5 || args[4] != "reuse" { try catalog.mutate { $0 = s } }
        let tl = Date()
        let loaded = try catalog.load()
        let tl2 = Date()
        say("load: \(String(format: "%.0f", tl2.timeIntervalSince(tl) * 1000)) ms (\(loaded.entries.count))")
        let t0 = Date()
        let all = try catalog.list()
        let t1 = Date()
        let one = try catalog.list(CatalogQuery(clusterId: "cluster-7"))
        let t2 = Date()
        let pending = try catalog.list(CatalogQuery(states: [.pendingDeletion], createdFromMillis: 1_767_225_600_000 + 3_000_000))
        let t3 = Date()
        let ms = { (a: Date, b: Date) in String(format: "%.0f", b.timeIntervalSince(a) * 1000) }
        say("entries \(all.count) file \((try? FileManager.default.attributesOfItem(atPath: catalog.path)[.size] as? Int) ?? 0) bytes")
        say("list all: \(ms(t0, t1)) ms; by cluster (\(one.count)): \(ms(t1, t2)) ms; by state+time (\(pending.count)): \(ms(t2, t3)) ms")
    case "bench-io": // ROOT MB: times put, get and scrub of one MB-sized object
        let store = try (try? LocalObjectStore(root: root)) ?? LocalObjectStore.create(at: root)
        let mb = Int(args[3])!
        let chunk = pattern(1 << 20, seed: 1)
        let t0 = Date()
        let w = try store.makeWriter("bench-\(UInt64(Date().timeIntervalSince1970 * 1000))")
        for _ in 0..<mb { try w.write(chunk) }
        let key = (try w.commit()).info.key
        let t1 = Date()
        let r = try store.get(key)
        var n = 0
        while let p = try r.read() { n += p.count }
        let t2 = Date()
        let report = try store.scrub()
        let t3 = Date()
        let rate = { (a: Date, b: Date) in String(format: "%.0f MB/s", Double(mb) / b.timeIntervalSince(a)) }
        say("put \(mb) MiB x \(store.replicaPaths.count) replicas: \(rate(t0, t1)); get: \(rate(t1, t2)) (\(n) bytes); scrub \(report.objects) objects: \(rate(t2, t3))")
    default:
        exit(64)
    }
} catch {
    FileHandle.standardError.write(Data("StoreCrashHelper: \(error)\n".utf8))
    exit(1)
}
