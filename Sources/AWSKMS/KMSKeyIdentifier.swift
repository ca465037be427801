import AWSCore

/// How a KMS key is named (AWS KMS "Key identifiers (KeyId)"):
/// - key ARN `arn:<partition>:kms:<region>:<account>:key/<key-id>`: encrypt and decrypt;
/// - alias ARN `arn:<partition>:kms:<region>:<account>:alias/<name>`: encrypt only;
/// - alias name `alias/<name>`: encrypt only, in the configured region.
/// An EDK always names the key ARN (the KMS answer's `KeyId`), so only a key ARN can match one
/// on decrypt, as in the ESDK's strict KMS keyring. Bare key ids are not accepted here: on the
/// command line they could not be told from a local KMS key name.
public struct KMSKeyIdentifier: Sendable, Equatable, CustomStringConvertible {
    public enum Kind: String, Sendable { case keyARN, aliasARN, aliasName }

    public let raw: String
    public let kind: Kind
    /// From the ARN; nil for an alias name (the configured region applies).
    public let region: String?
    public let account: String?
    public let partition: String?

    public static let maximumBytes = 2048

    /// True if `s` is meant as an AWS KMS key (`arn:` or `alias/` prefix), not a local KMS name.
    public static func looksLikeAWS(_ s: String) -> Bool { s.hasPrefix("arn:") || s.hasPrefix("alias/") }

    public init(_ s: String) throws {
        raw = s
        guard !s.isEmpty, s.utf8.count <= Self.maximumBytes, !s.utf8.contains(where: { $0 < 0x21 || $0 == 0x7F }) else {
            throw AWSError.configuration("InvalidKeyId", "KMS key \"\(s)\" is empty, too long or has spaces or control characters", service: "kms")
        }
        if s.hasPrefix("alias/") {
            guard s.count > "alias/".count, !s.hasPrefix("alias/aws/") || s.count > "alias/aws/".count else {
                throw AWSError.configuration("InvalidKeyId", "KMS alias \"\(s)\" has no name", service: "kms")
            }
            kind = .aliasName; region = nil; account = nil; partition = nil
            return
        }
        let parts = s.split(separator: ":", maxSplits: 5, omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 6, parts[0] == "arn", parts[1].hasPrefix("aws"), parts[2] == "kms", !parts[3].isEmpty,
              parts[4].count == 12, parts[4].allSatisfy(\.isNumber) else {
            throw AWSError.configuration("InvalidKeyId", "\"\(s)\" is not a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID), alias ARN (…:alias/NAME) or alias/NAME", service: "kms")
        }
        _ = try AWSConfiguration.validRegion(parts[3], from: "the key ARN \(s)")
        let resource = parts[5]
        if resource.hasPrefix("key/"), resource.count > 4 { kind = .keyARN } else if resource.hasPrefix("alias/"), resource.count > 6 { kind = .aliasARN } else {
            throw AWSError.configuration("InvalidKeyId", "\"\(s)\" is a KMS ARN but names neither key/ID nor alias/NAME", service: "kms")
        }
        partition = parts[1]; region = parts[3]; account = parts[4]
    }

    /// Whether `s` is a KMS key ARN (what a GenerateDataKey/Encrypt answer must name).
    public static func isKeyARN(_ s: String) -> Bool { (try? KMSKeyIdentifier(s))?.kind == .keyARN }

    public var description: String { raw }
}
