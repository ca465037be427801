import BackupCrypto
import ByteCoding
import Foundation
import HSMArchive

// A real token behind a PKCS#11 module as a backup source and restore target (spec/FORMAT.md §9).
//
// Key hierarchy (§9.2):
//   PBK    the format's PBK (§4.2), provisioned as a private, sensitive, non-extractable token key
//          (label "hsmbackup-pbk/<manufacturer>", CKA_ID = fingerprint). It wraps and unwraps the
//          archive's EBK, which this process holds (the EBK seals the header and wraps the chunks).
//   PBK_T  KDF(PBK, "hsmbackup/v1 PKCS11 token wrapping key", C_mfr), provisioned by the SO as a
//          trusted, non-extractable key with a strict CKA_UNWRAP_TEMPLATE. It wraps the TEK.
//   TEK    a fresh AES-256 session key per backup, generated in the token (sensitive,
//          wrap-with-trusted). It wraps every secret and private key with CKM_AES_KEY_WRAP_PAD;
//          it never leaves the token in clear: the archive holds only KW(PBK_T, TEK).
//   SWK    (SoftHSM 2.6 only) a session RSA-2048 pair made per backup whose public half wraps
//          secret keys of a length not a multiple of 8 with RSA-OAEP, so they return at their
//          true length; its private half travels as KWP(TEK, PKCS#8).

public enum PKCS11Labels {
    public static let pbkPrefix = "hsmbackup-pbk/"
    public static let tokenPBKPrefix = "hsmbackup-pbk-token/"
    public static let restoringPrefix = "hsmbackup-restoring/"
    public static let tokenWrappingKeyLabel = "hsmbackup/v1 PKCS11 token wrapping key"
    /// What the functional checks sign or MAC (32 bytes, so ECDSA can take it as a digest).
    public static let checkMessage = Array("hsmbackup/v1 pkcs11 key check....".utf8.prefix(32))
    /// Public encryption-context keys a PKCS#11 archive carries (§9.3).
    public static let contextPBKCheck = "pkcs11.pbk-kcv"
    public static let contextTokenPBKCheck = "pkcs11.token-pbk-kcv"
    public static let contextTokenManufacturer = "pkcs11.token-manufacturer"
    public static let contextTokenModel = "pkcs11.token-model"
    public static let quirkKWPZeroPad = "softhsm-2.6-kwp-zero-pad"
}

/// What `provision` did.
public struct ProvisionReport: Codable, Sendable {
    public let token: TokenInfo
    public let manufacturerId: String
    public let pbkFingerprint: String
    public let pbkCheckValue: String
    public let tokenPBKCheckValue: String
    /// Whether the token offers CKM_SP800_108_COUNTER_KDF (PKCS#11 3.0); false means the PBK was imported.
    public let derivationInTokenAvailable: Bool
}

public struct PKCS11Options: Sendable {
    /// Cluster id written into the header (a store key segment); default "pkcs11".
    public var clusterId: String?
    /// Back up what can be backed up and list the rest, instead of failing.
    public var allowPartial = false
    /// On restore, replace objects that already exist with the same class, label and CKA_ID.
    public var replace = false
    public init() {}
}

/// What the last backup took and left.
public struct PKCS11BackupReport: Codable, Sendable {
    public let objects: Int
    public let wrapped: Int
    public let clear: Int
    public let skipped: [SkippedObject]
    public let quirks: [String]
}

/// What the last restore (or dry run) did.
public struct PKCS11RestoreReport: Codable, Sendable {
    public let objects: Int
    public let checked: Int
    public let unchecked: Int
    public let replaced: Int
    public let recoveredStale: Int
    /// Labels of objects under the temporary label that refused C_DestroyObject (left as they were).
    public let staleLeft: [String]
    public let dryRun: Bool
    public let skippedAtBackup: [SkippedObject]
}

public final class PKCS11HSM: BackupSource, RestoreTarget {
    public let module: PKCS11Module
    public let token: TokenInfo
    public let library: ModuleInfo
    public var options: PKCS11Options
    let session: PKCS11Session
    /// The provisioned manufacturer and key handles, if any.
    public let manufacturerId: String?
    let pbk: UInt64?
    let tokenPBK: UInt64?
    public let fingerprint: [UInt8]?
    public private(set) var lastBackup: PKCS11BackupReport?
    /// The last backup's payload size, and the largest piece of it this process held to hand to
    /// the blob writer at once (bounded by EncryptedSpool.pieceBytes, whatever the object count).
    public private(set) var lastBackupPayloadBytes = 0
    public private(set) var lastBackupLargestPiece = 0
    /// The token's restore lock while a restore (not a dry run) runs (§9.6, TokenLock).
    var restoreLock: TokenLock?
    public internal(set) var lastRestore: PKCS11RestoreReport?

