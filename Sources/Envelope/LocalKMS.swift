import BackupCrypto
import Durability
import Foundation

/// The embedded local KMS (spec/FORMAT.md §3.6): a keystore directory of named AES-256 keys,
/// each with numbered versions that can be rotated, disabled and re-enabled.
///
/// Layout (every directory 0700, every file 0600, every file written with `AtomicFile`):
/// ```
/// <dir>/keys/<NAME>/key.json   metadata: name, creation time, versions with their state
/// <dir>/keys/<NAME>/v<N>.key   the 32 raw bytes of version N
/// ```
/// EDKs use the raw AES keyring layout with provider ID `hsmbackup-local-kms` and key name
/// `NAME/vN`, so an AWS Encryption SDK Raw AES keyring opens them given the exported bytes.
/// Encryption uses the highest enabled version. One process at a time should change a keystore.
public final class LocalKMS: @unchecked Sendable {
    public static let namespace = "hsmbackup-local-kms"
    public static let maximumNameBytes = 64

    public struct VersionInfo: Codable, Sendable, Equatable {
        public let version: Int
        public let created: String
        public var enabled: Bool
    }

    public struct KeyInfo: Codable, Sendable, Equatable {
        public let name: String
        public let created: String
        public var versions: [VersionInfo]
        /// The version new EDKs use: the highest enabled one.
        public var primaryVersion: Int? { versions.filter(\.enabled).map(\.version).max() }
    }

    public let directory: String

    public init(directory: String) { self.directory = directory }

