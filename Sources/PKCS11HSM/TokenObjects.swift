import BackupCrypto
import ByteCoding
import Foundation

// The PKCS#11 payload's object bodies (spec/FORMAT.md §9.4): which attributes are captured per
// class, which of them go back into the restore template ("restore") and which are only
// recorded ("info"), and the portable encoding of each value.

public enum AttributeRole: String, Codable, Sendable { case restore, info }

public struct AttributeSpec: Sendable {
    public let type: UInt64
    public let name: String
    public let kind: AttributeKind
    public let role: AttributeRole
}

public enum AttributeRegistry {
    static func s(_ t: UInt64, _ n: String, _ k: AttributeKind, _ r: AttributeRole) -> AttributeSpec { AttributeSpec(type: t, name: n, kind: k, role: r) }

    static let common: [AttributeSpec] = [
        s(0x2, "CKA_PRIVATE", .bool, .restore), s(0x170, "CKA_MODIFIABLE", .bool, .restore), s(0x3, "CKA_LABEL", .bytes, .restore),
        s(0x171, "CKA_COPYABLE", .bool, .restore), s(0x172, "CKA_DESTROYABLE", .bool, .restore),
    ]
    static let key: [AttributeSpec] = [
        s(0x102, "CKA_ID", .bytes, .restore), s(0x110, "CKA_START_DATE", .bytes, .restore), s(0x111, "CKA_END_DATE", .bytes, .restore),
        s(0x10C, "CKA_DERIVE", .bool, .restore), s(0x4000_0600, "CKA_ALLOWED_MECHANISMS", .ulongs, .restore),
        s(0x163, "CKA_LOCAL", .bool, .info), s(0x166, "CKA_KEY_GEN_MECHANISM", .ulong, .info),
    ]
    static let secret: [AttributeSpec] = [
        s(0x103, "CKA_SENSITIVE", .bool, .restore), s(0x104, "CKA_ENCRYPT", .bool, .restore), s(0x105, "CKA_DECRYPT", .bool, .restore),
        s(0x108, "CKA_SIGN", .bool, .restore), s(0x10A, "CKA_VERIFY", .bool, .restore), s(0x106, "CKA_WRAP", .bool, .restore),
        s(0x107, "CKA_UNWRAP", .bool, .restore), s(0x162, "CKA_EXTRACTABLE", .bool, .restore),
        s(0x210, "CKA_WRAP_WITH_TRUSTED", .bool, .restore),
        s(0x86, "CKA_TRUSTED", .bool, .info), s(0x165, "CKA_ALWAYS_SENSITIVE", .bool, .info), s(0x164, "CKA_NEVER_EXTRACTABLE", .bool, .info),
        s(0x161, "CKA_VALUE_LEN", .ulong, .info), s(0x90, "CKA_CHECK_VALUE", .bytes, .info),
    ]
    static let privateKey: [AttributeSpec] = [
        s(0x101, "CKA_SUBJECT", .bytes, .restore), s(0x103, "CKA_SENSITIVE", .bool, .restore), s(0x105, "CKA_DECRYPT", .bool, .restore),
        s(0x108, "CKA_SIGN", .bool, .restore), s(0x109, "CKA_SIGN_RECOVER", .bool, .restore), s(0x107, "CKA_UNWRAP", .bool, .restore),
        s(0x162, "CKA_EXTRACTABLE", .bool, .restore), s(0x210, "CKA_WRAP_WITH_TRUSTED", .bool, .restore),
        s(0x202, "CKA_ALWAYS_AUTHENTICATE", .bool, .restore),
        s(0x165, "CKA_ALWAYS_SENSITIVE", .bool, .info), s(0x164, "CKA_NEVER_EXTRACTABLE", .bool, .info),
        s(0x120, "CKA_MODULUS", .bytes, .info), s(0x122, "CKA_PUBLIC_EXPONENT", .bytes, .info), s(0x180, "CKA_EC_PARAMS", .bytes, .info),
    ]
    static let publicKey: [AttributeSpec] = [
        s(0x101, "CKA_SUBJECT", .bytes, .restore), s(0x104, "CKA_ENCRYPT", .bool, .restore), s(0x10A, "CKA_VERIFY", .bool, .restore),
        s(0x10B, "CKA_VERIFY_RECOVER", .bool, .restore), s(0x106, "CKA_WRAP", .bool, .restore),
        s(0x120, "CKA_MODULUS", .bytes, .restore), s(0x122, "CKA_PUBLIC_EXPONENT", .bytes, .restore),
        s(0x180, "CKA_EC_PARAMS", .bytes, .restore), s(0x181, "CKA_EC_POINT", .bytes, .restore),
        // DSA and DH public keys: the domain parameters and the public value (a token creates
        // none without them; RSA and EC keys do not give them).
        s(0x130, "CKA_PRIME", .bytes, .restore), s(0x131, "CKA_SUBPRIME", .bytes, .restore), s(0x132, "CKA_BASE", .bytes, .restore),
        s(0x11, "CKA_VALUE", .bytes, .restore),
        s(0x86, "CKA_TRUSTED", .bool, .info), s(0x121, "CKA_MODULUS_BITS", .ulong, .info),
    ]
    static let data: [AttributeSpec] = [
        s(0x10, "CKA_APPLICATION", .bytes, .restore), s(0x12, "CKA_OBJECT_ID", .bytes, .restore), s(0x11, "CKA_VALUE", .bytes, .restore),
    ]
    static let certificate: [AttributeSpec] = [
        s(0x80, "CKA_CERTIFICATE_TYPE", .ulong, .restore), s(0x102, "CKA_ID", .bytes, .restore), s(0x101, "CKA_SUBJECT", .bytes, .restore),
        s(0x81, "CKA_ISSUER", .bytes, .restore), s(0x82, "CKA_SERIAL_NUMBER", .bytes, .restore), s(0x11, "CKA_VALUE", .bytes, .restore),
        s(0x110, "CKA_START_DATE", .bytes, .restore), s(0x111, "CKA_END_DATE", .bytes, .restore),
        s(0x86, "CKA_TRUSTED", .bool, .info), s(0x87, "CKA_CERTIFICATE_CATEGORY", .ulong, .info),
    ]

