// BenchTool: helpers for `make bench` (bench/run.py) that need in-process timing or that build
// inputs the CLI cannot make. Not a product; prints one JSON object per command on stdout.
//
//   BenchTool kwp-openssl SECONDS CHUNK_BYTES    KWP wrap (BackupCrypto -> OpenSSL EVP
//                                                id-aes256-wrap-pad), one thread, CHUNK_BYTES
//                                                chunks, for at least SECONDS
//   BenchTool fill-catalog STORE_ROOT N           writes an N-entry catalog into an existing store
//                                                (as Tests/ObjectStoreTests/CatalogTests does)
//   BenchTool fill-hsm HSM_DIR KEYS MATERIAL_BYTES
//                                                replaces the contents of an existing simulated HSM
//                                                with 40 users, 2 policies and KEYS generic-secret
//                                                keys of MATERIAL_BYTES random bytes each
import BackupCrypto
import Foundation
import ObjectStore
import SimulatedHSM

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data(("BenchTool: " + message + "\n").utf8))
    exit(2)
}

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

func printJSON(_ object: [String: Any]) {
    let data = try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
    print(String(decoding: data, as: UTF8.self))
}

let args = Array(CommandLine.arguments.dropFirst())
guard let command = args.first else { fail("usage: BenchTool kwp-openssl|fill-catalog|fill-hsm ...") }

switch command {
case "kwp-openssl":
    guard args.count == 3, let seconds = Double(args[1]), let chunk = Int(args[2]), chunk > 0 else {
        fail("usage: BenchTool kwp-openssl SECONDS CHUNK_BYTES")
    }
    let key = try WrappingKey.random()
    let input = SecureRandom.bytes(count: chunk)
    var bytes = 0
    var sink: UInt8 = 0
    _ = try AESKeyWrap.wrapPadded(input, key: key) // warm up
    let t0 = now()
    var elapsed = 0.0
    repeat {
        let out = try AESKeyWrap.wrapPadded(input, key: key)
        sink ^= out[out.count - 1]
        bytes += chunk
        elapsed = now() - t0
    } while elapsed < seconds
    printJSON(["bytes": bytes, "seconds": elapsed, "mb_per_s": Double(bytes) / elapsed / 1e6,
               "chunk": chunk, "implementation": "OpenSSL EVP id-aes256-wrap-pad via BackupCrypto.AESKeyWrap.wrapPadded",
               "sink": Int(sink)])

case "fill-catalog":
    guard args.count == 3, let n = Int(args[2]), n > 0 else { fail("usage: BenchTool fill-catalog STORE_ROOT N") }
    let catalog = try BackupCatalog(store: try LocalObjectStore(root: args[1]))
    var snap = CatalogSnapshot()
    let base: UInt64 = 1_790_000_000_000
    for i in 0..<n {
        let id = String(format: "%032x", i)
        snap.entries[id] = BackupEntry(backupId: id, clusterId: "cluster-" + String(i % 100), hsmId: "hsm-" + String(i % 300),
                                       manufacturer: "acme", state: i % 10 == 0 ? .pendingDeletion : .ready,
                                       createdMillis: base + UInt64(i) * 1000, updatedMillis: base + UInt64(i) * 1000,
                                       size: 91_568, objectKey: BackupCatalog.archiveKey(id))
    }
    let t0 = now()
    try catalog.mutate { $0 = snap }
    printJSON(["entries": n, "write_seconds": now() - t0, "catalog": catalog.path])

case "fill-hsm":
    guard args.count == 4, let keys = Int(args[2]), let size = Int(args[3]), keys >= 0, (1...8192).contains(size) else {
        fail("usage: BenchTool fill-hsm HSM_DIR KEYS MATERIAL_BYTES")
    }
    let hsm = try SimulatedHSM.open(at: args[1])
    let base = try SimulatedHSM.makeContents(keys: 0, users: 40, seed: 42, options: .deterministic)
    let owners = base.users.filter { $0.role == .cryptoUser }.map(\.name)
    // HSMKey has no public memberwise initializer: decode one key from JSON, then vary copies
    // of it (no giant JSON document, so a 1 GiB payload fits in memory).
    let template = try JSONDecoder().decode(HSMKey.self, from: Data((
        "{\"handle\":65536,\"label\":\"secret-1\",\"type\":\"GENERIC_SECRET\",\"bits\":\(size * 8),"
        + "\"attributes\":{\"token\":true,\"sensitive\":true,\"extractable\":false,\"encrypt\":true,\"decrypt\":true,"
        + "\"wrap\":false,\"unwrap\":false,\"sign\":true,\"verify\":true,\"derive\":true},"
        + "\"owner\":\"x\",\"sharedWith\":[],\"material\":\"00\"}").utf8))
    let hexDigits = Array("0123456789abcdef".utf8)
    var keyList: [HSMKey] = []
    keyList.reserveCapacity(keys)
    for i in 0..<keys {
        let material = SecureRandom.bytes(count: size)
        var hex = [UInt8](repeating: 0, count: size * 2)
        for (j, b) in material.enumerated() {
            hex[2 * j] = hexDigits[Int(b >> 4)]
            hex[2 * j + 1] = hexDigits[Int(b & 15)]
        }
        var k = template
        k.handle = UInt64(0x10000 + i)
        k.label = "secret-\(i + 1)"
        k.attributes.extractable = i % 4 == 0
        k.owner = owners[i % owners.count]
        k.material = String(decoding: hex, as: UTF8.self)
        keyList.append(k)
    }
    let t0 = now()
    try hsm.replaceContents(HSMContents(policies: base.policies, users: base.users, keys: keyList))
    let stateBytes = (try? FileManager.default.attributesOfItem(atPath: args[1] + "/" + SimulatedHSM.contentsFile)[.size] as? Int) ?? -1
    printJSON(["keys": keys, "material_bytes": size, "contents_state_bytes": stateBytes, "write_seconds": now() - t0])

default:
    fail("unknown command \(command)")
}