    /// Opens the token labelled `tokenLabel` and logs in as the user.
    public init(modulePath: String, tokenLabel: String, userPIN: SecureBytes, options: PKCS11Options = PKCS11Options()) throws {
        module = try PKCS11Module.open(path: modulePath)
        library = try module.info()
        token = try module.token(labelled: tokenLabel)
        session = try module.openSession(slot: token.slot)
        try session.login(user: CK.userUser, pin: userPIN)
        self.options = options
        let found = try Self.findProvisioning(session)
        manufacturerId = found?.manufacturer
        pbk = found?.pbk
        tokenPBK = found?.tokenPBK
        fingerprint = found?.fingerprint
    }

    struct Provisioning { let manufacturer: String; let pbk: UInt64; let tokenPBK: UInt64; let fingerprint: [UInt8] }

    static func labelOf(_ s: PKCS11Session, _ h: UInt64) throws -> String {
        if case .success(.bytes(let b)) = try s.attribute(h, 0x3, as: .bytes) { return String(decoding: b, as: UTF8.self) }
        return ""
    }

    static func idOf(_ s: PKCS11Session, _ h: UInt64) throws -> [UInt8] {
        if case .success(.bytes(let b)) = try s.attribute(h, 0x102, as: .bytes) { return b }
        return []
    }

    /// The PBK and PBK_T of one manufacturer, found by label prefix (and, when given, CKA_ID).
    /// A PBK pairs only with a PBK_T of its manufacturer and CKA_ID (the fingerprint), so a lone
    /// PBK_T (a provision killed between its steps, another operator key) never hides the pair.
    static func findProvisioning(_ s: PKCS11Session, fingerprint: [UInt8]? = nil) throws -> Provisioning? {
        var template: [Attribute] = [.ulong(0x0, CK.oSecretKey), .bool(0x1, true)]
        if let fingerprint { template.append(.bytes(0x102, fingerprint)) }
        var pbks: [(mfr: String, handle: UInt64, id: [UInt8])] = [], tpbks: [(mfr: String, handle: UInt64, id: [UInt8])] = []
        for h in try s.find(template) {
            let label = try labelOf(s, h)
            if label.hasPrefix(PKCS11Labels.pbkPrefix) {
                pbks.append((String(label.dropFirst(PKCS11Labels.pbkPrefix.count)), h, try idOf(s, h)))
            } else if label.hasPrefix(PKCS11Labels.tokenPBKPrefix) {
                tpbks.append((String(label.dropFirst(PKCS11Labels.tokenPBKPrefix.count)), h, try idOf(s, h)))
            }
        }
        for p in pbks.sorted(by: { ($0.mfr, $0.handle) < ($1.mfr, $1.handle) }) {
            if let t = tpbks.first(where: { $0.mfr == p.mfr && $0.id == p.id }) {
                return Provisioning(manufacturer: p.mfr, pbk: p.handle, tokenPBK: t.handle, fingerprint: p.id)
            }
        }
        return nil
    }

    // MARK: identity

    public var metadata: ManufacturerMetadata {
        func clean(_ s: String, _ fallback: String) -> String {
            let t = String(s.unicodeScalars.filter { !($0.value < 0x20 || (0x7F...0x9F).contains($0.value)) }.map(Character.init))
            var out = ""
            for c in t where out.utf8.count + c.utf8.count <= 128 { out.append(c) }
            return out.isEmpty ? fallback : out
        }
        return ManufacturerMetadata(manufacturerId: manufacturerId ?? "(not provisioned)", model: clean(token.model, "PKCS#11 token"),
                                    firmwareVersion: clean(token.firmwareVersion, "0.0"), serialNumber: clean(token.serialNumber, ""),
                                    hsmId: clean(token.label, "pkcs11-" + token.serialNumber),
                                    clusterId: options.clusterId ?? "pkcs11")
    }

    public var quirks: [String] {
        var q: [String] = []
        if library.manufacturer.contains("SoftHSM"), library.libraryMajor < 2 || (library.libraryMajor == 2 && library.libraryMinor <= 6) {
            q.append(PKCS11Labels.quirkKWPZeroPad)
        }
        return q
    }

    public func pbkFingerprint() throws -> [UInt8]? { fingerprint }