    /// The attributes captured for objects of `objectClass` (nil: a class the bridge does not back up).
    public static func specs(forClass objectClass: UInt64) -> [AttributeSpec]? {
        switch objectClass {
        case CK.oSecretKey: return common + key + secret
        case CK.oPrivateKey: return common + key + privateKey
        case CK.oPublicKey: return common + key + publicKey
        case CK.oData: return common + data
        case CK.oCertificate: return common + certificate
        default: return nil
        }
    }

    static let byType: [UInt64: AttributeSpec] = {
        var d: [UInt64: AttributeSpec] = [:]
        for s in common + key + secret + privateKey + publicKey + data + certificate { d[s.type] = s }
        return d
    }()

    public static func name(_ type: UInt64) -> String { byType[type]?.name ?? "CKA_0x\(String(type, radix: 16))" }
    public static func spec(_ type: UInt64) -> AttributeSpec? { byType[type] }

    /// Portable bytes of a value (§9.4): CK_BBOOL one byte, CK_ULONG u64 big-endian, arrays of
    /// CK_ULONG one u64 big-endian each, byte strings as they are.
    public static func encode(_ value: AttributeValue) -> [UInt8] {
        switch value {
        case .bool(let b): return [b ? 1 : 0]
        case .ulong(let u): return be64(u)
        case .ulongs(let us): return us.flatMap(be64)
        case .bytes(let b): return b
        case .template, .secret: return []
        }
    }

    static func be64(_ u: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: u >> (56 - 8 * $0)) } }

    public static func decode(_ bytes: [UInt8], kind: AttributeKind, name: String) throws -> AttributeValue {
        func bad(_ why: String) -> PKCS11Error { PKCS11Error(.malformedObject, "\(name): \(why)") }
        switch kind {
        case .bool:
            guard bytes.count == 1, bytes[0] <= 1 else { throw bad("a CK_BBOOL is one byte, 00 or 01") }
            return .bool(bytes[0] == 1)
        case .ulong:
            guard bytes.count == 8 else { throw bad("a CK_ULONG is 8 bytes big-endian") }
            return .ulong(bytes.reduce(0) { $0 << 8 | UInt64($1) })
        case .ulongs:
            guard bytes.count % 8 == 0 else { throw bad("a CK_ULONG array is a multiple of 8 bytes") }
            return .ulongs(stride(from: 0, to: bytes.count, by: 8).map { i in bytes[i..<(i + 8)].reduce(0) { $0 << 8 | UInt64($1) } })
        case .bytes:
            return .bytes(bytes)
        }
    }
}