    /// Allowed names: 1...64 of [A-Za-z0-9._-], not starting with '.' or '-'.
    public static func validate(name: String) throws {
        let ok = !name.isEmpty && name.utf8.count <= maximumNameBytes
            && name.utf8.allSatisfy { c in
                (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || c == 0x2e || c == 0x5f || c == 0x2d
            }
            && !name.hasPrefix(".") && !name.hasPrefix("-")
        guard ok else {
            throw EnvelopeError(.invalidKeyName, "key name \"\(name)\" must be 1...\(maximumNameBytes) of A-Z a-z 0-9 . _ - and not start with . or -")
        }
    }

    // MARK: management

    @discardableResult
    public func createKey(_ name: String) throws -> KeyInfo {
        try Self.validate(name: name)
        return try changing {
            // Only a key that is positively absent is created. A key.json that does not parse or
            // names another key (a copied directory), or cannot be read, is reported as it is:
            // writing a key.json listing only a new version would drop every older version.
            do {
                _ = try info(name)
                throw EnvelopeError(.keyExists, "local KMS key \"\(name)\" already exists")
            } catch let e as EnvelopeError where e.code == .keyNotFound {}
            // No key.json, but key versions: its key.json was lost (or a create was killed before
            // writing it); they may open archives, so the name is not free.
            let dir = keyDir(name)
            if FileManager.default.fileExists(atPath: dir) {
                let versions = try io { try FileManager.default.contentsOfDirectory(atPath: dir) }.filter(Self.isVersionFileName).sorted()
                if !versions.isEmpty {
                    throw EnvelopeError(.keystoreCorrupt, "local KMS key \"\(name)\": \(dir) holds key versions (\(versions.joined(separator: ", "))) "
                                        + "but no readable key.json; restore its key.json, or move the directory away if no archive uses them")
                }
            }
            try io { try AtomicFile.makeDirectory(dir) }
            var info = KeyInfo(name: name, created: Self.now(), versions: [])
            try addVersion(&info)
            return info
        }
    }

    /// Adds a new version, which becomes the primary one; older versions still decrypt.
    @discardableResult
    public func rotate(_ name: String) throws -> KeyInfo {
        try changing {
            var i = try info(name)
            try addVersion(&i)
            return i
        }
    }

    /// Runs a read-modify-write of the key store under its lock (`keys/.lock`), so two `rotate`s
    /// (or a rotate and an enable) at once cannot both take one version number or drop each
    /// other's change to `key.json`: an archive made under a version another writer then replaced
    /// or dropped would never open again.
    private func changing<T>(_ body: () throws -> T) throws -> T {
        try io {
            try AtomicFile.makeDirectory(directory, mode: 0o700)
            try AtomicFile.makeDirectory(directory + "/keys", mode: 0o700)
        }
        let lock: HolderLock
        do { lock = try HolderLock.acquire(directory + "/keys/.lock", wait: true) } catch {
            throw EnvelopeError(.io, "local KMS: cannot lock \(directory)/keys/.lock: \(error.reason)")
        }
        defer { lock.release() }
        return try body()
    }

    @discardableResult
    public func setEnabled(_ name: String, version: Int, enabled: Bool) throws -> KeyInfo {
        try changing { try setEnabledLocked(name, version: version, enabled: enabled) }
    }

    private func setEnabledLocked(_ name: String, version: Int, enabled: Bool) throws -> KeyInfo {
        var i = try info(name)
        guard let idx = i.versions.firstIndex(where: { $0.version == version }) else {
            throw EnvelopeError(.keyNotFound, "local KMS key \"\(name)\" has no version \(version)")
        }
        i.versions[idx].enabled = enabled
        try writeInfo(i)
        return i
    }

    public func listKeys() throws -> [KeyInfo] {
        let dir = directory + "/keys"
        guard FileManager.default.fileExists(atPath: dir) else { return [] }
        let names = try io { try FileManager.default.contentsOfDirectory(atPath: dir) }
        return try names.filter { !$0.hasPrefix(".") }.sorted().map { try info($0) }
    }

    public func info(_ name: String) throws -> KeyInfo {
        try Self.validate(name: name)
        let path = keyDir(name) + "/key.json"
        guard FileManager.default.fileExists(atPath: path) else {
            throw EnvelopeError(.keyNotFound, "no local KMS key \"\(name)\" in \(directory)")
        }
        let bytes = try io { try AtomicFile.read(path, limit: 1 << 20) }
        return try Self.parseKeyInfo(bytes, name: name, path: path)
    }

    /// Parses the bytes of a `key.json` that must describe key `name` (`path` names it in errors).
    public static func parseKeyInfo(_ bytes: [UInt8], name: String, path: String) throws -> KeyInfo {
        guard let i = try? JSONDecoder().decode(KeyInfo.self, from: Data(bytes)) else {
            throw EnvelopeError(.keystoreCorrupt, "\(path) does not parse as key metadata")
        }
        // By bytes: "\u{212A}" (KELVIN SIGN) is `==` to "K".
        guard i.name.utf8.elementsEqual(name.utf8) else {
            throw EnvelopeError(.keystoreCorrupt, "\(path) is the metadata of key \"\(i.name)\", not \"\(name)\" (a copied key directory?)")
        }
        return i
    }

    /// Parses the bytes of a `vN.key` file: exactly 32 raw key bytes.
    public static func parseKeyFile(_ bytes: [UInt8], path: String) throws -> WrappingKey {
        guard bytes.count == 32, let k = try? WrappingKey(bytes: bytes) else {
            throw EnvelopeError(.keystoreCorrupt, "\(path) is not a 32-byte key")
        }
        return k
    }

    /// The bytes of one version (the primary one if nil), for export/escrow and interop. The
    /// caller owns a secret: print it only on explicit request.
    public func exportKey(_ name: String, version: Int? = nil) throws -> (version: Int, key: WrappingKey) {
        let i = try info(name)
        guard let v = version ?? i.primaryVersion else {
            throw EnvelopeError(.keyVersionDisabled, "local KMS key \"\(name)\" has no enabled version")
        }
        guard i.versions.contains(where: { $0.version == v }) else {
            throw EnvelopeError(.keyNotFound, "local KMS key \"\(name)\" has no version \(v)")
        }
        return (v, try loadKey(name, version: v))
    }

    // MARK: keyrings

    /// A keyring that encrypts under `name`'s primary version and opens EDKs of any version of it.
    public func keyring(_ name: String) throws -> LocalKMSKeyring {
        _ = try info(name)
        return LocalKMSKeyring(kms: self, keyName: name)
    }

    /// A keyring that opens EDKs of every key in this keystore (it cannot encrypt).
    public var decryptionKeyring: LocalKMSKeyring { LocalKMSKeyring(kms: self, keyName: nil) }

    /// "NAME/vN" → (NAME, N), on the bytes (a `/` or `v` followed by a combining mark is not one).
    public static func parseEDKKeyName(_ s: String) -> (name: String, version: Int)? {
        let b = Array(s.utf8)
        guard let slash = b.lastIndex(of: UInt8(ascii: "/")) else { return nil }
        let name = String(decoding: b[..<slash], as: UTF8.self)
        let v = b[(slash + 1)...]
        guard v.first == UInt8(ascii: "v"), let n = Int(String(decoding: v.dropFirst(), as: UTF8.self)), n > 0,
              v.elementsEqual("v\(n)".utf8), (try? validate(name: name)) != nil else { return nil }
        return (name, n)
    }

    func wrappingKey(_ name: String, version: Int) throws -> WrappingKey {
        let i = try info(name)
        guard let vi = i.versions.first(where: { $0.version == version }) else {
            throw EnvelopeError(.keyNotFound, "local KMS key \"\(name)\" has no version \(version)")
        }
        guard vi.enabled else {
            throw EnvelopeError(.keyVersionDisabled, "local KMS key \"\(name)\" version \(version) is disabled (enable it to use it)")
        }
        return try loadKey(name, version: version)
    }

    // MARK: private

    private func keyDir(_ name: String) -> String { directory + "/keys/" + name }

    /// `v*.key`, compared as bytes (a combining mark after the `v` must not hide a file).
    private static func isVersionFileName(_ file: String) -> Bool {
        file.utf8.first == UInt8(ascii: "v") && file.utf8.count >= 5 && file.utf8.suffix(4).elementsEqual(".key".utf8)
    }

    private func loadKey(_ name: String, version: Int) throws -> WrappingKey {
        let path = keyDir(name) + "/v\(version).key"
        var bytes = try io { try AtomicFile.read(path, limit: 64) }
        defer { wipe(&bytes) }
        return try Self.parseKeyFile(bytes, path: path)
    }

    private func addVersion(_ info: inout KeyInfo) throws {
        // Past every version listed and every key file on disk: a rotate killed between its key
        // file and key.json leaves a file no version names; it is skipped, never reused or removed.
        let onDisk = ((try? FileManager.default.contentsOfDirectory(atPath: keyDir(info.name))) ?? []).compactMap { name -> Int? in
            guard name.hasPrefix("v"), name.hasSuffix(".key") else { return nil }
            return Int(name.dropFirst().dropLast(4))
        }
        let v = max(info.versions.map(\.version).max() ?? 0, onDisk.max() ?? 0) + 1
        var bytes = SecureRandom.secureBytes(count: 32).unsafeCopy()
        defer { wipe(&bytes) }
        // Create-only, even under the lock: a key version is never replaced.
        try io { try AtomicFile.create(bytes, at: keyDir(info.name) + "/v\(v).key", mode: 0o600) }
        info.versions.append(VersionInfo(version: v, created: Self.now(), enabled: true))
        try writeInfo(info)
    }

    private func writeInfo(_ info: KeyInfo) throws {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        let data = try enc.encode(info)
        try io {
            try AtomicFile.makeDirectory(directory, mode: 0o700)
            try AtomicFile.makeDirectory(directory + "/keys", mode: 0o700)
            try AtomicFile.write([UInt8](data), to: keyDir(info.name) + "/key.json", mode: 0o600)
        }
    }

    private func io<T>(_ body: () throws -> T) throws -> T {
        do { return try body() } catch let e as EnvelopeError { throw e } catch let e as FileError {
            throw EnvelopeError(e.code == .notFound ? .keyNotFound : .io, "local KMS: \(e)")
        } catch {
            throw EnvelopeError(.io, "local KMS: \(error)")
        }
    }

    static func now() -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime]
        return f.string(from: Date())
    }
}