    func requireProvisioned() throws -> (pbk: UInt64, tokenPBK: UInt64, fingerprint: [UInt8], manufacturer: String) {
        guard let pbk, let tokenPBK, let fingerprint, let manufacturerId else {
            throw PKCS11Error(.notProvisioned, "token \"\(token.label)\" holds no hsmbackup PBK: run `hsmbackup pkcs11 provision` first")
        }
        return (pbk, tokenPBK, fingerprint, manufacturerId)
    }

    /// KCV of a wrapping key, computed in the token: the first 8 bytes of KW(key, 32 zero bytes).
    static func checkValue(_ s: PKCS11Session, key: UInt64) throws -> [UInt8] {
        let zero = try s.create([.ulong(0x0, CK.oSecretKey), .ulong(0x100, CK.kGenericSecret), .bool(0x1, false),
                                 .bool(0x103, false), .bool(0x162, true), .bytes(0x11, [UInt8](repeating: 0, count: 32))])
        defer { try? s.destroy(zero) }
        switch try s.wrap(.plain(CK.mAESKeyWrap), wrappingKey: key, key: zero) {
        case .success(let w): return Array(w.prefix(8))
        case .failure(let r): throw PKCS11Error(.callFailed, "computing a key check value", function: "C_WrapKey", rv: r.rv)
        }
    }

    public func archiveContext() throws -> [String: String] {
        let p = try requireProvisioned()
        return [PKCS11Labels.contextPBKCheck: Hex.encode(try Self.checkValue(session, key: p.pbk)),
                PKCS11Labels.contextTokenPBKCheck: Hex.encode(try Self.checkValue(session, key: p.tokenPBK)),
                PKCS11Labels.contextTokenManufacturer: token.manufacturer,
                PKCS11Labels.contextTokenModel: token.model]
    }

    // MARK: provisioning

    /// PBK_T = KDF(PBK, "hsmbackup/v1 PKCS11 token wrapping key", C_mfr, 256).
    public static func tokenPBK(from pbk: PersistentBackupKey, manufacturerId: String) throws -> PersistentBackupKey {
        let fixed = KBKDF.fixedInput(label: Array(PKCS11Labels.tokenWrappingKeyLabel.utf8),
                                     context: try KeyHierarchy.manufacturerContext(manufacturerId), outputBytes: 32)
        return try PersistentBackupKey(secret: try pbk.withUnsafeBytes { try KBKDF.derive(key: $0, fixedInput: fixed, outputBytes: 32) })
    }

    static func expectedCheckValue(_ key: PersistentBackupKey) throws -> [UInt8] {
        let zero = try EphemeralBackupKey(secret: SecureBytes(copying: [UInt8](repeating: 0, count: 32)))
        return Array(try AESKeyWrap.wrap(key: zero, under: key).prefix(8))
    }

