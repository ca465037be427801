import Foundation
import XCTest
@testable import ObjectStore

/// Runs the built `hsmbackup store ...` and checks output, exit codes and that no partial output
/// file survives a failure.
final class StoreCLITests: XCTestCase {
    static let binary: String = {
        let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let candidates = [
            URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("hsmbackup").path,
            packageRoot.appendingPathComponent(".build/debug/hsmbackup").path,
        ]
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) } ?? candidates.last!
    }()

    struct Result { let status: Int32; let stdout: String; let stderr: String }

    func cli(_ home: String, _ args: String...) throws -> Result {
        XCTAssertTrue(FileManager.default.isExecutableFile(atPath: Self.binary), "build hsmbackup first: \(Self.binary)")
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Self.binary)
        p.arguments = ["--home", home] + args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return Result(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self))
    }

    func testStoreCommands() throws {
        let s = Scratch()
        let home = s.path + "/home"
        XCTAssertEqual(try cli(home, "store", "stat").status, 66, "no store yet")
        XCTAssertEqual(try cli(home, "store", "init", "--replicas", "3", "--quorum", "4").status, 64)
        XCTAssertEqual(try cli(home, "store", "init", "--json").status, 0)
        XCTAssertEqual(try cli(home, "store", "init").status, 64, "already initialized")
        let input = s.path + "/in.bin"
        let data = pattern(1_500_000, seed: 21)
        _ = FileManager.default.createFile(atPath: input, contents: Data(data))
        let put = try cli(home, "store", "put", "misc/x/archive", input, "--json")
        XCTAssertEqual(put.status, 0, put.stderr)
        let report = try JSONSerialization.jsonObject(with: Data(put.stdout.utf8)) as! [String: Any]
        XCTAssertEqual(report["written"] as? [Int], [0, 1, 2])
        let stat = try JSONSerialization.jsonObject(with: Data(try cli(home, "store", "stat", "misc/x/archive", "--json").stdout.utf8)) as! [String: Any]
        XCTAssertEqual(stat["size"] as? Int, data.count)
        XCTAssertEqual(try cli(home, "store", "ls", "--objects").stdout, "misc/x/archive\n")

        // Damage every replica of chunk 1: scrub exits 65, get fails 65 and leaves no output file.
        let store = try LocalObjectStore(root: home + "/store")
        for i in 0..<3 { flipByte(store.objectPath(i, "misc/x/archive"), at: 1_200_000) }
        XCTAssertEqual(try cli(home, "store", "scrub").status, 65)
        let out = s.path + "/out.bin"
        let get = try cli(home, "store", "get", "misc/x/archive", "-o", out)
        XCTAssertEqual(get.status, 65)
        XCTAssertTrue(get.stderr.contains("unrecoverable"))
        XCTAssertFalse(FileManager.default.fileExists(atPath: out))
        XCTAssertEqual(tempFiles(under: s.path).filter { $0.contains("out.bin") }, [])
        XCTAssertEqual(try cli(home, "store", "get", "missing", "-o", out).status, 66)
        XCTAssertEqual(try cli(home, "store", "put", "bad key", input).status, 64)

        // One damaged replica: scrub --repair heals it and exits 0; get then writes the whole file.
        _ = try cli(home, "store", "put", "y", input)
        flipByte(store.objectPath(1, "y"), at: 10)
        let scrub = try cli(home, "store", "scrub", "--repair", "--json")
        XCTAssertEqual(scrub.status, 65, "x is still unrecoverable")
        let sr = try JSONSerialization.jsonObject(with: Data(scrub.stdout.utf8)) as! [String: Any]
        XCTAssertEqual(sr["repaired"] as? Int, 1)
        XCTAssertEqual(sr["unrecoverable"] as? Int, 1)
        XCTAssertEqual(try cli(home, "store", "get", "y", "-o", out).status, 0)
        XCTAssertEqual(try [UInt8](Data(contentsOf: URL(fileURLWithPath: out))), data)

        // fsck removes a stale temp; reindex and ls work on the catalog.
        let stale = store.objectDir(0, "y") + "/.y.tmp-0badc0de"
        _ = FileManager.default.createFile(atPath: stale, contents: Data([1]))
        let fsck = try JSONSerialization.jsonObject(with: Data(try cli(home, "store", "fsck", "--json").stdout.utf8)) as! [String: Any]
        XCTAssertEqual(fsck["tempsRemoved"] as? [String], [stale])
        let catalog = try BackupCatalog(store: store)
        _ = try catalog.add(NewBackup(backupId: "b1", clusterId: "c1", hsmId: "h", manufacturer: "sim"), archive: BytesSource([1]))
        try FileManager.default.removeItem(atPath: catalog.path)
        XCTAssertEqual(try cli(home, "store", "reindex").status, 0)
        let ls = try JSONSerialization.jsonObject(with: Data(try cli(home, "store", "ls", "--cluster", "c1", "--json").stdout.utf8)) as! [[String: Any]]
        XCTAssertEqual(ls.map { $0["backupId"] as? String }, ["b1"])
        XCTAssertEqual(ls.first?["state"] as? String, "READY")
        XCTAssertEqual(try cli(home, "store", "ls", "--state", "NOPE").status, 64)
    }
}
