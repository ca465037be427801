import ByteCoding
import Foundation
import HSMArchive

/// Identity of one HSM (spec 4.3 metadata). Public; travels in every backup header.
public struct HSMIdentity: Codable, Sendable, Equatable {
    public var manufacturerId: String
    public var model: String
    public var firmwareVersion: String
    public var serialNumber: String
    public var hsmId: String
    public var clusterId: String

    public init(manufacturerId: String, model: String, firmwareVersion: String = "1.0.0",
                serialNumber: String, hsmId: String, clusterId: String) {
        self.manufacturerId = manufacturerId
        self.model = model
        self.firmwareVersion = firmwareVersion
        self.serialNumber = serialNumber
        self.hsmId = hsmId
        self.clusterId = clusterId
    }

    public var metadata: ManufacturerMetadata {
        ManufacturerMetadata(manufacturerId: manufacturerId, model: model, firmwareVersion: firmwareVersion,
                             serialNumber: serialNumber, hsmId: hsmId, clusterId: clusterId)
    }
}

public enum UserRole: String, Codable, Sendable, CaseIterable {
    case cryptoOfficer = "crypto-officer"
    case cryptoUser = "crypto-user"
    case applianceUser = "appliance-user"
}

public struct HSMUser: Codable, Sendable, Equatable {
    public var name: String
    public var role: UserRole
    /// SHA-256(salt || password), hex.
    public var passwordHash: String
    public var salt: String
    /// How many approvals this user's quorum-controlled operations need (1 = none).
    public var quorum: Int
    public var mfaEnabled: Bool
}

public enum KeyType: String, Codable, Sendable, CaseIterable {
    case aes = "AES"
    case rsa = "RSA"
    case ec = "EC"
    case genericSecret = "GENERIC_SECRET"
}

/// PKCS #11-style key attributes (CKA_*).
public struct KeyAttributes: Codable, Sendable, Equatable {
    public var token: Bool
    public var sensitive: Bool
    public var extractable: Bool
    public var encrypt: Bool
    public var decrypt: Bool
    public var wrap: Bool
    public var unwrap: Bool
    public var sign: Bool
    public var verify: Bool
    public var derive: Bool
}

public struct HSMKey: Codable, Sendable, Equatable {
    public var handle: UInt64
    public var label: String
    public var type: KeyType
    /// Size in bits (AES/generic secret: key length; RSA: modulus; EC: curve, 384).
    public var bits: Int
    public var curve: String?
    public var attributes: KeyAttributes
    public var owner: String
    public var sharedWith: [String]
    /// Key material, hex: raw bytes (AES, generic secret), DER RSAPrivateKey (RSA), or the
    /// 48-byte P-384 scalar followed by the uncompressed public point (EC).
    public var material: String
}

/// Cluster settings.
public struct HSMPolicy: Codable, Sendable, Equatable {
    public var name: String
    public var quorumMinimum: Int
    public var passwordMinimumLength: Int
    public var loginFailureLimit: Int
    public var mfaRequired: Bool
    public var backupRetentionDays: Int
}

/// Everything inside the HSM that a backup carries and a restore replaces.
public struct HSMContents: Codable, Sendable, Equatable {
    public var policies: [HSMPolicy]
    public var users: [HSMUser]
    public var keys: [HSMKey]

    public init(policies: [HSMPolicy] = [], users: [HSMUser] = [], keys: [HSMKey] = []) {
        self.policies = policies
        self.users = users
        self.keys = keys
    }

    public static let empty = HSMContents()
}

/// The canonical JSON of every HSM object and state file: sorted keys, no whitespace, `/`
/// unescaped. A restored object must be in this encoding (one encoding per value).
enum CanonicalJSON {
    static func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return Array(try e.encode(value))
    }

    static func decode<T: Codable>(_ type: T.Type, _ bytes: [UInt8], path: String) throws -> T {
        let value: T
        do { value = try JSONDecoder().decode(type, from: Data(bytes)) } catch {
            throw HSMError(.invalidObject, "not a valid \(T.self)", path: path)
        }
        guard try encode(value) == bytes else {
            throw HSMError(.invalidObject, "not in canonical JSON", path: path)
        }
        return value
    }
}

extension HSMContents {
    /// The payload objects of a backup, in format order (spec 4.7): policies, users, keys.
    func payloadBundle() throws -> PayloadBundle {
        var objects: [PayloadObject] = []
        for (i, p) in policies.enumerated() {
            objects.append(PayloadObject(kind: .policy, path: Self.path(.policy, i), contents: try CanonicalJSON.encode(p)))
        }
        for (i, u) in users.enumerated() {
            objects.append(PayloadObject(kind: .user, path: Self.path(.user, i), contents: try CanonicalJSON.encode(u)))
        }
        for (i, k) in keys.enumerated() {
            objects.append(PayloadObject(kind: .key, path: Self.path(.key, i), contents: try CanonicalJSON.encode(k)))
        }
        return try PayloadBundle(objects: objects)
    }

    static func path(_ kind: ObjectKind, _ index: Int) -> String {
        let n = String(index + 1)
        return kind.directory + String(repeating: "0", count: max(0, 6 - n.count)) + n + ".json"
    }

    /// Decodes and checks the objects of a verified bundle.
    init(bundle: PayloadBundle) throws {
        var contents = HSMContents()
        for kind in ObjectKind.allCases {
            for (i, o) in bundle.objects(of: kind).enumerated() {
                guard o.path == Self.path(kind, i) else {
                    throw HSMError(.invalidObject, "expected \(Self.path(kind, i))", path: o.path)
                }
                switch kind {
                case .policy: contents.policies.append(try CanonicalJSON.decode(HSMPolicy.self, o.contents, path: o.path))
                case .user: contents.users.append(try CanonicalJSON.decode(HSMUser.self, o.contents, path: o.path))
                case .key: contents.keys.append(try CanonicalJSON.decode(HSMKey.self, o.contents, path: o.path))
                }
            }
        }
        try contents.validate()
        self = contents
    }

    /// Content rules: unique user names and key handles, hex material of the declared size.
    func validate() throws {
        var names = Set<String>()
        for (i, u) in users.enumerated() where !names.insert(u.name).inserted {
            throw HSMError(.invalidObject, "duplicate user name", path: Self.path(.user, i))
        }
        var handles = Set<UInt64>()
        for (i, k) in keys.enumerated() {
            let path = Self.path(.key, i)
            guard handles.insert(k.handle).inserted else { throw HSMError(.invalidObject, "duplicate key handle", path: path) }
            guard let material = Hex.decode(k.material), !material.isEmpty else {
                throw HSMError(.invalidObject, "key material is not hex", path: path)
            }
            switch k.type {
            case .aes, .genericSecret:
                guard material.count * 8 == k.bits else { throw HSMError(.invalidObject, "key material size differs from bits", path: path) }
            case .ec:
                guard material.count == 48 + 97, k.bits == 384 else { throw HSMError(.invalidObject, "EC key material must be P-384", path: path) }
            case .rsa:
                guard k.bits >= 1024 else { throw HSMError(.invalidObject, "RSA key too small", path: path) }
            }
        }
    }
}