    /// Installs the PBK (user) and PBK_T (SO) once. Both are checked in the token against the
    /// values computed here; on any failure what was made is destroyed.
    public static func provision(modulePath: String, tokenLabel: String, soPIN: SecureBytes, userPIN: SecureBytes,
                                 manufacturerId: String, mkbk: ManufacturerBackupKey, akbk: OperatorBackupKey) throws -> ProvisionReport {
        let module = try PKCS11Module.open(path: modulePath)
        let token = try module.token(labelled: tokenLabel)
        let pbk = try KeyHierarchy.derivePBK(mkbk: mkbk, akbk: akbk, manufacturerId: manufacturerId)
        let fingerprint = try KeyHierarchy.fingerprint(of: pbk, manufacturerId: manufacturerId)
        let tpbk = try tokenPBK(from: pbk, manufacturerId: manufacturerId)
        let kw = UInt64(CK.mAESKeyWrap)
        func keyTemplate(_ value: PersistentBackupKey, label: String, privateObject: Bool, trusted: Bool, unwrap: [Attribute]) -> [Attribute] {
            var t: [Attribute] = [.ulong(0x0, CK.oSecretKey), .ulong(0x100, CK.kAES), .bool(0x1, true), .bool(0x2, privateObject),
                                  .bool(0x103, true), .bool(0x162, false), .bool(0x106, true), .bool(0x107, true),
                                  .bool(0x104, false), .bool(0x105, false), .bool(0x108, false), .bool(0x10A, false), .bool(0x10C, false),
                                  .bool(0x170, false), .bytes(0x3, Array(label.utf8)), .bytes(0x102, fingerprint),
                                  Attribute(0x4000_0600, .ulongs([kw])), Attribute(0x4000_0212, .template(unwrap)),
                                  .secret(0x11, value.secret)]
            if trusted { t.append(.bool(0x86, true)) }
            return t
        }
        // The EBK comes back to this process (it seals the header and wraps chunks on the host).
        let ebkTemplate: [Attribute] = [.ulong(0x0, CK.oSecretKey), .ulong(0x100, CK.kGenericSecret), .bool(0x1, false),
                                        .bool(0x103, false), .bool(0x162, true)]
        let s = try module.openSession(slot: token.slot)
        try s.login(user: CK.userUser, pin: userPIN)
        if try findProvisioning(s) != nil {
            throw PKCS11Error(.alreadyProvisioned, "token \"\(tokenLabel)\" already holds an hsmbackup PBK")
        }
        s.logout()
        // The SO makes PBK_T (only the SO can set CKA_TRUSTED).
        try s.login(user: CK.userSO, pin: soPIN)
        // A PBK_T of this manufacturer and fingerprint has no PBK (there is no pair, checked
        // above): a provision killed between its two steps left it. The retry replaces it.
        for h in try s.find([.ulong(0x0, CK.oSecretKey), .bool(0x1, true), .bytes(0x102, fingerprint),
                             .bytes(0x3, Array((PKCS11Labels.tokenPBKPrefix + manufacturerId).utf8))]) {
            try s.destroy(h)
        }
        let tHandle = try s.create(keyTemplate(tpbk, label: PKCS11Labels.tokenPBKPrefix + manufacturerId, privateObject: false,
                                               trusted: true, unwrap: tekTemplate))
        s.logout()
        do {
            try s.login(user: CK.userUser, pin: userPIN)
            let pHandle = try s.create(keyTemplate(pbk, label: PKCS11Labels.pbkPrefix + manufacturerId, privateObject: true,
                                                   trusted: false, unwrap: ebkTemplate))
            do {
                let kcv = try checkValue(s, key: pHandle), tkcv = try checkValue(s, key: tHandle)
                guard constantTimeEqual(kcv, try expectedCheckValue(pbk)), constantTimeEqual(tkcv, try expectedCheckValue(tpbk)) else {
                    throw PKCS11Error(.checkValueMismatch, "the installed keys' check values differ from the derived ones")
                }
                return ProvisionReport(token: token, manufacturerId: manufacturerId, pbkFingerprint: Hex.encode(fingerprint),
                                       pbkCheckValue: Hex.encode(kcv), tokenPBKCheckValue: Hex.encode(tkcv),
                                       derivationInTokenAvailable: module.supports(slot: token.slot, mechanism: CK.mSP800108CounterKDF,
                                                                                   flags: 1 << 19))
            } catch {
                try? s.destroy(pHandle)
                throw error
            }
        } catch {
            s.logout()
            if (try? s.login(user: CK.userSO, pin: soPIN)) != nil { try? s.destroy(tHandle) }
            throw error
        }
    }

    /// PBK_T's CKA_UNWRAP_TEMPLATE: the TEK comes back unwrap-only, sensitive, never extractable.
    static let tekTemplate: [Attribute] = [.ulong(0x0, CK.oSecretKey), .ulong(0x100, CK.kAES), .bool(0x1, false), .bool(0x103, true),
                                           .bool(0x162, false), .bool(0x107, true), .bool(0x106, false), .bool(0x104, false),
                                           .bool(0x105, false)]

    // MARK: backup

