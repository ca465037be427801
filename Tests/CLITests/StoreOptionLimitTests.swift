// Store options with a bound (review findings 5 and 9): `store fsck --stale-upload-seconds`
// beyond ten years would overflow the age in milliseconds and trap; `store init
// --part-size-mib` below 7 cannot reach the largest object in S3's 10,000 parts. Both are usage
// errors (64) naming the option, refused before any store is opened or any request is sent.
import Foundation
import XCTest

final class StoreOptionLimitTests: XCTestCase {
    /// A home whose store is an S3 store on an endpoint nothing listens on, with dummy
    /// credentials: enough for the command to open it, as the fsck of a real one would.
    func s3Home() throws -> String {
        let home = FileManager.default.temporaryDirectory.appendingPathComponent("hsmb-limits-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: home + "/store", withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: home) }
        let json = """
        {"format": "hsmbackup-store", "version": 1, "backend": "s3", "storeId": "\(String(repeating: "5a", count: 16))",
         "writeQuorum": 1, "replicas": [{"url": "s3://hsmb-nowhere/p", "endpoint": "http://127.0.0.1:9", "region": "us-east-1"}],
         "partSize": 8388608, "singlePutLimit": 8388608}
        """
        try Data(json.utf8).write(to: URL(fileURLWithPath: home + "/store/store.json"))
        return home
    }

    let awsEnvironment = ["AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "not-a-secret-0000000000000000000000000000",
                          "AWS_REGION": "us-east-1", "AWS_CONFIG_FILE": "/nonexistent", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"]

    func testAStaleUploadAgeBeyondTenYearsIsAUsageErrorNotATrap() throws {
        let home = try s3Home()
        // 18446744073709552 * 1000 > UInt64.max.
        for seconds in ["18446744073709552", "315360001"] {
            let r = try CLI.run(["store", "fsck", "--stale-upload-seconds", seconds], home: home, environment: awsEnvironment)
            XCTAssertEqual(r.exitCode, 64, r.description)
            XCTAssertTrue(r.stderr.contains("--stale-upload-seconds \(seconds)"), r.description)
            XCTAssertTrue(r.stderr.contains("at most 315360000"), r.description)
        }
        // Ten years itself is taken (on a local store, which has no uploads to age).
        let local = FileManager.default.temporaryDirectory.appendingPathComponent("hsmb-limits-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: local, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: local) }
        XCTAssertEqual(try CLI.run(["store", "init"], home: local).exitCode, 0)
        let ok = try CLI.run(["store", "fsck", "--stale-upload-seconds", "315360000"], home: local)
        XCTAssertEqual(ok.exitCode, 0, ok.description)
    }

    func testAPartSizeBelowSevenMiBIsAUsageErrorNamingTheOption() throws {
        let home = FileManager.default.temporaryDirectory.appendingPathComponent("hsmb-limits-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(atPath: home) }
        for mib in ["5", "6", "65"] {
            let r = try CLI.run(["store", "init", "--s3", "s3://hsmb-nowhere/p", "--endpoint", "http://127.0.0.1:9", "--part-size-mib", mib],
                                home: home, environment: awsEnvironment)
            XCTAssertEqual(r.exitCode, 64, r.description)
            XCTAssertTrue(r.stderr.contains("--part-size-mib \(mib): give 7...64"), r.description)
            XCTAssertTrue(r.stderr.contains("64 GiB"), r.description)
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: home + "/store/store.json"))
    }
}
