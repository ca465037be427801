import BackupCrypto
import Durability
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// An AWS secret access key: kept in wiped memory (`SecureBytes`), never printed.
public struct AWSSecretKey: Sendable, CustomStringConvertible, CustomDebugStringConvertible {
    public let bytes: SecureBytes

    public init(bytes: SecureBytes) { self.bytes = bytes }

    /// For tests and documentation examples; a real secret should not pass through a `String`.
    public init(_ string: String) { bytes = SecureBytes(copying: Array(string.utf8)) }

    public var description: String { "AWSSecretKey(redacted)" }
    public var debugDescription: String { description }
}

/// Credentials for SigV4: an access key id (not secret; messages name it), the secret key and,
/// for temporary credentials, the session token (sent as `X-Amz-Security-Token`, signed).
public struct AWSCredentials: Sendable, CustomStringConvertible {
    public let accessKeyID: String
    public let secretAccessKey: AWSSecretKey
    public let sessionToken: String?
    /// Where they came from ("environment", "profile default in /root/.aws/credentials").
    public let source: String

    public init(accessKeyID: String, secretAccessKey: AWSSecretKey, sessionToken: String? = nil, source: String = "given") {
        self.accessKeyID = accessKeyID
        self.secretAccessKey = secretAccessKey
        self.sessionToken = sessionToken
        self.source = source
    }

    public var description: String {
        "AWSCredentials(\(accessKeyID), secret redacted\(sessionToken == nil ? "" : ", session token redacted"), from \(source))"
    }
}

/// The process environment and home directory as AWS configuration sees them. `process` reads
/// `getenv` on demand (the secret key is copied from the C string straight into wiped memory,
/// never into a Swift `String`); tests pass a dictionary and a home of their own.
public struct AWSEnvironment: Sendable {
    private let variables: [String: String]?
    public let home: String

    public static var process: AWSEnvironment {
        let home = getenv("HOME").map { String(cString: $0) } ?? NSHomeDirectory()
        return AWSEnvironment(variables: nil, home: home)
    }

    public init(variables: [String: String], home: String) {
        self.variables = variables
        self.home = home
    }

    private init(variables: [String: String]?, home: String) {
        self.variables = variables
        self.home = home
    }

    /// A variable's value; nil when unset or empty.
    public subscript(_ name: String) -> String? {
        let v: String?
        if let variables { v = variables[name] } else { v = getenv(name).map { String(cString: $0) } }
        guard let v, !v.isEmpty else { return nil }
        return v
    }

    /// A variable's bytes in wiped memory (for the secret key).
    public func secret(_ name: String) -> SecureBytes? {
        if let variables {
            guard let v = variables[name], !v.isEmpty else { return nil }
            return SecureBytes(copying: Array(v.utf8))
        }
        guard let p = getenv(name) else { return nil }
        let n = strlen(p)
        guard n > 0 else { return nil }
        return SecureBytes(count: n) { out in out.copyMemory(from: UnsafeRawBufferPointer(start: p, count: n)) }
    }

    /// `AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`.
    public var credentialsFile: String { self["AWS_SHARED_CREDENTIALS_FILE"].map(expandTilde) ?? home + "/.aws/credentials" }
    /// `AWS_CONFIG_FILE`, else `~/.aws/config`.
    public var configFile: String { self["AWS_CONFIG_FILE"].map(expandTilde) ?? home + "/.aws/config" }
    /// `AWS_PROFILE`, else `default`.
    public var profile: String { self["AWS_PROFILE"] ?? self["AWS_DEFAULT_PROFILE"] ?? "default" }

    private func expandTilde(_ p: String) -> String { p.hasPrefix("~/") ? home + p.dropFirst(1) : p }
}

/// The INI files of the AWS CLI (`~/.aws/credentials`: `[name]`; `~/.aws/config`: `[default]`
/// or `[profile name]`), parsed as bytes so a secret value goes straight into wiped memory.
/// `key = value` lines; `#` and `;` start comment lines; indented lines (sub-sections such as
/// `s3 =` blocks) are skipped. The file's bytes are wiped after parsing.
public struct AWSSharedConfigFile: Sendable {
    public struct Section: Sendable {
        public var values: [String: SecureBytes] = [:]
        public func string(_ key: String) -> String? {
            values[key].map { b in b.withUnsafeBytes { String(decoding: $0, as: UTF8.self) } }
        }
    }

    public let path: String
    public private(set) var sections: [String: Section] = [:]

