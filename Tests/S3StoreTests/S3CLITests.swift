// The CLI on an S3 store (moto): `store init --s3`, then every command works on it unchanged;
// the AWS CLI sees and fetches the stored archives; a multipart put killed with SIGKILL leaves no
// visible object and `store fsck` aborts its upload; wrong credentials exit 77.
import Foundation
import ObjectStore
@testable import S3Store
import XCTest

final class S3CLITests: XCTestCase {
    /// Runs the built hsmbackup with the moto environment and this home.
    struct Home {
        let path: String
        let env: [String: String]

        @discardableResult
        func run(_ args: [String], extra: [String: String] = [:]) throws -> (out: String, err: String, code: Int32) {
            let p = Process()
            p.executableURL = S3CLITests.binary
            p.arguments = args
            var e = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("AWS_") }
            for (k, v) in env.merging(extra, uniquingKeysWith: { $1 }) { e[k] = v }
            e["HSMBACKUP_HOME"] = path
            p.environment = e
            let out = FileManager.default.temporaryDirectory.appendingPathComponent("s3cli-\(UUID().uuidString)")
            let err = FileManager.default.temporaryDirectory.appendingPathComponent("s3cli-\(UUID().uuidString)")
            FileManager.default.createFile(atPath: out.path, contents: nil)
            FileManager.default.createFile(atPath: err.path, contents: nil)
            defer { try? FileManager.default.removeItem(at: out); try? FileManager.default.removeItem(at: err) }
            p.standardOutput = try FileHandle(forWritingTo: out)
            p.standardError = try FileHandle(forWritingTo: err)
            p.standardInput = FileHandle.nullDevice
            try p.run()
            p.waitUntilExit()
            return (String(decoding: try Data(contentsOf: out), as: UTF8.self), String(decoding: try Data(contentsOf: err), as: UTF8.self),
                    p.terminationStatus)
        }