/// The local KMS as a keyring: EDKs in the raw AES layout, namespace `hsmbackup-local-kms`, key
/// name `NAME/vN`.
public struct LocalKMSKeyring: Keyring {
    public let kms: LocalKMS
    /// nil: any key of the keystore (decrypt only).
    public let keyName: String?

    public var keyDescription: String {
        keyName.map { "\(LocalKMS.namespace) key \"\($0)\"" } ?? "\(LocalKMS.namespace) keystore \(kms.directory)"
    }

    public func wrap(_ dataKey: DataKey, context: EncryptionContext) throws -> EncryptedDataKey {
        guard let keyName else { throw EnvelopeError(.invalidArgument, "name a local KMS key to encrypt with") }
        let info = try kms.info(keyName)
        guard let v = info.primaryVersion else {
            throw EnvelopeError(.keyVersionDisabled, "local KMS key \"\(keyName)\" has no enabled version")
        }
        let ring = try RawAESKeyring(namespace: LocalKMS.namespace, name: "\(keyName)/v\(v)",
                                     wrappingKey: try kms.wrappingKey(keyName, version: v))
        return try ring.wrap(dataKey, context: context)
    }

    public func unwrap(_ edk: EncryptedDataKey, context: EncryptionContext) throws -> UnwrapOutcome {
        guard edk.hasProviderID(LocalKMS.namespace), let full = edk.rawAESKeyName,
              let (name, version) = LocalKMS.parseEDKKeyName(full) else { return .notMine }
        if let keyName, !keyName.utf8.elementsEqual(name.utf8) { return .notMine }
        let key: WrappingKey
        do { key = try kms.wrappingKey(name, version: version) } catch let e as EnvelopeError where e.code == .keyNotFound {
            return .notMine
        }
        // The keystore holds the exact version the EDK names, so a failure is not "another key".
        let outcome = RawAESKeyring.open(edk, key: key, context: context)
        if case .failed(let why) = outcome { return .altered(why) }
        return outcome
    }
}
