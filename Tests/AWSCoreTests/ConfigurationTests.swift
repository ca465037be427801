import AWSCore
import BackupCrypto
import Foundation
import XCTest

final class ConfigurationTests: XCTestCase {
    var dir: String = ""

    override func setUpWithError() throws {
        dir = NSTemporaryDirectory() + "awscore-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir + "/.aws", withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(atPath: dir) }

    func write(_ path: String, _ text: String) throws { try text.write(toFile: path, atomically: true, encoding: .utf8) }

    func secret(_ c: AWSCredentials) -> String { c.secretAccessKey.bytes.withUnsafeBytes { String(decoding: $0, as: UTF8.self) } }

    func testEnvironmentCredentialsComeFirst() throws {
        try write(dir + "/.aws/credentials", "[default]\naws_access_key_id = FILEKEY\naws_secret_access_key = filesecret\n")
        let env = AWSEnvironment(variables: ["AWS_ACCESS_KEY_ID": "ENVKEY", "AWS_SECRET_ACCESS_KEY": "envsecret", "AWS_SESSION_TOKEN": "tok"], home: dir)
        let c = try AWSCredentialsResolver.resolve(env)
        XCTAssertEqual(c.accessKeyID, "ENVKEY")
        XCTAssertEqual(secret(c), "envsecret")
        XCTAssertEqual(c.sessionToken, "tok")
        XCTAssertFalse("\(c)".contains("envsecret"))
        XCTAssertFalse("\(c)".contains("tok\""))
        XCTAssertEqual("\(c.secretAccessKey)", "AWSSecretKey(redacted)")
    }

    func testProfilesInTheCredentialsAndConfigFiles() throws {
        try write(dir + "/.aws/credentials", """
        # comment
        [default]
        aws_access_key_id = DEFKEY
        aws_secret_access_key = defsecret

        [backup]
        aws_access_key_id=BKEY
        aws_secret_access_key=b/secret+with=signs
        aws_session_token = btoken\r
        """)
        try write(dir + "/.aws/config", """
        [default]
        region = eu-central-1
        [profile backup]
        region = us-west-2
        endpoint_url = http://127.0.0.1:4566
        [profile cfgonly]
        aws_access_key_id = CFGKEY
        aws_secret_access_key = cfgsecret
        s3 =
          addressing_style = path
        [profile sso]
        sso_session = corp
        """)
        var env = AWSEnvironment(variables: [:], home: dir)
        XCTAssertEqual(try AWSCredentialsResolver.resolve(env).accessKeyID, "DEFKEY")
        XCTAssertEqual(try AWSConfiguration.region(env), "eu-central-1")
        XCTAssertEqual(try AWSConfiguration.endpoint(service: "kms", region: "eu-central-1", env).url.absoluteString, "https://kms.eu-central-1.amazonaws.com")

        env = AWSEnvironment(variables: ["AWS_PROFILE": "backup"], home: dir)
        let c = try AWSCredentialsResolver.resolve(env)
        XCTAssertEqual(c.accessKeyID, "BKEY")
        XCTAssertEqual(secret(c), "b/secret+with=signs")
        XCTAssertEqual(c.sessionToken, "btoken")
        XCTAssertEqual(c.source, "profile backup in \(dir)/.aws/credentials")
        XCTAssertEqual(try AWSConfiguration.region(env), "us-west-2")
        let e = try AWSConfiguration.endpoint(service: "s3", region: "us-west-2", env)
        XCTAssertEqual(e.url.absoluteString, "http://127.0.0.1:4566")
        XCTAssertTrue(e.isCustom)

        env = AWSEnvironment(variables: ["AWS_PROFILE": "cfgonly"], home: dir)
        XCTAssertEqual(try AWSCredentialsResolver.resolve(env).accessKeyID, "CFGKEY")

        env = AWSEnvironment(variables: ["AWS_PROFILE": "sso"], home: dir)
        XCTAssertThrowsError(try AWSCredentialsResolver.resolve(env)) { e in
            XCTAssertTrue("\(e)".contains("sso_session, which hsmbackup does not support"), "\(e)")
        }
        env = AWSEnvironment(variables: ["AWS_PROFILE": "nobody"], home: dir)
        XCTAssertThrowsError(try AWSCredentialsResolver.resolve(env)) { e in
            XCTAssertEqual((e as? AWSError)?.kind, .credentials)
            XCTAssertEqual((e as? AWSError)?.category, .configuration)
        }
    }

    func testFileLocationsFromTheEnvironment() throws {
        try write(dir + "/creds", "[p]\naws_access_key_id = K\naws_secret_access_key = S\n")
        try write(dir + "/conf", "[profile p]\nregion = ap-south-1\n")
        let env = AWSEnvironment(variables: ["AWS_SHARED_CREDENTIALS_FILE": dir + "/creds", "AWS_CONFIG_FILE": dir + "/conf", "AWS_PROFILE": "p"], home: "/nonexistent")
        XCTAssertEqual(try AWSCredentialsResolver.resolve(env).accessKeyID, "K")
        XCTAssertEqual(try AWSConfiguration.region(env), "ap-south-1")
    }

    /// A credentials or config file that is a FIFO (no writer), a directory or a device is an
    /// error at once, never a wait: a scheduled run would otherwise hang holding its lock.
    func testACredentialsFileThatIsNotARegularFileIsRefusedWithoutWaiting() throws {
        XCTAssertEqual(mkfifo(dir + "/fifo", 0o600), 0)
        for (variable, path) in [("AWS_SHARED_CREDENTIALS_FILE", dir + "/fifo"), ("AWS_SHARED_CREDENTIALS_FILE", dir + "/.aws"),
                                 ("AWS_SHARED_CREDENTIALS_FILE", "/dev/zero"), ("AWS_CONFIG_FILE", dir + "/fifo")] {
            let env = AWSEnvironment(variables: [variable: path, "AWS_PROFILE": "p"], home: "/nonexistent")
            let started = Date()
            XCTAssertThrowsError(try { () throws -> Void in
                if variable == "AWS_CONFIG_FILE" { _ = try AWSConfiguration.region(env) } else { _ = try AWSCredentialsResolver.resolve(env) }
            }()) { e in
                XCTAssertTrue("\(e)".contains("not a regular file"), "\(variable)=\(path): \(e)")
            }
            XCTAssertLessThan(Date().timeIntervalSince(started), 5, "\(path) was waited on")
        }
    }

    func testHalfTheEnvironmentPairIsAnError() {
        let env = AWSEnvironment(variables: ["AWS_ACCESS_KEY_ID": "K"], home: dir)
        XCTAssertThrowsError(try AWSCredentialsResolver.resolve(env)) { e in
            XCTAssertTrue("\(e)".contains("must be set together"), "\(e)")
        }
    }

    func testRegionOrder() throws {
        try write(dir + "/.aws/config", "[default]\nregion = eu-west-3\n")
        XCTAssertEqual(try AWSConfiguration.region(explicit: "sa-east-1", AWSEnvironment(variables: ["AWS_REGION": "us-east-2"], home: dir)), "sa-east-1")
        XCTAssertEqual(try AWSConfiguration.region(AWSEnvironment(variables: ["AWS_REGION": "us-east-2", "AWS_DEFAULT_REGION": "us-west-1"], home: dir)), "us-east-2")
        XCTAssertEqual(try AWSConfiguration.region(AWSEnvironment(variables: ["AWS_DEFAULT_REGION": "us-west-1"], home: dir)), "us-west-1")
        XCTAssertEqual(try AWSConfiguration.region(AWSEnvironment(variables: [:], home: dir)), "eu-west-3")
        XCTAssertNil(try AWSConfiguration.region(AWSEnvironment(variables: [:], home: "/nonexistent")))
        XCTAssertThrowsError(try AWSConfiguration.requireRegion(AWSEnvironment(variables: [:], home: "/nonexistent"), for: "KMS key alias/x"))
        XCTAssertThrowsError(try AWSConfiguration.region(AWSEnvironment(variables: ["AWS_REGION": "US East"], home: dir)))
    }

    func testEndpointOrder() throws {
        let vars = ["AWS_ENDPOINT_URL": "http://127.0.0.1:5000", "AWS_ENDPOINT_URL_KMS": "http://127.0.0.1:5001/"]
        let env = AWSEnvironment(variables: vars, home: dir)
        XCTAssertEqual(try AWSConfiguration.endpoint(service: "kms", region: "us-east-1", env).url.absoluteString, "http://127.0.0.1:5001/")
        XCTAssertEqual(try AWSConfiguration.endpoint(service: "kms", region: "us-east-1", env).source, "AWS_ENDPOINT_URL_KMS")
        XCTAssertEqual(try AWSConfiguration.endpoint(service: "s3", region: "us-east-1", env).url.absoluteString, "http://127.0.0.1:5000")
        XCTAssertEqual(try AWSConfiguration.endpoint(service: "s3", region: "us-east-1", explicit: "https://minio.local:9000", env).url.absoluteString, "https://minio.local:9000")
        var ignore = vars; ignore["AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"] = "true"
        let d = try AWSConfiguration.endpoint(service: "s3", region: "cn-north-1", AWSEnvironment(variables: ignore, home: dir))
        XCTAssertEqual(d.url.absoluteString, "https://s3.cn-north-1.amazonaws.com.cn")
        XCTAssertFalse(d.isCustom)
        for bad in ["ftp://x", "http://", "http://u:p@host", "http://h/?q=1", "not a url"] {
            XCTAssertThrowsError(try AWSConfiguration.parse(bad, source: "test"), bad)
        }
    }
}

final class RetryConfigurationTests: XCTestCase {
    func testMaxAttemptsFromTheEnvironment() throws {
        XCTAssertEqual(try AWSConfiguration.retryPolicy(AWSEnvironment(variables: [:], home: "/")).maximumAttempts, 8)
        XCTAssertEqual(try AWSConfiguration.retryPolicy(AWSEnvironment(variables: ["AWS_MAX_ATTEMPTS": "3"], home: "/")).maximumAttempts, 3)
        for bad in ["0", "21", "x"] {
            XCTAssertThrowsError(try AWSConfiguration.retryPolicy(AWSEnvironment(variables: ["AWS_MAX_ATTEMPTS": bad], home: "/")), bad)
        }
    }
}