/// One attribute as the archive holds it.
public struct EncodedAttribute: Codable, Sendable, Equatable {
    public let type: UInt64
    public let name: String
    /// Lowercase hex of the portable bytes.
    public let value: String

    public init(type: UInt64, name: String, value: String) {
        self.type = type
        self.name = name
        self.value = value
    }
}

/// How a secret or private key's value travels.
public struct WrappedValue: Codable, Sendable, Equatable {
    /// The PKCS#11 mechanism that made `blob`: 0x210A (AES key wrap with padding, RFC 5649) or 9 (RSA-OAEP, SHA-1).
    public let mechanism: UInt64
    /// "tek" (the token key of §9.2) or "swk" (the backup's RSA wrapping key, for SoftHSM 2.6's padding quirk).
    public let wrappingKey: String
    /// Hex.
    public let blob: String
    /// The key's true length in bytes, where the token reports it (CKA_VALUE_LEN), else 0.
    public let valueLength: UInt64

    public init(mechanism: UInt64, wrappingKey: String, blob: String, valueLength: UInt64) {
        self.mechanism = mechanism
        self.wrappingKey = wrappingKey
        self.blob = blob
        self.valueLength = valueLength
    }
}

/// A functional check recorded at backup and repeated on the restored key (§9.6).
public struct KeyCheck: Codable, Sendable, Equatable {
    /// "aes-ecb-kcv": first 8 bytes of AES-ECB(key, 16 zero bytes); "hmac-sha256": first 8 bytes of
    /// HMAC-SHA256(key, checkMessage); "sign": sign `checkMessage` and verify with `publicKey` (an object index).
    public let kind: String
    public let value: String
    public let publicKey: Int?

    public init(kind: String, value: String, publicKey: Int?) {
        self.kind = kind
        self.value = value
        self.publicKey = publicKey
    }
}

/// One token object in the payload (`keys/NNNNNN.json`).
public struct TokenObject: Codable, Sendable, Equatable {
    public let objectClass: UInt64
    public let className: String
    public let keyType: UInt64?
    public let keyTypeName: String?
    public let attributes: [EncodedAttribute]
    public let info: [EncodedAttribute]
    public let wrapped: WrappedValue?
    public let check: KeyCheck?

    public init(objectClass: UInt64, className: String, keyType: UInt64?, keyTypeName: String?, attributes: [EncodedAttribute],
                info: [EncodedAttribute], wrapped: WrappedValue?, check: KeyCheck?) {
        self.objectClass = objectClass
        self.className = className
        self.keyType = keyType
        self.keyTypeName = keyTypeName
        self.attributes = attributes
        self.info = info
        self.wrapped = wrapped
        self.check = check
    }

    /// The label for messages (bytes that are not UTF-8 shown as U+FFFD).
    public var label: String { string(0x3) ?? "" }
    /// The label's bytes exactly as the token gave them: what the restore writes and searches for.
    public var labelBytes: [UInt8] { attributes.first { $0.type == 0x3 }.flatMap { Hex.decode($0.value) } ?? [] }
    public var idHex: String { attributes.first { $0.type == 0x102 }?.value ?? "" }

    /// A recorded attribute decoded by the registry's rules (the ones `restoreAttributes` applies),
    /// nil when the object does not carry it or it does not decode.
    private func decoded(_ type: UInt64, _ kind: AttributeKind) -> AttributeValue? {
        guard let a = attributes.first(where: { $0.type == type }), let b = Hex.decode(a.value) else { return nil }
        return try? AttributeRegistry.decode(b, kind: kind, name: a.name)
    }

    func bool(_ type: UInt64) -> Bool? {
        if case .bool(let v)? = decoded(type, .bool) { return v }
        return nil
    }

    func ulongs(_ type: UInt64) -> [UInt64]? {
        if case .ulongs(let v)? = decoded(type, .ulongs) { return v }
        return nil
    }