    @discardableResult
    public func backup(to sink: @escaping ([UInt8]) throws -> Void, chunkSize: Int, createdAt: UInt64?) throws -> InnerHeader {
        let p = try requireProvisioned()
        var sessionObjects: [UInt64] = []
        defer { for h in sessionObjects { try? session.destroy(h) } }
        let tek = try session.generateKey(CK.mAESKeyGen, [
            .ulong(0x0, CK.oSecretKey), .ulong(0x100, CK.kAES), .ulong(0x161, 32), .bool(0x1, false), .bool(0x103, true),
            .bool(0x162, true), .bool(0x210, true), .bool(0x106, true), .bool(0x107, false), .bool(0x104, false), .bool(0x105, false)])
        sessionObjects.append(tek)
        let wrappedTEK: [UInt8]
        switch try session.wrap(.plain(CK.mAESKeyWrap), wrappingKey: p.tokenPBK, key: tek) {
        case .success(let w): wrappedTEK = w
        case .failure(let r): throw PKCS11Error(.callFailed, "wrapping the token key under PBK_T", function: "C_WrapKey", rv: r.rv)
        }
        let quirks = self.quirks
        var swk: (pub: UInt64, wrapped: [UInt8])?
        func needSWK() throws -> UInt64 {
            if let swk { return swk.pub }
            let pair = try session.generateKeyPair(CK.mRSAKeyPairGen, publicKey: [
                .bool(0x1, false), .bool(0x106, true), .bool(0x104, false), .bool(0x10A, false), .ulong(0x121, 2048),
                .bytes(0x122, [1, 0, 1])], privateKey: [
                .bool(0x1, false), .bool(0x2, true), .bool(0x103, true), .bool(0x162, true), .bool(0x107, true), .bool(0x105, false),
                .bool(0x108, false)])
            sessionObjects += [pair.public, pair.private]
            switch try session.wrap(.plain(CK.mAESKeyWrapPad), wrappingKey: tek, key: pair.private) {
            case .success(let w): swk = (pair.public, w)
            case .failure(let r): throw PKCS11Error(.callFailed, "wrapping the backup's RSA wrapping key", function: "C_WrapKey", rv: r.rv)
            }
            return pair.public
        }

        // What one object of the token gives: nothing (the PBKs), a skip, or an object. Run twice
        // per object (§9.5 "Memory"): pass 1 decides what is taken and where each private key's
        // public half is; pass 2 makes the entries and spools them.
        enum Examined { case ignored, skipped(SkippedObject), object(TokenObject, signWith: (id: String, keyType: UInt64)?) }
        /// `publicIndex(h, id, keyType)`: the payload index of private key h's public half, given
        /// only when h passed its `sign` check on this token (pass 2).
        func examine(_ h: UInt64, publicIndex: (UInt64, String, UInt64) -> Int?) throws -> Examined {
            guard case .ulong(let cls) = try session.required(h, 0x0, as: .ulong) else { return .ignored }
            let label = try Self.labelOf(session, h)
            if h == p.pbk || h == p.tokenPBK { return .ignored }
            let idHex = Hex.encode(try Self.idOf(session, h))
            var keyType: UInt64?
            if cls == CK.oSecretKey || cls == CK.oPrivateKey || cls == CK.oPublicKey,
               case .success(.ulong(let k)) = try session.attribute(h, 0x100, as: .ulong) { keyType = k }
            func skip(_ rv: UInt64?, _ reason: String) -> Examined {
                .skipped(SkippedObject(label: label, id: idHex, objectClass: CK.className(cls), keyType: keyType.map(CK.keyTypeName),
                                       rv: rv, reason: reason))
            }
            if label.hasPrefix(PKCS11Labels.pbkPrefix) || label.hasPrefix(PKCS11Labels.tokenPBKPrefix) {
                return skip(nil, "an hsmbackup PBK that is not the pair in use (another manufacturer or operator key, or left by an unfinished provision); PBKs are never backed up")
            }
            if cls == CK.oSecretKey || cls == CK.oPrivateKey || cls == CK.oPublicKey, keyType == nil {
                return skip(nil, "the token gives no CKA_KEY_TYPE: the key could not be restored")
            }
            if label.hasPrefix(PKCS11Labels.restoringPrefix) {
                // One that refuses C_DestroyObject stays whatever a restore does: say so, not "the next restore removes it".
                if case .success(.bool(false)) = try session.attribute(h, 0x172, as: .bool) {
                    return skip(nil, "left under the temporary label by an unfinished restore, and CKA_DESTROYABLE is false: no restore can remove it; relabel or remove it with the token's own tools")
                }
                return skip(nil, "left by an unfinished restore (the next restore removes it)")
            }
            guard let specs = AttributeRegistry.specs(forClass: cls) else { return skip(nil, "objects of this class are not backed up") }
            // Nested templates are not carried (§9.4): a key restored without its wrap/unwrap/derive
            // template would be weaker than the original (its unwrap template no longer binds what
            // it unwraps), so such a key is listed, never silently weakened.
            if cls == CK.oSecretKey || cls == CK.oPrivateKey || cls == CK.oPublicKey {
                var templated: [String] = []
                for (t, n) in [(UInt64(0x4000_0211), "CKA_WRAP_TEMPLATE"), (0x4000_0212, "CKA_UNWRAP_TEMPLATE"), (0x4000_0213, "CKA_DERIVE_TEMPLATE")]
                where (try session.attributeLength(h, t) ?? 0) > 0 { templated.append(n) }
                if !templated.isEmpty {
                    return skip(nil, "its \(templated.joined(separator: " and ")) cannot be carried by this version; restored without it the key would be weaker")
                }
            }
            var attrs: [EncodedAttribute] = [], info: [EncodedAttribute] = []
            var values: [UInt64: AttributeValue] = [:]
            for spec in specs {
                let v: AttributeValue
                switch try session.attribute(h, spec.type, as: spec.kind) {
                case .success(let value): v = value
                case .failure(let r):
                    if let n = r.tooLong {
                        return skip(nil, "its \(spec.name) is \(n) bytes, over the \(PKCS11Limits.attributeBytes >> 20) MiB this version reads")
                    }
                    // CKR_ATTRIBUTE_SENSITIVE / CKR_ATTRIBUTE_TYPE_INVALID: the token does not give it.
                    continue
                }
                // Empty dates and an empty mechanism list read back as "none" but are refused in templates.
                if spec.role == .restore, case .bytes(let b) = v, b.isEmpty, spec.type == 0x110 || spec.type == 0x111 { continue }
                if case .ulongs(let u) = v, u.isEmpty { continue }
                values[spec.type] = v
                let e = EncodedAttribute(type: spec.type, name: spec.name, value: Hex.encode(AttributeRegistry.encode(v)))
                if spec.role == .restore { attrs.append(e) } else { info.append(e) }
            }
            var wrapped: WrappedValue?
            var check: KeyCheck?
            var signWith: (id: String, keyType: UInt64)?
            if cls == CK.oSecretKey || cls == CK.oPrivateKey {
                var length: UInt64 = 0
                if case .ulong(let l)? = values[0x161] { length = l }
                let viaSWK = cls == CK.oSecretKey && quirks.contains(PKCS11Labels.quirkKWPZeroPad) && length % 8 != 0
                if viaSWK && length > 214 {
                    return skip(nil, "a secret of \(length) bytes (not a multiple of 8) is beyond RSA-OAEP's capacity and this token's key wrap pads it")
                }
                let mechanism: Mechanism = viaSWK ? .rsaOAEPSHA1 : .plain(CK.mAESKeyWrapPad)
                switch try session.wrap(mechanism, wrappingKey: viaSWK ? try needSWK() : tek, key: h) {
                case .success(var blob):
                    wrapped = WrappedValue(mechanism: viaSWK ? CK.mRSAPKCSOAEP : CK.mAESKeyWrapPad, wrappingKey: viaSWK ? "swk" : "tek",
                                           blob: Hex.encode(blob), valueLength: length)
                    wipe(&blob)
                case .failure(let r):
                    return skip(r.rv, r.rv == 0x6A ? "the key is not extractable" : r.rv == 0x69 ? "the token cannot wrap this key with the backup's token key" : "the token refused to wrap it")
                }
                check = try recordCheck(h, cls: cls, keyType: keyType, values: values)
                // Private keys are checked by signing and verifying with their public half (same
                // CKA_ID and type), recorded only when that check passed here (between the passes).
                if check == nil, cls == CK.oPrivateKey, case .bool(true)? = values[0x108], let keyType, Self.signCheckMechanism(keyType) != nil {
                    signWith = (idHex, keyType)
                    if let pub = publicIndex(h, idHex, keyType) { check = KeyCheck(kind: "sign", value: "", publicKey: pub) }
                }
            }
            return .object(TokenObject(objectClass: cls, className: CK.className(cls), keyType: keyType, keyTypeName: keyType.map(CK.keyTypeName),
                                       attributes: attrs, info: info, wrapped: wrapped, check: check), signWith: signWith)
        }

        // Pass 1: what is taken (handles only), what is skipped, and each public key's index
        // (the first public key of a CKA_ID and key type, in payload order).
        let handles = try session.find([.bool(0x1, true)])
        var taken: [UInt64] = []
        var skipped: [SkippedObject] = []
        var firstPublic: [String: Int] = [:]
        var signCandidates: [(handle: UInt64, id: String, keyType: UInt64)] = []
        var wrappedCount = 0
        for h in handles {
            switch try examine(h, publicIndex: { _, _, _ in nil }) {
            case .ignored: continue
            case .skipped(let o): skipped.append(o)
            case .object(let o, let signWith):
                if let w = signWith { signCandidates.append((h, w.id, w.keyType)) }
                if o.objectClass == CK.oPublicKey, let k = o.keyType {
                    let key = "\(k)/\(o.idHex)"
                    if firstPublic[key] == nil { firstPublic[key] = taken.count }
                }
                if o.wrapped != nil { wrappedCount += 1 }
                taken.append(h)
            }
        }
        // The `sign` checks, run on this token with the restore's mechanism: a key that cannot
        // pass here (DSA, PSS-only, CKA_ALWAYS_AUTHENTICATE, a public half without CKA_VERIFY)
        // gets no check, so its restore counts it unchecked instead of failing every time.
        var signChecked = Set<UInt64>()
        for c in signCandidates {
            guard let pi = firstPublic["\(c.keyType)/\(c.id)"] else { continue }
            do {
                if try Self.runSignCheck(session, key: c.handle, publicKey: taken[pi], keyType: c.keyType) { signChecked.insert(c.handle) }
            } catch let e as PKCS11Error where e.rv.map(Self.signCheckTokenFailures.contains) != true {
                // The key (or the module) refuses the check: its mechanism, a login per use, a
                // missing function. No check; the restore counts the key unchecked.
            }
        }
        signCandidates = []
        if !skipped.isEmpty && !options.allowPartial {
            throw PKCS11Error(.partialBackup, "\(skipped.count) object(s) cannot be backed up; nothing was written (--allow-partial backs up the rest)",
                              skipped: skipped)
        }
        guard taken.count + 2 <= PayloadBundle.tarLimits.maximumEntries, taken.count <= Int(UInt32.max) else {
            throw PKCS11Error(.invalidArgument, "the token holds \(taken.count) objects; a payload holds at most \(PayloadBundle.tarLimits.maximumEntries - 2)")
        }
        let record = TokenRecord(format: TokenRecord.formatName, version: TokenRecord.versionMajor, module: (module.path as NSString).lastPathComponent,
                                 library: library, token: token, quirks: quirks, role: "user", wrappedTEK: Hex.encode(wrappedTEK),
                                 wrappedSWK: swk.map { Hex.encode($0.wrapped) }, objectCount: taken.count, skipped: skipped)
        let report = PKCS11BackupReport(objects: taken.count, wrapped: wrappedCount, clear: taken.count - wrappedCount, skipped: skipped,
                                        quirks: quirks)

        // Pass 2: each entry made again, hashed and sealed into the spool; only its manifest
        // record stays in memory. An object that changed between the passes fails the backup.
        let spool = try EncryptedSpool()
        var records: [PayloadManifest.Record] = []
        records.reserveCapacity(taken.count + 1)
        var recordJSON = try PayloadJSON.encode(record)
        let recordEntry = try TarEntryBytes.entry(path: TokenRecord.path, contents: recordJSON)
        records.append(.init(kind: .policy, path: TokenRecord.path, sha256: Hex.encode(SHA256Hasher.hash(recordJSON)), size: recordJSON.count))
        wipe(&recordJSON)
        for (i, h) in taken.enumerated() {
            let path = String(format: "keys/%06d.json", i + 1)
            guard case .object(let o, _) = try examine(h, publicIndex: { h, id, k in signChecked.contains(h) ? firstPublic["\(k)/\(id)"] : nil }) else {
                throw PKCS11Error(.tokenChanged, "object \(i + 1) of token \"\(token.label)\" changed during the backup; nothing was written")
            }
            var json = try PayloadJSON.encode(o)
            var entry = try TarEntryBytes.entry(path: path, contents: json)
            records.append(.init(kind: .key, path: path, sha256: Hex.encode(SHA256Hasher.hash(json)), size: json.count))
            try spool.append(entry)
            wipe(&json)
            wipe(&entry)
        }
        let manifestEntry = try TarEntryBytes.entry(path: PayloadManifest.path,
                                                    contents: try PayloadManifest(objects: records).canonicalBytes())
        records = []
        let payloadBytes = manifestEntry.count + recordEntry.count + spool.plaintextBytes + TarEntryBytes.endOfArchive

        // The EBK: drawn here, wrapped under the PBK inside the token (KW, exactly §4.2's wrappedEBK).
        let ebk = try EphemeralBackupKey(secret: SecureRandom.secureBytes(count: 32))
        let ebkObject = try session.create([.ulong(0x0, CK.oSecretKey), .ulong(0x100, CK.kGenericSecret), .bool(0x1, false),
                                            .bool(0x103, false), .bool(0x162, true), .secret(0x11, ebk.secret)])
        sessionObjects.append(ebkObject)
        let wrappedEBK: [UInt8]
        switch try session.wrap(.plain(CK.mAESKeyWrap), wrappingKey: p.pbk, key: ebkObject) {
        case .success(let w): wrappedEBK = w
        case .failure(let r): throw PKCS11Error(.callFailed, "wrapping the EBK under the PBK", function: "C_WrapKey", rv: r.rv)
        }
        let descriptor = PayloadDescriptor(chunkSize: UInt32(chunkSize), payloadBytes: UInt64(payloadBytes), userCount: 0,
                                           keyCount: UInt32(report.objects), policyCount: 1)
        let writer = try InnerBlobWriter(metadata: metadata, backupId: SecureRandom.bytes(count: InnerFormat.backupIdByteCount),
                                         createdAt: createdAt ?? UInt64(max(0, Date().timeIntervalSince1970)), payload: descriptor,
                                         pbkFingerprint: p.fingerprint, wrappedEBK: wrappedEBK, ebk: ebk, sink: sink)
        // Every piece handed to the writer is at most EncryptedSpool.pieceBytes (the manifest too).
        var largestPiece = 0
        func put(_ bytes: [UInt8]) throws {
            var at = 0
            while at < bytes.count {
                let n = min(EncryptedSpool.pieceBytes, bytes.count - at)
                largestPiece = max(largestPiece, n)
                try bytes.withUnsafeBytes { try writer.write(UnsafeRawBufferPointer(rebasing: $0[at..<(at + n)])) }
                at += n
            }
        }
        try put(manifestEntry)
        try put(recordEntry)
        try spool.readBack { try put($0) }
        try put([UInt8](repeating: 0, count: TarEntryBytes.endOfArchive))
        try writer.finish()
        lastBackup = report
        lastBackupLargestPiece = largestPiece
        lastBackupPayloadBytes = payloadBytes
        return writer.header
    }