    /// nil when the file does not exist; throws `AWSError` (credentials) when it cannot be read,
    /// or is not a regular file (a FIFO with no writer would otherwise hang the command, and a
    /// scheduled run with it, holding the schedule's lock).
    public static func load(_ path: String) throws -> AWSSharedConfigFile? {
        let fd: Int32
        do { fd = try AtomicFile.openRegularFile(path) } catch let e as FileError {
            if e.code == .notFound { return nil }
            throw AWSError.credentials(e.code == .notRegularFile ? "\(path) \(e.reason)" : "\(path): \(e.reason)")
        }
        defer { close(fd) }
        let limit = 1 << 20
        var buf = [UInt8](repeating: 0, count: limit + 1)
        defer { wipe(&buf) }
        var count = 0
        while count <= limit {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress! + count, $0.count - count) }
            if n < 0 { if errno == EINTR { continue }; throw AWSError.credentials("\(path): \(String(cString: strerror(errno)))") }
            if n == 0 { break }
            count += n
        }
        guard count <= limit else { throw AWSError.credentials("\(path) is larger than 1 MiB") }
        return AWSSharedConfigFile(path: path, bytes: buf[0..<count])
    }

    public init(path: String, bytes: ArraySlice<UInt8>) {
        self.path = path
        var current: String?
        for rawLine in bytes.split(separator: 0x0A, omittingEmptySubsequences: true) {
            var line = rawLine
            if line.last == 0x0D { line = line.dropLast() }
            guard let first = line.first else { continue }
            if first == 0x20 || first == 0x09 { continue } // nested sub-section values
            if first == 0x23 || first == 0x3B { continue } // # ;
            if first == 0x5B { // [name]
                guard let close = line.firstIndex(of: 0x5D) else { current = nil; continue }
                let name = String(decoding: line[line.index(after: line.startIndex)..<close], as: UTF8.self)
                    .trimmingCharacters(in: .whitespaces)
                current = name
                if sections[name] == nil { sections[name] = Section() }
                continue
            }
            guard let section = current, let eq = line.firstIndex(of: 0x3D) else { continue }
            let key = String(decoding: line[line.startIndex..<eq], as: UTF8.self).trimmingCharacters(in: .whitespaces).lowercased()
            var v = line[line.index(after: eq)...]
            while let c = v.first, c == 0x20 || c == 0x09 { v = v.dropFirst() }
            while let c = v.last, c == 0x20 || c == 0x09 { v = v.dropLast() }
            sections[section]?.values[key] = SecureBytes(copying: v)
        }
    }

    /// The section of a profile: `[name]` in the credentials file; `[profile name]` (or
    /// `[default]`) in the config file.
    public func profile(_ name: String, isConfigFile: Bool) -> Section? {
        if isConfigFile {
            if name == "default", let s = sections["default"] { return s }
            return sections["profile \(name)"]
        }
        return sections[name]
    }
}

/// Resolves credentials in the order the AWS SDKs use for static credentials:
/// 1. `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`);
/// 2. the profile (`AWS_PROFILE`, else `default`) in the shared credentials file
///    (`AWS_SHARED_CREDENTIALS_FILE`, else `~/.aws/credentials`);
/// 3. the same profile in the config file (`AWS_CONFIG_FILE`, else `~/.aws/config`).
/// Not supported: SSO, `credential_process`, `role_arn` assumption, instance metadata (IMDS) and
/// container credentials; a profile that only has those fails with a message that says so.
public enum AWSCredentialsResolver {
    public static func resolve(_ env: AWSEnvironment = .process) throws -> AWSCredentials {
        let akid = env["AWS_ACCESS_KEY_ID"]
        let secret = env.secret("AWS_SECRET_ACCESS_KEY")
        if let akid, let secret {
            return AWSCredentials(accessKeyID: akid, secretAccessKey: AWSSecretKey(bytes: secret),
                                  sessionToken: env["AWS_SESSION_TOKEN"], source: "environment (AWS_ACCESS_KEY_ID)")
        }
        if (akid == nil) != (secret == nil) {
            throw AWSError.credentials("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together (only \(akid == nil ? "AWS_SECRET_ACCESS_KEY" : "AWS_ACCESS_KEY_ID") is)")
        }
        let profile = env.profile
        var unsupported: String?
        for (path, isConfig) in [(env.credentialsFile, false), (env.configFile, true)] {
            guard let file = try AWSSharedConfigFile.load(path), let section = file.profile(profile, isConfigFile: isConfig) else { continue }
            if let id = section.string("aws_access_key_id"), let key = section.values["aws_secret_access_key"] {
                return AWSCredentials(accessKeyID: id, secretAccessKey: AWSSecretKey(bytes: key),
                                      sessionToken: section.string("aws_session_token"), source: "profile \(profile) in \(path)")
            }
            for k in ["role_arn", "credential_process", "sso_session", "sso_start_url", "web_identity_token_file"] where section.values[k] != nil {
                unsupported = "profile \(profile) in \(path) uses \(k), which hsmbackup does not support; give static keys"
            }
        }
        if let unsupported { throw AWSError.credentials(unsupported) }
        throw AWSError.credentials("no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE "
            + "with keys in \(env.credentialsFile) (profile \(profile))")
    }
}
