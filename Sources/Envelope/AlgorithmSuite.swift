/// The algorithm suites (spec/FORMAT.md §3.1; ESDK digest §1). New messages use 0x0478 or
/// 0x0578; the v1 suites listed here are decode-only and only under `CommitmentPolicy.allowLegacyDecrypt`.
public struct AlgorithmSuite: Sendable, Equatable, Hashable, CustomStringConvertible {
    public enum KDF: Sendable { case identity, hkdfSHA256, hkdfSHA384, hkdfSHA512Commit }

    public let id: UInt16
    public let name: String
    public let messageFormatVersion: UInt8
    public let dataKeyByteCount: Int
    public let kdf: KDF
    public let signs: Bool
    /// Bytes of suite data in the v2 header (the commitment key); 0 for v1.
    public var suiteDataByteCount: Int { kdf == .hkdfSHA512Commit ? 32 : 0 }
    public var commits: Bool { kdf == .hkdfSHA512Commit }
    public var messageIDByteCount: Int { messageFormatVersion == 2 ? 32 : 16 }

    /// AES_256_GCM_HKDF_SHA512_COMMIT_KEY: the default of this project.
    public static let committing = AlgorithmSuite(id: 0x0478, name: "AES_256_GCM_HKDF_SHA512_COMMIT_KEY",
                                                  messageFormatVersion: 2, dataKeyByteCount: 32, kdf: .hkdfSHA512Commit, signs: false)
    /// AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384.
    public static let committingSigned = AlgorithmSuite(id: 0x0578, name: "AES_256_GCM_HKDF_SHA512_COMMIT_KEY_ECDSA_P384",
                                                        messageFormatVersion: 2, dataKeyByteCount: 32, kdf: .hkdfSHA512Commit, signs: true)
    /// Legacy v1 suites (decode only, 256-bit keys).
    public static let legacyAES256 = AlgorithmSuite(id: 0x0078, name: "AES_256_GCM_IV12_TAG16_NO_KDF",
                                                    messageFormatVersion: 1, dataKeyByteCount: 32, kdf: .identity, signs: false)
    public static let legacyAES256HKDFSHA256 = AlgorithmSuite(id: 0x0178, name: "AES_256_GCM_IV12_TAG16_HKDF_SHA256",
                                                              messageFormatVersion: 1, dataKeyByteCount: 32, kdf: .hkdfSHA256, signs: false)
    public static let legacyAES256HKDFSHA384ECDSAP384 = AlgorithmSuite(id: 0x0378, name: "AES_256_GCM_IV12_TAG16_HKDF_SHA384_ECDSA_P384",
                                                                       messageFormatVersion: 1, dataKeyByteCount: 32, kdf: .hkdfSHA384, signs: true)

    public static let all: [AlgorithmSuite] = [committing, committingSigned, legacyAES256, legacyAES256HKDFSHA256, legacyAES256HKDFSHA384ECDSAP384]

    /// IDs the ESDK defines that this implementation does not (AES-128/192 and P-256 legacy suites).
    public static let knownButUnsupported: Set<UInt16> = [0x0014, 0x0046, 0x0114, 0x0146, 0x0214, 0x0346]

    public static func byID(_ id: UInt16) -> AlgorithmSuite? { all.first { $0.id == id } }

    public var idHex: String {
        let h = String(id, radix: 16)
        return "0x" + String(repeating: "0", count: 4 - h.count) + h
    }

    public var description: String { "\(idHex) \(name)" }
}

/// Which suites a decryptor accepts. The default matches the SDK's REQUIRE_ENCRYPT_REQUIRE_DECRYPT.
public enum CommitmentPolicy: Sendable {
    /// Only 0x0478 and 0x0578 (message format v2, key commitment).
    case requireCommitment
    /// Also decode v1 / non-committing messages (explicit opt-in, for old archives).
    case allowLegacyDecrypt
}