    func string(_ type: UInt64) -> String? {
        guard let a = attributes.first(where: { $0.type == type }), let b = Hex.decode(a.value) else { return nil }
        return String(decoding: b, as: UTF8.self)
    }

    /// The restore attributes, decoded and checked against the registry.
    public func restoreAttributes() throws -> [Attribute] {
        guard let specs = AttributeRegistry.specs(forClass: objectClass) else {
            throw PKCS11Error(.malformedObject, "object class 0x\(String(objectClass, radix: 16)) is not one the payload carries")
        }
        if objectClass == CK.oSecretKey || objectClass == CK.oPrivateKey || objectClass == CK.oPublicKey {
            guard keyType != nil else { throw PKCS11Error(.malformedObject, "a key without a key type") }
        }
        var seen = Set<UInt64>()
        var out = try attributes.map { a in
            guard let spec = specs.first(where: { $0.type == a.type }), spec.role == .restore else {
                throw PKCS11Error(.malformedObject, "attribute \(AttributeRegistry.name(a.type)) is not a restore attribute of \(className)")
            }
            guard seen.insert(a.type).inserted else { throw PKCS11Error(.malformedObject, "attribute \(spec.name) twice") }
            guard let bytes = Hex.decode(a.value) else { throw PKCS11Error(.malformedObject, "\(spec.name): value is not hex") }
            return Attribute(a.type, try AttributeRegistry.decode(bytes, kind: spec.kind, name: spec.name))
        }
        // A secret or private key whose archive lacks a security attribute must not take the
        // target's default (SoftHSM: CKA_SENSITIVE false, so readable): the safe value instead (§9.4).
        if objectClass == CK.oSecretKey || objectClass == CK.oPrivateKey {
            for a in Self.safeDefaults where !seen.contains(a.type) { out.append(a) }
        }
        return out
    }

    /// CKA_SENSITIVE true, CKA_EXTRACTABLE false, CKA_PRIVATE true.
    static let safeDefaults: [Attribute] = [.bool(0x103, true), .bool(0x162, false), .bool(0x2, true)]
}

/// The payload's first object (`policies/pkcs11-token.json`): where the backup came from and how
/// its keys travel (§9.3).
public struct TokenRecord: Codable, Sendable, Equatable {
    public static let formatName = "hsmbackup-pkcs11"
    public static let path = "policies/pkcs11-token.json"
    public static let versionMajor = 1

    public let format: String
    public let version: Int
    public let module: String
    public let library: ModuleInfo
    public let token: TokenInfo
    public let quirks: [String]
    /// The role the backup logged in as ("user"). PINs and users are never in an archive.
    public let role: String
    /// KW(PBK_T, TEK), made in the token (hex, 40 bytes).
    public let wrappedTEK: String
    /// The backup's RSA wrapping key (only when the quirk needed it): KWP(TEK, PKCS#8), hex.
    public let wrappedSWK: String?
    public let objectCount: Int
    public let skipped: [SkippedObject]

    public init(format: String, version: Int, module: String, library: ModuleInfo, token: TokenInfo, quirks: [String], role: String,
                wrappedTEK: String, wrappedSWK: String?, objectCount: Int, skipped: [SkippedObject]) {
        self.format = format
        self.version = version
        self.module = module
        self.library = library
        self.token = token
        self.quirks = quirks
        self.role = role
        self.wrappedTEK = wrappedTEK
        self.wrappedSWK = wrappedSWK
        self.objectCount = objectCount
        self.skipped = skipped
    }
}

/// Canonical JSON: sorted keys, no whitespace, `/` unescaped.
enum PayloadJSON {
    static func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return Array(try e.encode(value))
    }

    static func decode<T: Codable>(_ type: T.Type, _ bytes: [UInt8], what: String) throws -> T {
        do {
            let v = try JSONDecoder().decode(type, from: Data(bytes))
            guard try encode(v) == bytes else { throw PKCS11Error(.malformedObject, "\(what) is not canonical JSON") }
            return v
        } catch let e as PKCS11Error { throw e } catch {
            throw PKCS11Error(.malformedObject, "\(what) does not decode: \(error)")
        }
    }
}
