import Foundation
import XCTest

/// One home directory with the embedded defaults set up through the CLI, as a user would:
/// manufacturers `acme` and `other`, the operator key, KMS keys `k1` and `k2`, a 3-replica store,
/// a populated source HSM of `acme`, an empty target HSM of `acme` and one of `other`.
/// Test classes make one in `class setUp` and share it; each test that changes an HSM makes its
/// own target with `makeHSM`.
final class CLIWorld {
    let root: String
    let home: String
    let sourceHSM: String
    let targetHSM: String
    let foreignHSM: String
    private var serial = 0

    /// Source contents: small, so the whole CLI test run stays quick.
    static let keyCount = 24
    static let userCount = 5

    init() throws {
        root = FileManager.default.temporaryDirectory.appendingPathComponent("hsmb-cli-\(UUID().uuidString)").path
        home = root + "/home"
        sourceHSM = root + "/hsm-source"
        targetHSM = root + "/hsm-target"
        foreignHSM = root + "/hsm-foreign"
        try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true)
        try expect(0, ["manufacturer", "create", "acme"])
        try expect(0, ["manufacturer", "create", "other"])
        try expect(0, ["operator", "init"])
        try expect(0, ["kms", "create-key", "k1"])
        try expect(0, ["kms", "create-key", "k2"])
        try expect(0, ["store", "init"])
        try expect(0, ["hsm", "create", sourceHSM, "--manufacturer", "acme", "--model", "M1", "--serial", "S1", "--cluster", "c1"])
        try expect(0, ["hsm", "populate", sourceHSM, "--keys", "\(Self.keyCount)", "--users", "\(Self.userCount)", "--seed", "7"])
        try expect(0, ["hsm", "create", targetHSM, "--manufacturer", "acme", "--model", "M1", "--serial", "S2", "--cluster", "c1"])
        try expect(0, ["hsm", "create", foreignHSM, "--manufacturer", "other", "--model", "X", "--serial", "X1", "--cluster", "c9"])
    }

    func tearDown() { try? FileManager.default.removeItem(atPath: root) }

    /// Runs `hsmbackup ARGS` in this world's home.
    @discardableResult
    func run(_ args: [String], stdin: Data? = nil, environment: [String: String] = [:], cwd: String? = nil,
             stdoutPath: String? = nil) throws -> CLIRun {
        try CLI.run(args, home: home, stdin: stdin, environment: environment, cwd: cwd, stdoutPath: stdoutPath)
    }

    /// Runs and fails the test (naming the transcript) unless the exit code is `code`.
    @discardableResult
    func expect(_ code: Int32, _ args: [String], file: StaticString = #filePath, line: UInt = #line) throws -> CLIRun {
        let r = try run(args)
        XCTAssertEqual(r.exitCode, code, r.description, file: file, line: line)
        return r
    }

    /// A fresh path under this world's scratch directory.
    func path(_ name: String) -> String { root + "/" + name + "-" + UUID().uuidString.prefix(8) }

    /// A new HSM of `manufacturer` (empty, or populated with `keys` keys).
    func makeHSM(manufacturer: String = "acme", keys: Int? = nil, seed: Int = 99, cluster: String = "c1") throws -> String {
        serial += 1
        let dir = path("hsm-\(manufacturer)")
        try expect(0, ["hsm", "create", dir, "--manufacturer", manufacturer, "--model", "M1", "--serial", "T\(serial)-\(UUID().uuidString.prefix(6))", "--cluster", cluster])
        if let keys { try expect(0, ["hsm", "populate", dir, "--keys", "\(keys)", "--users", "2", "--seed", "\(seed)", "--no-rsa"]) }
        return dir
    }

    /// `backup create` into the store; returns the new backup id.
    func createStoredBackup(_ extra: [String] = [], hsm: String? = nil) throws -> String {
        let r = try expect(0, ["backup", "create", "--hsm", hsm ?? sourceHSM, "--kms-key", "k1", "--json"] + extra)
        return try XCTUnwrap(JSON.object(r.stdout)["backupId"] as? String, r.description)
    }

    /// `backup create --out FILE`; returns the file's path.
    func createArchiveFile(_ extra: [String] = [], hsm: String? = nil) throws -> String {
        let out = path("archive") + ".hsmb"
        try expect(0, ["backup", "create", "--hsm", hsm ?? sourceHSM, "--kms-key", "k1", "--out", out] + extra)
        return out
    }

    /// The file holding one replica of a store object (`<store>/replica-<i>/objects/<fan>/<key with ~>`).
    func replicaFile(replica: Int, key: String) throws -> String {
        let objects = home + "/store/replica-\(replica)/objects"
        let name = key.replacingOccurrences(of: "/", with: "~")
        for fan in try FileManager.default.contentsOfDirectory(atPath: objects) {
            let candidate = objects + "/" + fan + "/" + name
            if FileManager.default.fileExists(atPath: candidate) { return candidate }
        }
        throw CLIWorldError("no replica \(replica) file for \(key) under \(objects)")
    }

    /// The catalog entry of a backup (`backup list --json`).
    func entry(_ id: String) throws -> [String: Any] {
        let list = try JSON.array(try expect(0, ["backup", "list", "--json"]).stdout)
        return try XCTUnwrap(list.first { $0["backupId"] as? String == id }, "no \(id) in backup list")
    }

    /// `hsm show --json`: the contents that a restore must reproduce (users and keys, no identity).
    func contents(_ hsm: String) throws -> (users: [String], keys: [String]) {
        let j = try JSON.object(try expect(0, ["hsm", "show", hsm, "--json"]).stdout)
        let users = (j["users"] as? [[String: Any]] ?? []).map { "\($0["name"] ?? "")/\($0["role"] ?? "")" }
        let keys = (j["keys"] as? [[String: Any]] ?? []).map {
            "\($0["handle"] ?? "")/\($0["label"] ?? "")/\($0["type"] ?? "")/\($0["bits"] ?? "")/\($0["owner"] ?? "")"
        }
        return (users, keys)
    }
}

