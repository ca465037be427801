import BackupCrypto
import ByteCoding

/// How `populate` fills an HSM.
public struct PopulateOptions: Sendable {
    /// Key types, cycled over the key index.
    public var keyTypes: [KeyType]
    /// RSA modulus size. RSA keys come from OpenSSL's generator and are NOT reproducible from
    /// the seed; every other value is.
    public var rsaBits: Int
    /// Every n-th key label and user name gets non-ASCII characters (0 = never).
    public var nonASCIIEvery: Int

    public init(keyTypes: [KeyType] = [.aes, .ec, .genericSecret, .aes, .rsa, .ec, .aes, .genericSecret],
                rsaBits: Int = 2048, nonASCIIEvery: Int = 5) {
        self.keyTypes = keyTypes
        self.rsaBits = rsaBits
        self.nonASCIIEvery = nonASCIIEvery
    }

    /// Every type but RSA: the whole content is then a function of the seed.
    public static let deterministic = PopulateOptions(keyTypes: [.aes, .ec, .genericSecret, .aes, .ec])
}

extension SimulatedHSM {
    public static let maximumPopulateKeys = 100_000
    public static let maximumPopulateUsers = 10_000

    /// Replaces the contents with `keys` keys of mixed types (real key material), `users` users
    /// and two policies, all derived from `seed` (except RSA material, see `PopulateOptions`).
    public func populate(keys: Int, users: Int, seed: UInt64, options: PopulateOptions = PopulateOptions()) throws {
        try replaceContents(try Self.makeContents(keys: keys, users: users, seed: seed, options: options))
    }

    public static func makeContents(keys: Int, users: Int, seed: UInt64, options: PopulateOptions = PopulateOptions()) throws -> HSMContents {
        guard (0...maximumPopulateKeys).contains(keys), (0...maximumPopulateUsers).contains(users), !options.keyTypes.isEmpty else {
            throw HSMError(.invalidArgument, "populate takes 0...\(maximumPopulateKeys) keys, 0...\(maximumPopulateUsers) users and at least one key type")
        }
        let rnd = SeededRandomSource(seed: seed)
        func pick(_ n: Int) -> Int { Int(rnd.bytes(count: 1)[0]) % n }
        func nonASCII(_ i: Int) -> Bool { options.nonASCIIEvery > 0 && i % options.nonASCIIEvery == options.nonASCIIEvery - 1 }

        let policies = [
            HSMPolicy(name: "cluster", quorumMinimum: 2, passwordMinimumLength: 12, loginFailureLimit: 5,
                      mfaRequired: true, backupRetentionDays: 90),
            HSMPolicy(name: "password", quorumMinimum: 1, passwordMinimumLength: 16, loginFailureLimit: 3,
                      mfaRequired: false, backupRetentionDays: 0),
        ]
        var userList: [HSMUser] = []
        for i in 0..<users {
            let role = UserRole.allCases[i % UserRole.allCases.count]
            let prefix = role == .cryptoOfficer ? "co" : role == .cryptoUser ? "cu" : "au"
            let name = nonASCII(i) ? "\(prefix)-Ünïcødé-用户-\(i + 1)" : "\(prefix)-\(i + 1)"
            let salt = rnd.bytes(count: 16)
            let password = rnd.bytes(count: 24)
            let hash = SHA256Hasher.hash(salt + password)
            userList.append(HSMUser(name: name, role: role, passwordHash: Hex.encode(hash), salt: Hex.encode(salt),
                                    quorum: role == .cryptoOfficer ? 2 : 1, mfaEnabled: role == .cryptoOfficer))
        }
        let owners = userList.filter { $0.role == .cryptoUser }.map(\.name)
        var keyList: [HSMKey] = []
        keyList.reserveCapacity(keys)
        for i in 0..<keys {
            let type = options.keyTypes[i % options.keyTypes.count]
            var bits: Int
            var curve: String?
            var material: SecureBytes
            switch type {
            case .aes:
                bits = [128, 192, 256][pick(3)]
                material = rnd.secureBytes(count: bits / 8)
            case .genericSecret:
                bits = (16 + pick(49)) * 8
                material = rnd.secureBytes(count: bits / 8)
            case .ec:
                bits = 384
                curve = "P-384"
                var pair: SecureBytes?
                while pair == nil { pair = try? AsymmetricKeyMaterial.p384KeyPair(scalar: rnd.secureBytes(count: 48)) }
                material = pair!
            case .rsa:
                bits = options.rsaBits
                material = try AsymmetricKeyMaterial.generateRSA(bits: bits)
            }
            let secret = type == .aes || type == .genericSecret
            let attributes = KeyAttributes(token: true, sensitive: true, extractable: pick(4) == 0,
                                           encrypt: secret || type == .rsa, decrypt: secret || type == .rsa,
                                           wrap: type == .aes, unwrap: type == .aes, sign: !secret || type == .genericSecret,
                                           verify: !secret || type == .genericSecret, derive: type == .ec || type == .genericSecret)
            let label = nonASCII(i) ? "clé-🔑-ключ-\(i + 1)" : "key-\(type.rawValue.lowercased())-\(i + 1)"
            let owner = owners.isEmpty ? "admin" : owners[i % owners.count]
            let shared = owners.count > 1 && pick(3) == 0 ? [owners[(i + 1) % owners.count]] : []
            keyList.append(HSMKey(handle: UInt64(0x10000 + i), label: label, type: type, bits: bits, curve: curve,
                                  attributes: attributes, owner: owner, sharedWith: shared,
                                  material: Hex.encode(material.unsafeCopy())))
        }
        return HSMContents(policies: policies, users: userList, keys: keyList)
    }
}