        @discardableResult
        func expect(_ code: Int32, _ args: [String], extra: [String: String] = [:], file: StaticString = #filePath, line: UInt = #line) throws -> String {
            let r = try run(args, extra: extra)
            XCTAssertEqual(r.code, code, "$ hsmbackup \(args.joined(separator: " "))\n\(r.out)[stderr] \(r.err)", file: file, line: line)
            return r.out
        }
    }

    static var binary: URL {
        let bundle = Bundle(for: S3CLITests.self).bundleURL
        for dir in [bundle, bundle.deletingLastPathComponent()] {
            let c = dir.appendingPathComponent("hsmbackup")
            if FileManager.default.isExecutableFile(atPath: c.path) { return c }
        }
        return bundle.deletingLastPathComponent().appendingPathComponent("hsmbackup")
    }

    func makeHome(_ moto: Moto, buckets: [String]) throws -> Home {
        let root = NSTemporaryDirectory() + "hsmb-s3cli-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: root) }
        let h = Home(path: root, env: moto.cliEnvironment)
        var args = ["store", "init", "--endpoint", moto.endpoint, "--part-size-mib", "7"]
        for b in buckets { args += ["--s3", "s3://\(b)/hsm/backups"] }
        let out = try h.expect(0, args)
        XCTAssertTrue(out.contains("created S3 store"), out)
        return h
    }

    func testCreateListVerifyRestoreScrubThroughS3AndTheAWSCLIFetchesTheArchive() throws {
        let moto = try Moto.require()
        let buckets = [Moto.bucketName("cli"), Moto.bucketName("cli")]
        let h = try makeHome(moto, buckets: buckets)
        let src = h.path + "/hsm-src", dst = h.path + "/hsm-dst"
        try h.expect(0, ["manufacturer", "create", "acme"])
        try h.expect(0, ["operator", "init"])
        try h.expect(0, ["kms", "create-key", "k1"])
        try h.expect(0, ["hsm", "create", src, "--manufacturer", "acme", "--model", "M1", "--serial", "S1", "--cluster", "c1"])
        try h.expect(0, ["hsm", "populate", src, "--keys", "12", "--users", "3", "--seed", "7"])
        try h.expect(0, ["hsm", "create", dst, "--manufacturer", "acme", "--model", "M1", "--serial", "S2", "--cluster", "c1"])

        let created = try h.expect(0, ["backup", "create", "--hsm", src, "--kms-key", "k1", "--json"])
        let id = try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(created.utf8)) as? [String: Any])?["backupId"] as? String)
        XCTAssertTrue(try h.expect(0, ["backup", "list"]).contains(id))
        XCTAssertTrue(try h.expect(0, ["verify", id, "--level", "envelope"]).contains("at level envelope"))
        try h.expect(0, ["restore", id, "--hsm", dst])
        XCTAssertTrue(try h.expect(0, ["store", "scrub"]).contains("corrupt 0, missing 0"))
        try h.expect(0, ["store", "fsck"])
        let stat = try h.expect(0, ["store", "stat"])
        XCTAssertTrue(stat.contains("s3://\(buckets[0])/hsm/backups"), stat)

        // The AWS CLI (from the harness's venv) lists and fetches the archive; the bytes are the archive's.
        guard !moto.venv.isEmpty else { return XCTFail("HSMBACKUP_TEST_AWS_VENV is not set") }
        let ours = h.path + "/ours.bin", theirs = h.path + "/theirs.bin"
        try h.expect(0, ["store", "get", "backups/\(id)/archive", "--output", ours])
        let aws = Home(path: h.path, env: moto.cliEnvironment.merging(["AWS_ENDPOINT_URL": moto.endpoint]) { $1 })
        let ls = try runTool(moto.venv + "/bin/aws", ["s3", "ls", "s3://\(buckets[1])/hsm/backups/backups/\(id)/"], env: aws.env)
        XCTAssertEqual(ls.code, 0, ls.err)
        XCTAssertTrue(ls.out.contains("archive"), ls.out)
        let cp = try runTool(moto.venv + "/bin/aws", ["s3", "cp", "s3://\(buckets[1])/hsm/backups/backups/\(id)/archive", theirs], env: aws.env)
        XCTAssertEqual(cp.code, 0, cp.err)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: theirs)), try Data(contentsOf: URL(fileURLWithPath: ours)))
        // And the file the AWS CLI fetched verifies as an archive.
        try h.expect(0, ["verify", theirs, "--level", "envelope"])
    }

    /// `verify --all` on an S3 store (issue 17): several jobs share the store's transport; an
    /// archive gone from every bucket fails, the others pass, and --jobs 1 and 3 agree.
    func testVerifyAllOnAnS3StoreWithSeveralJobs() throws {
        let moto = try Moto.require()
        let h = try makeHome(moto, buckets: [Moto.bucketName("all"), Moto.bucketName("all")])
        let src = h.path + "/hsm-src"
        try h.expect(0, ["manufacturer", "create", "acme"])
        try h.expect(0, ["operator", "init"])
        try h.expect(0, ["kms", "create-key", "k1"])
        try h.expect(0, ["hsm", "create", src, "--manufacturer", "acme", "--model", "M1", "--serial", "S1", "--cluster", "c1"])
        try h.expect(0, ["hsm", "populate", src, "--keys", "8", "--users", "2", "--seed", "5"])
        var ids: [String] = []
        for _ in 0..<4 {
            let out = try h.expect(0, ["backup", "create", "--hsm", src, "--kms-key", "k1", "--json"])
            ids.append(try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])?["backupId"] as? String))
        }
        let store = try StoreLocator.openS3(root: h.path + "/store", transport: moto.transport())
        _ = try store.delete("backups/\(ids[2])/archive")
        var seen: [[String]] = []
        for jobs in ["1", "3"] {
            let r = try h.run(["verify", "--all", "--level", "full", "--hsm", src, "--jobs", jobs, "--json"])
            XCTAssertEqual(r.code, 65, r.out + r.err)
            let doc = try JSONSerialization.jsonObject(with: Data(r.out.utf8)) as? [String: Any]
            let archives = try XCTUnwrap(doc?["archives"] as? [[String: Any]], r.out)
            XCTAssertEqual(Set(archives.compactMap { $0["backupId"] as? String }), Set(ids), r.out)
            for a in archives {
                XCTAssertEqual(a["result"] as? String, a["backupId"] as? String == ids[2] ? "failed" : "passed", "\(a)")
            }
            seen.append(archives.map { "\($0["backupId"] ?? "") \($0["result"] ?? "") \($0["findings"] ?? "")" })
        }
        XCTAssertEqual(seen[0], seen[1])
    }

    func testWrongCredentialsExit77WithTheServicesCode() throws {
        let moto = try Moto.require()
        let h = try makeHome(moto, buckets: [Moto.bucketName("cred")])
        let r = try h.run(["backup", "list"], extra: ["AWS_SECRET_ACCESS_KEY": "not-the-secret-0000000000000000000000000"])
        XCTAssertEqual(r.code, 77, r.err)
        XCTAssertTrue(r.err.contains("SignatureDoesNotMatch"), r.err)
        XCTAssertFalse(r.err.contains("not-the-secret"), "a secret in a message: \(r.err)")
        let unknown = try h.run(["store", "stat"], extra: ["AWS_ACCESS_KEY_ID": "AKIANOSUCHKEY0000000"])
        XCTAssertEqual(unknown.code, 77, unknown.err)
    }

    func testAMultipartPutKilledMidWayLeavesNoObjectAndFsckAbortsItsUpload() throws {
        let moto = try Moto.require()
        let h = try makeHome(moto, buckets: [Moto.bucketName("kill"), Moto.bucketName("kill")])
        let file = h.path + "/big.bin"
        FileManager.default.createFile(atPath: file, contents: Data(pattern(60 << 20, seed: 70)))
        let store = try StoreLocator.openS3(root: h.path + "/store", transport: moto.transport())

        let p = Process()
        p.executableURL = Self.binary
        p.arguments = ["store", "put", "misc/big", file]
        var env = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("AWS_") }
        for (k, v) in moto.cliEnvironment { env[k] = v }
        env["HSMBACKUP_HOME"] = h.path
        p.environment = env
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        // Wait (bounded by the number of looks, not by time) until an upload has a part in it.
        var started = false
        for _ in 0..<2000 where p.isRunning {
            if let u = try? store.listUploads(0), let first = u.first,
               let parts = try? store.send(0, "GET", String(first.key.dropFirst(store.configuration.replicas[0].location.keyPrefix.count)),
                                           query: [("uploadId", first.uploadId)]),
               XMLScan(parts.body).blocks("Part").count >= 1 {
                started = true
                break
            }
            usleep(20_000)
        }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        XCTAssertTrue(started, "the put ended before an upload was seen (exit \(p.terminationStatus))")
        XCTAssertEqual(p.terminationReason, .uncaughtSignal)

        // Nothing visible: no object, no record, not listed.
        try h.expect(66, ["store", "stat", "misc/big"])
        XCTAssertEqual(try store.list(prefix: "misc/"), [])
        XCTAssertFalse(store.anyReplicaHolds("misc/big"))
        XCTAssertGreaterThan(try store.listUploads(0).count + store.listUploads(1).count, 0)
        // fsck aborts uploads older than the stale age (moto reports every upload as initiated on
        // 2010-11-10, so the default age of a day cannot be told from 0 here; 0 says it outright).
        let out = try h.expect(0, ["store", "fsck", "--stale-upload-seconds", "0"])
        XCTAssertTrue(out.contains("multipart upload"), out)
        XCTAssertEqual(try store.listUploads(0).count, 0)
        XCTAssertEqual(try store.listUploads(1).count, 0)
        // The key is free: the same put now succeeds.
        try h.expect(0, ["store", "put", "misc/big", file])
        XCTAssertEqual(try store.stat("misc/big").size, 60 << 20)
    }

    func runTool(_ path: String, _ args: [String], env: [String: String]) throws -> (out: String, err: String, code: Int32) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = args
        var e = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("AWS_") }
        for (k, v) in env { e[k] = v }
        p.environment = e
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let r = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (String(decoding: o, as: UTF8.self), String(decoding: r, as: UTF8.self), p.terminationStatus)
    }
}