struct CLIWorldError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

enum JSON {
    static func any(_ s: String) throws -> Any { try JSONSerialization.jsonObject(with: Data(s.utf8)) }
    static func object(_ s: String) throws -> [String: Any] {
        guard let o = try any(s) as? [String: Any] else { throw CLIWorldError("not a JSON object: \(s)") }
        return o
    }
    static func array(_ s: String) throws -> [[String: Any]] {
        guard let a = try any(s) as? [[String: Any]] else { throw CLIWorldError("not a JSON array of objects: \(s)") }
        return a
    }
}

enum Files {
    /// Every regular file under `dir` (relative path → bytes): to show that a directory is
    /// byte-identical before and after a command.
    static func snapshot(_ dir: String) throws -> [String: Data] {
        var out: [String: Data] = [:]
        guard let e = FileManager.default.enumerator(atPath: dir) else { throw CLIWorldError("cannot list \(dir)") }
        while let rel = e.nextObject() as? String {
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: dir + "/" + rel, isDirectory: &isDir), !isDir.boolValue {
                out[rel] = try Data(contentsOf: URL(fileURLWithPath: dir + "/" + rel))
            }
        }
        return out
    }

    static func read(_ path: String) throws -> [UInt8] { [UInt8](try Data(contentsOf: URL(fileURLWithPath: path))) }

    static func write(_ bytes: [UInt8], _ path: String) throws { try Data(bytes).write(to: URL(fileURLWithPath: path)) }

    /// A copy of `path` with one byte inverted at `offset`.
    static func flipped(_ path: String, at offset: Int, into out: String) throws {
        var b = try read(path)
        b[offset] ^= 0xff
        try write(b, out)
    }

    static func flipInPlace(_ path: String, at offset: Int) throws {
        var b = try read(path)
        b[offset] ^= 0xff
        try write(b, path)
    }

    static func exists(_ path: String) -> Bool { FileManager.default.fileExists(atPath: path) }

    static func size(_ path: String) throws -> Int {
        (try FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.intValue ?? -1
    }

    /// Replaces every occurrence of `old` by `new` (same length) in `bytes`.
    static func replaceAll(_ bytes: inout [UInt8], _ old: [UInt8], _ new: [UInt8]) {
        precondition(old.count == new.count)
        var i = 0
        while i + old.count <= bytes.count {
            if Array(bytes[i..<i + old.count]) == old {
                bytes.replaceSubrange(i..<i + old.count, with: new)
                i += old.count
            } else {
                i += 1
            }
        }
    }

    /// Names in `dir` (temps included).
    static func list(_ dir: String) throws -> [String] { try FileManager.default.contentsOfDirectory(atPath: dir).sorted() }
}

/// A test class whose tests share one `CLIWorld` (a home with keys, a store and HSMs), made once
/// per class before its first test and removed after its last.
class CLIWorldTestCase: XCTestCase {
    nonisolated(unsafe) private static var worlds: [ObjectIdentifier: CLIWorld] = [:]
    class var world: CLIWorld { worlds[ObjectIdentifier(self)]! }
    var w: CLIWorld { Self.world }

    override class func setUp() {
        super.setUp()
        worlds[ObjectIdentifier(self)] = try! CLIWorld()
    }

    override class func tearDown() {
        worlds.removeValue(forKey: ObjectIdentifier(self))?.tearDown()
        super.tearDown()
    }
}