    /// The check value of a secret key, where the key allows one: AES with CKA_ENCRYPT →
    /// AES-ECB KCV; a key with CKA_SIGN → HMAC-SHA256. Nil when neither works.
    func recordCheck(_ h: UInt64, cls: UInt64, keyType: UInt64?, values: [UInt64: AttributeValue]) throws -> KeyCheck? {
        guard cls == CK.oSecretKey else { return nil }
        if keyType == CK.kAES, case .bool(true)? = values[0x104],
           let v = try? session.encrypt(CK.mAESECB, key: h, [UInt8](repeating: 0, count: 16)) {
            return KeyCheck(kind: "aes-ecb-kcv", value: Hex.encode(v.prefix(8)), publicKey: nil)
        }
        if case .bool(true)? = values[0x108], let v = try? session.sign(CK.mSHA256HMAC, key: h, PKCS11Labels.checkMessage) {
            return KeyCheck(kind: "hmac-sha256", value: Hex.encode(v.prefix(8)), publicKey: nil)
        }
        return nil
    }

    /// The mechanism of the `sign` check (§9.6) for a key type; nil for types it does not cover.
    /// Failures of the token or the session, not of the key, during the `sign` check: they fail
    /// the backup instead of silently dropping the check (a transient fault would otherwise leave
    /// a key unchecked for good). Any other refusal means the key cannot be checked.
    /// CKR_HOST_MEMORY, CKR_GENERAL_ERROR, CKR_DEVICE_ERROR, CKR_DEVICE_MEMORY, CKR_DEVICE_REMOVED,
    /// CKR_SESSION_CLOSED, CKR_SESSION_HANDLE_INVALID, CKR_TOKEN_NOT_PRESENT, CKR_CRYPTOKI_NOT_INITIALIZED.
    static let signCheckTokenFailures: Set<UInt64> = [0x02, 0x05, 0x30, 0x31, 0x32, 0xB0, 0xB3, 0xE0, 0x190]

    static func signCheckMechanism(_ keyType: UInt64?) -> UInt64? {
        switch keyType {
        case CK.kEC?: return CK.mECDSA
        case CK.kRSA?: return CK.mSHA256RSAPKCS
        default: return nil
        }
    }

    /// The `sign` check: `key` signs the check message, `publicKey` verifies. False for a bad
    /// signature or an uncovered key type; throws the refusing call's error.
    static func runSignCheck(_ s: PKCS11Session, key: UInt64, publicKey: UInt64, keyType: UInt64?) throws -> Bool {
        guard let mech = signCheckMechanism(keyType) else { return false }
        let sig = try s.sign(mech, key: key, PKCS11Labels.checkMessage)
        return try s.verify(mech, key: publicKey, PKCS11Labels.checkMessage, signature: sig)
    }

    // MARK: restore

    public func beginRestore(dryRun: Bool, archiveContext: [String: String]) throws -> any HSMRestoreSession {
        try PKCS11RestoreSession(hsm: self, dryRun: dryRun, context: archiveContext)
    }
}
