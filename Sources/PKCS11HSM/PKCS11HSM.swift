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
    static func findProvisioning(_ s: PKCS11Session, fingerprint: [UInt8]? = nil) throws -> Provisioning? {
        var template: [Attribute] = [.ulong(0x0, CK.oSecretKey), .bool(0x1, true)]
        if let fingerprint { template.append(.bytes(0x102, fingerprint)) }
        var pbks: [String: (UInt64, [UInt8])] = [:], tpbks: [String: (UInt64, [UInt8])] = [:]
        for h in try s.find(template) {
            let label = try labelOf(s, h)
            if label.hasPrefix(PKCS11Labels.pbkPrefix) {
                pbks[String(label.dropFirst(PKCS11Labels.pbkPrefix.count))] = (h, try idOf(s, h))
            } else if label.hasPrefix(PKCS11Labels.tokenPBKPrefix) {
                tpbks[String(label.dropFirst(PKCS11Labels.tokenPBKPrefix.count))] = (h, try idOf(s, h))
            }
        }
        guard let (mfr, p) = pbks.sorted(by: { $0.key < $1.key }).first, let t = tpbks[mfr], t.1 == p.1 else { return nil }
        return Provisioning(manufacturer: mfr, pbk: p.0, tokenPBK: t.0, fingerprint: p.1)
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

        var objects: [TokenObject] = []
        var skipped: [SkippedObject] = []
        var pendingSign: [(index: Int, id: String, keyType: UInt64)] = []
        for h in try session.find([.bool(0x1, true)]) {
            guard case .ulong(let cls) = try session.required(h, 0x0, as: .ulong) else { continue }
            let label = try Self.labelOf(session, h)
            if h == p.pbk || h == p.tokenPBK { continue }
            if label.hasPrefix(PKCS11Labels.pbkPrefix) || label.hasPrefix(PKCS11Labels.tokenPBKPrefix) { continue }
            let idHex = Hex.encode(try Self.idOf(session, h))
            var keyType: UInt64?
            if cls == CK.oSecretKey || cls == CK.oPrivateKey || cls == CK.oPublicKey,
               case .success(.ulong(let k)) = try session.attribute(h, 0x100, as: .ulong) { keyType = k }
            func skip(_ rv: UInt64?, _ reason: String) {
                skipped.append(SkippedObject(label: label, id: idHex, objectClass: CK.className(cls), keyType: keyType.map(CK.keyTypeName),
                                             rv: rv, reason: reason))
            }
            if label.hasPrefix(PKCS11Labels.restoringPrefix) { skip(nil, "left by an unfinished restore (the next restore removes it)"); continue }
            guard let specs = AttributeRegistry.specs(forClass: cls) else { skip(nil, "objects of this class are not backed up"); continue }
            // Nested templates are not carried (§9.4): a key restored without its wrap/unwrap/derive
            // template would be weaker than the original (its unwrap template no longer binds what
            // it unwraps), so such a key is listed, never silently weakened.
            if cls == CK.oSecretKey || cls == CK.oPrivateKey || cls == CK.oPublicKey {
                var templated: [String] = []
                for (t, n) in [(UInt64(0x4000_0211), "CKA_WRAP_TEMPLATE"), (0x4000_0212, "CKA_UNWRAP_TEMPLATE"), (0x4000_0213, "CKA_DERIVE_TEMPLATE")]
                where (try session.attributeLength(h, t) ?? 0) > 0 { templated.append(n) }
                if !templated.isEmpty {
                    skip(nil, "its \(templated.joined(separator: " and ")) cannot be carried by this version; restored without it the key would be weaker")
                    continue
                }
            }
            var attrs: [EncodedAttribute] = [], info: [EncodedAttribute] = []
            var values: [UInt64: AttributeValue] = [:]
            for spec in specs {
                guard case .success(let v) = try session.attribute(h, spec.type, as: spec.kind) else { continue }
                // Empty dates and an empty mechanism list read back as "none" but are refused in templates.
                if spec.role == .restore, case .bytes(let b) = v, b.isEmpty, spec.type == 0x110 || spec.type == 0x111 { continue }
                if case .ulongs(let u) = v, u.isEmpty { continue }
                values[spec.type] = v
                let e = EncodedAttribute(type: spec.type, name: spec.name, value: Hex.encode(AttributeRegistry.encode(v)))
                if spec.role == .restore { attrs.append(e) } else { info.append(e) }
            }
            var wrapped: WrappedValue?
            var check: KeyCheck?
            if cls == CK.oSecretKey || cls == CK.oPrivateKey {
                var length: UInt64 = 0
                if case .ulong(let l)? = values[0x161] { length = l }
                let viaSWK = cls == CK.oSecretKey && quirks.contains(PKCS11Labels.quirkKWPZeroPad) && length % 8 != 0
                if viaSWK && length > 214 {
                    skip(nil, "a secret of \(length) bytes (not a multiple of 8) is beyond RSA-OAEP's capacity and this token's key wrap pads it")
                    continue
                }
                let mechanism: Mechanism = viaSWK ? .rsaOAEPSHA1 : .plain(CK.mAESKeyWrapPad)
                switch try session.wrap(mechanism, wrappingKey: viaSWK ? try needSWK() : tek, key: h) {
                case .success(let blob):
                    wrapped = WrappedValue(mechanism: viaSWK ? CK.mRSAPKCSOAEP : CK.mAESKeyWrapPad, wrappingKey: viaSWK ? "swk" : "tek",
                                           blob: Hex.encode(blob), valueLength: length)
                case .failure(let r):
                    skip(r.rv, r.rv == 0x6A ? "the key is not extractable" : r.rv == 0x69 ? "the token cannot wrap this key with the backup's token key" : "the token refused to wrap it")
                    continue
                }
                check = try recordCheck(h, cls: cls, keyType: keyType, values: values)
                if check == nil, cls == CK.oPrivateKey, case .bool(true)? = values[0x108], let keyType {
                    pendingSign.append((objects.count, idHex, keyType))
                }
            }
            objects.append(TokenObject(objectClass: cls, className: CK.className(cls), keyType: keyType, keyTypeName: keyType.map(CK.keyTypeName),
                                       attributes: attrs, info: info, wrapped: wrapped, check: check))
        }
        // Private keys are checked by signing and verifying with their public half (same CKA_ID and type).
        for s in pendingSign {
            if let pub = objects.firstIndex(where: { $0.objectClass == CK.oPublicKey && $0.idHex == s.id && $0.keyType == s.keyType }) {
                let o = objects[s.index]
                objects[s.index] = TokenObject(objectClass: o.objectClass, className: o.className, keyType: o.keyType, keyTypeName: o.keyTypeName,
                                               attributes: o.attributes, info: o.info, wrapped: o.wrapped,
                                               check: KeyCheck(kind: "sign", value: "", publicKey: pub))
            }
        }
        if !skipped.isEmpty && !options.allowPartial {
            throw PKCS11Error(.partialBackup, "\(skipped.count) object(s) cannot be backed up; nothing was written (--allow-partial backs up the rest)",
                              skipped: skipped)
        }
        let record = TokenRecord(format: TokenRecord.formatName, version: TokenRecord.versionMajor, module: (module.path as NSString).lastPathComponent,
                                 library: library, token: token, quirks: quirks, role: "user", wrappedTEK: Hex.encode(wrappedTEK),
                                 wrappedSWK: swk.map { Hex.encode($0.wrapped) }, objectCount: objects.count, skipped: skipped)
        let report = PKCS11BackupReport(objects: objects.count, wrapped: objects.filter { $0.wrapped != nil }.count,
                                        clear: objects.filter { $0.wrapped == nil }.count, skipped: skipped, quirks: quirks)
        // Memory: the decoded objects go as soon as they are encoded, the encoded ones once in the tar.
        var payload = [PayloadObject(kind: .policy, path: TokenRecord.path, contents: try PayloadJSON.encode(record))]
        payload.reserveCapacity(objects.count + 1)
        for i in objects.indices {
            payload.append(PayloadObject(kind: .key, path: String(format: "keys/%06d.json", i + 1), contents: try PayloadJSON.encode(objects[i])))
        }
        objects = []
        var tar = try PayloadBundle(objects: payload).tarBytes()
        payload = []
        defer { wipe(&tar) }

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
        let descriptor = PayloadDescriptor(chunkSize: UInt32(chunkSize), payloadBytes: UInt64(tar.count), userCount: 0,
                                           keyCount: UInt32(report.objects), policyCount: 1)
        let writer = try InnerBlobWriter(metadata: metadata, backupId: SecureRandom.bytes(count: InnerFormat.backupIdByteCount),
                                         createdAt: createdAt ?? UInt64(max(0, Date().timeIntervalSince1970)), payload: descriptor,
                                         pbkFingerprint: p.fingerprint, wrappedEBK: wrappedEBK, ebk: ebk, sink: sink)
        try writer.write(tar)
        try writer.finish()
        lastBackup = report
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

    // MARK: restore

    public func beginRestore(dryRun: Bool, archiveContext: [String: String]) throws -> any HSMRestoreSession {
        try PKCS11RestoreSession(hsm: self, dryRun: dryRun, context: archiveContext)
    }
}
