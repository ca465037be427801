import BackupCrypto
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

    /// The identity rules of spec/FORMAT.md §4.3.2, checked when an HSM is created, so that an
    /// HSM that exists can always be backed up, stored and restored.
    public func validate() throws {
        let fields: [(IdentityRules.Field, String)] = [(.manufacturerId, manufacturerId), (.model, model), (.firmwareVersion, firmwareVersion),
                                                       (.serialNumber, serialNumber), (.hsmId, hsmId), (.clusterId, clusterId)]
        for (field, value) in fields {
            if let problem = IdentityRules.problem(field, value) { throw HSMError(.invalidArgument, problem) }
        }
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
    package func payloadBundle() throws -> PayloadBundle {
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

    /// `path == Self.path(kind, index)`, compared byte by byte without building the string (a
    /// restore checks one per object).
    static func pathIs(_ path: String, kind: ObjectKind, index: Int) -> Bool {
        var path = path
        return path.withUTF8 { b in
            let dir = kind.directory.utf8
            var width = 1
            var limit = 10
            while index + 1 >= limit && width < 19 { width += 1; limit &*= 10 }
            width = max(6, width)
            guard b.count == dir.count + width + 5, b.prefix(dir.count).elementsEqual(dir) else { return false }
            var v = index + 1
            for i in (dir.count..<(dir.count + width)).reversed() {
                guard b[i] == UInt8(ascii: "0") + UInt8(v % 10) else { return false }
                v /= 10
            }
            return v == 0 && b.suffix(5).elementsEqual(".json".utf8)
        }
    }

    /// Decodes and checks the objects of a verified bundle.
    init(bundle: PayloadBundle) throws {
        let checker = ContentChecker(keep: true)
        for o in bundle.objects { try checker.check(o) }
        self = checker.contents
    }

    /// Content rules over the whole contents (what `ContentChecker` checks object by object).
    func validate() throws {
        let checker = ContentChecker(keep: false)
        for o in try payloadBundle().objects { try checker.check(o) }
    }
}

/// The HSM's content rules, object by object, in payload order (spec 4.6 step 10): each object
/// is at its kind's next path `<dir><nnnnnn>.json`, decodes as canonical JSON, user names and
/// key handles are unique, key material is hex of the declared size. The per-object part
/// (`decodeAndCheck`) is pure, so a restore runs it on worker threads; the cross-object part
/// (`nextPath`, `record`) runs in order. Memory: the names and handles seen (and the decoded
/// contents only if `keep`).
final class ContentChecker {
    /// What the cross-object rules need of an object.
    enum Identity: Sendable {
        case policy
        case user(String)
        case key(UInt64)
    }

    private let keep: Bool
    private(set) var contents = HSMContents()
    /// Objects seen so far of each kind (policies, users, keys: `ObjectKind.payloadOrder`).
    private var counts = (0, 0, 0)
    private var names = Set<String>()
    private var handles = Set<UInt64>()

    init(keep: Bool) { self.keep = keep }

    /// All rules for the next object; with `keep`, its decoded value is kept too (a second
    /// decode: `keep` serves display and tests, not restores).
    func check(_ o: PayloadObject) throws {
        let path = nextPath(o.kind)
        try record(try Self.decodeAndCheck(o, expectedPath: path), path: path)
        guard keep else { return }
        switch o.kind {
        case .policy: contents.policies.append(try CanonicalJSON.decode(HSMPolicy.self, o.contents, path: path))
        case .user: contents.users.append(try CanonicalJSON.decode(HSMUser.self, o.contents, path: path))
        case .key: contents.keys.append(try CanonicalJSON.decode(HSMKey.self, o.contents, path: path))
        }
    }

    /// The path the next object of `kind` must have (1-based, 6 digits).
    func nextPath(_ kind: ObjectKind) -> String {
        HSMContents.path(kind, nextIndex(kind))
    }

    /// The index among its kind of the next object of `kind` (its path is
    /// `HSMContents.path(kind, index)`; `decodeAndCheck(_:index:)` compares without building it).
    func nextIndex(_ kind: ObjectKind) -> Int {
        switch kind {
        case .policy: counts.0 += 1; return counts.0 - 1
        case .user: counts.1 += 1; return counts.1 - 1
        case .key: counts.2 += 1; return counts.2 - 1
        }
    }

    /// The cross-object rules: unique user names and key handles.
    func record(_ identity: Identity, path: String) throws {
        switch identity {
        case .policy: break
        case .user(let name):
            guard names.insert(name).inserted else { throw HSMError(.invalidObject, "duplicate user name", path: path) }
        case .key(let handle):
            guard handles.insert(handle).inserted else { throw HSMError(.invalidObject, "duplicate key handle", path: path) }
        }
    }

    /// The per-object rules (thread-safe): path, canonical JSON of the kind, key material.
    static func decodeAndCheck(_ o: PayloadObject, expectedPath path: String) throws -> Identity {
        guard o.path == path else { throw HSMError(.invalidObject, "expected \(path)", path: o.path) }
        return try decodeAndCheckContents(o, path: path)
    }

    /// The same, for the object that must be number `index` of its kind (see `nextIndex`).
    static func decodeAndCheck(_ o: PayloadObject, index: Int) throws -> Identity {
        guard HSMContents.pathIs(o.path, kind: o.kind, index: index) else {
            throw HSMError(.invalidObject, "expected \(HSMContents.path(o.kind, index))", path: o.path)
        }
        return try decodeAndCheckContents(o, path: o.path)
    }

    private static func decodeAndCheckContents(_ o: PayloadObject, path: String) throws -> Identity {
        switch o.kind {
        case .policy:
            _ = try CanonicalJSON.decode(HSMPolicy.self, o.contents, path: path)
            return .policy
        case .user:
            return .user(try CanonicalJSON.decode(HSMUser.self, o.contents, path: path).name)
        case .key:
            if let k = CanonicalKeyParser.parse(o.contents) {
                // The fast path (see CanonicalKeyParser): the same rules on the same values; the
                // material's hex digits are checked in place, never decoded into a copy.
                guard let materialBytes = k.materialBytes, materialBytes > 0 else {
                    throw HSMError(.invalidObject, "key material is not hex", path: path)
                }
                guard materialFits(materialBytes, type: k.type, bits: k.bits) else {
                    throw HSMError(.invalidObject, materialRule(k.type), path: path)
                }
                return .key(k.handle)
            }
            let k = try CanonicalJSON.decode(HSMKey.self, o.contents, path: path)
            try checkKey(k, path: path)
            return .key(k.handle)
        }
    }

    /// The material rule of each key type (one place for both decode paths).
    static func materialFits(_ count: Int, type: KeyType, bits: Int) -> Bool {
        switch type {
        case .aes, .genericSecret: return count > 0 && count * 8 == bits
        case .ec: return count == 48 + 97 && bits == 384
        case .rsa: return count > 0 && bits >= 1024
        }
    }

    static func materialRule(_ type: KeyType) -> String {
        switch type {
        case .aes, .genericSecret: return "key material size differs from bits"
        case .ec: return "EC key material must be P-384"
        case .rsa: return "RSA key too small"
        }
    }

    private static func checkKey(_ k: HSMKey, path: String) throws {
        guard var material = Hex.decode(k.material), !material.isEmpty else {
            throw HSMError(.invalidObject, "key material is not hex", path: path)
        }
        defer { wipe(&material) }
        guard materialFits(material.count, type: k.type, bits: k.bits) else {
            throw HSMError(.invalidObject, materialRule(k.type), path: path)
        }
    }
}
