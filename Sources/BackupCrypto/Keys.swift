/// Typed secret keys. Each kind of key is its own type, so an EBK cannot be passed where a PBK
/// or a data key is expected. A derived secret becomes a key only through a labelled KDF call.

/// What a key is for: its name (for errors) and the sizes it may have.
public protocol SecretKeyRole: Sendable {
    static var roleName: String { get }
    static var allowedByteCounts: [Int] { get }
}

/// Roles whose keys are AES keys (usable for KW, KWP or GCM).
public protocol AESKeyRole: SecretKeyRole {}

/// A generic AES key-wrapping key (KMS keys, raw AES keyrings, test vectors): 128/192/256 bits.
public enum WrappingKeyRole: AESKeyRole {
    public static let roleName = "wrapping key"
    public static let allowedByteCounts = [16, 24, 32]
}
/// The ephemeral backup key: fresh per backup, encrypts the payload (KWP) and seals the header.
public enum EBKRole: AESKeyRole {
    public static let roleName = "EBK"
    public static let allowedByteCounts = [32]
}
/// The persistent backup key, derived inside the HSM from MKBK and AKBK; wraps the EBK (KW).
public enum PBKRole: AESKeyRole {
    public static let roleName = "PBK"
    public static let allowedByteCounts = [32]
}
/// An envelope data key (what the EDKs carry); never used directly for AES-GCM.
public enum DataKeyRole: SecretKeyRole {
    public static let roleName = "data key"
    public static let allowedByteCounts = [32]
}
/// A content key derived from a data key (HKDF) that encrypts envelope frames with AES-GCM.
public enum ContentKeyRole: AESKeyRole {
    public static let roleName = "content key"
    public static let allowedByteCounts = [16, 24, 32]
}
/// A key-derivation or MAC key (MKBK, AKBK, KBKDF inputs, HMAC keys): at least 16 bytes.
public enum DerivationKeyRole: SecretKeyRole {
    public static let roleName = "derivation key"
    public static let allowedByteCounts = Array(16...64)
}
/// The manufacturer key backup key: shared by every HSM of one manufacturer and generation.
public enum MKBKRole: SecretKeyRole {
    public static let roleName = "MKBK"
    public static let allowedByteCounts = [32]
}
/// The operator key backup key: installed when the operator initializes the HSM.
public enum AKBKRole: SecretKeyRole {
    public static let roleName = "AKBK"
    public static let allowedByteCounts = [32]
}

/// A secret key of one role. The bytes live in `SecureBytes` and are wiped when the key goes.
public struct SecretKey<Role: SecretKeyRole>: Sendable, CustomStringConvertible {
    public let secret: SecureBytes

    public init(secret: SecureBytes) throws {
        guard Role.allowedByteCounts.contains(secret.count) else {
            throw CryptoError(.invalidKeySize,
                              "\(Role.roleName) must be \(Self.sizeText) bytes, got \(secret.count)")
        }
        self.secret = secret
    }

    /// Copies the bytes in; wipe the source afterwards if it was secret.
    public init<C: Collection>(bytes: C) throws where C.Element == UInt8 {
        try self.init(secret: SecureBytes(copying: bytes))
    }

    /// A fresh random key of the role's largest size (or `byteCount`).
    public static func random(byteCount: Int? = nil) throws -> Self {
        let n = byteCount ?? Role.allowedByteCounts.max()!
        return try Self(secret: SecureRandom.secureBytes(count: n))
    }

    public var byteCount: Int { secret.count }

    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try secret.withUnsafeBytes(body)
    }

    public func constantTimeEquals(_ other: Self) -> Bool { secret.constantTimeEquals(other.secret) }

    public var description: String { "\(Role.roleName) (\(byteCount * 8)-bit, redacted)" }

    private static var sizeText: String {
        let sizes = Role.allowedByteCounts
        return sizes.count > 4 ? "\(sizes.first!)...\(sizes.last!)" : sizes.map(String.init).joined(separator: "/")
    }
}

public typealias WrappingKey = SecretKey<WrappingKeyRole>
public typealias EphemeralBackupKey = SecretKey<EBKRole>
public typealias PersistentBackupKey = SecretKey<PBKRole>
public typealias DataKey = SecretKey<DataKeyRole>
public typealias ContentKey = SecretKey<ContentKeyRole>
public typealias DerivationKey = SecretKey<DerivationKeyRole>
public typealias ManufacturerBackupKey = SecretKey<MKBKRole>
public typealias OperatorBackupKey = SecretKey<AKBKRole>

/// A 96-bit AES-GCM nonce. Not secret, but typed so it cannot be confused with key bytes.
public struct GCMNonce: Sendable, Equatable {
    public static let byteCount = 12
    public let bytes: [UInt8]

    public init<C: Collection>(_ bytes: C) throws where C.Element == UInt8 {
        guard bytes.count == Self.byteCount else {
            throw CryptoError(.unsupportedNonceLength, "AES-GCM nonce must be 12 bytes, got \(bytes.count)")
        }
        self.bytes = Array(bytes)
    }

    public static func random() -> GCMNonce { try! GCMNonce(SecureRandom.bytes(count: byteCount)) }
}
