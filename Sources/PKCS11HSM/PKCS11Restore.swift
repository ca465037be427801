import BackupCrypto
import ByteCoding
import Foundation
import HSMArchive

// Restore onto a token (spec/FORMAT.md §9.6): the EBK comes from the token's PBK after the
// manufacturer, the fingerprint and both check values matched; the payload is checked whole;
// then phase 1 unwraps every object as a session object and runs its functional check (that is
// the dry run), and phase 2 makes the token objects under a temporary label, checks them, and
// only then gives them their labels. On any failure every object made is destroyed.

/// Gets the EBK from the token (§4.6 steps 3-5, §9.6 step 1).
struct TokenUnlocker: EBKUnlocker {
    let hsm: PKCS11HSM
    let pbkCheck: [UInt8]
    let tokenPBKCheck: [UInt8]

    func unlockEBK(_ h: InnerHeader) throws -> EphemeralBackupKey {
        guard let mfr = hsm.manufacturerId else {
            throw ArchiveError(.pbkMismatch, "token \"\(hsm.token.label)\" holds no hsmbackup PBK", field: "PBK fingerprint")
        }
        guard h.metadata.manufacturerId == mfr else {
            throw ArchiveError(.wrongManufacturer, "the backup was made by manufacturer \"\(h.metadata.manufacturerId)\"; this token is provisioned for \"\(mfr)\"",
                               offset: InnerFormat.preludeByteCount, field: "manufacturer id")
        }
        guard let p = try PKCS11HSM.findProvisioning(hsm.session, fingerprint: h.pbkFingerprint) else {
            throw ArchiveError(.pbkMismatch, "the token holds no PBK with the archive's fingerprint: another operator key (AKBK) or manufacturer key",
                               field: "PBK fingerprint")
        }
        guard constantTimeEqual(try PKCS11HSM.checkValue(hsm.session, key: p.pbk), pbkCheck),
              constantTimeEqual(try PKCS11HSM.checkValue(hsm.session, key: p.tokenPBK), tokenPBKCheck) else {
            throw ArchiveError(.pbkMismatch, "the token's PBK has the archive's fingerprint but another check value: nothing was unwrapped",
                               field: "PBK fingerprint")
        }
        let s = hsm.session
        let handle: UInt64
        do {
            handle = try s.unwrap(.plain(CK.mAESKeyWrap), unwrappingKey: p.pbk, wrapped: h.wrappedEBK, [
                .ulong(0x0, CK.oSecretKey), .ulong(0x100, CK.kGenericSecret), .bool(0x1, false), .bool(0x103, false), .bool(0x162, true)])
        } catch let e as PKCS11Error {
            throw ArchiveError(.ebkUnwrapFailed, "the token refused to unwrap the EBK (\(e.rvName ?? e.reason))", field: "wrapped EBK")
        }
        defer { try? s.destroy(handle) }
        let value: SecureBytes
        do { value = try s.secretValue(handle) } catch {
            throw ArchiveError(.ebkUnwrapFailed, "the unwrapped EBK cannot be read", field: "wrapped EBK")
        }
        do { return try EphemeralBackupKey(secret: value) } catch {
            throw ArchiveError(.ebkUnwrapFailed, "the unwrapped EBK is not 32 bytes", field: "wrapped EBK")
        }
    }
}

final class PKCS11RestoreSession: HSMRestoreSession {
    private let hsm: PKCS11HSM
    private let dryRun: Bool
    private var opener: InnerBlobOpener!
    private var payload: PayloadReader?
    /// Each payload object is decoded and checked as it arrives, then sealed into the spool
    /// (memory: an offset, a length and a flag byte per object, §9.6 step 3).
    private var record: TokenRecord?
    private let objects: SpooledObjects
    private var failure: Error?

    init(hsm: PKCS11HSM, dryRun: Bool, context: [String: String]) throws {
        self.hsm = hsm
        self.dryRun = dryRun
        objects = try SpooledObjects()
        guard let kcv = context[PKCS11Labels.contextPBKCheck].flatMap(Hex.decode),
              let tkcv = context[PKCS11Labels.contextTokenPBKCheck].flatMap(Hex.decode),
              let mfr = context[PKCS11Labels.contextTokenManufacturer] else {
            throw PKCS11Error(.wrongManufacturer, "the archive is not a PKCS#11 backup (no \(PKCS11Labels.contextPBKCheck) in its context): restore it onto an HSM of its manufacturer")
        }
        guard mfr == hsm.token.manufacturer else {
            throw PKCS11Error(.wrongManufacturer, "the archive comes from a token made by \"\(mfr)\"; this token is made by \"\(hsm.token.manufacturer)\": refused before any unwrap")
        }
        _ = try hsm.requireProvisioned()
        // Taken before the archive is read, so a second restore fails at once (tokenBusy).
        if !dryRun { try hsm.lockForRestore() }
        opener = InnerBlobOpener(unlocker: TokenUnlocker(hsm: hsm, pbkCheck: kcv, tokenPBKCheck: tkcv), onHeader: { [unowned self] h in
            self.payload = PayloadReader(descriptor: h.payload) { [unowned self] o in try self.add(o) }
        }, payloadSink: { [unowned self] piece in try self.payload!.feed(piece) })
    }

    var header: InnerHeader? { opener.header }

    private func add(_ o: PayloadObject) throws {
        guard record != nil else { record = try PKCS11Payload.decodeRecord(o); return }
        guard o.kind == .key else { throw PKCS11Error(.malformedObject, "\(o.path): a PKCS#11 payload holds only key entries after the record") }
        try objects.append(try PayloadJSON.decode(TokenObject.self, o.contents, what: o.path), json: o.contents)
    }

    deinit { if !dryRun { hsm.releaseRestoreLock() } }

    func feed(_ bytes: [UInt8]) throws {
        if let failure { throw failure }
        do { try opener.feed(bytes) } catch {
            let e = payload?.earlierFailure() ?? error
            failure = e
            throw e
        }
    }

    func finish() throws -> RestoreSummary {
        if let failure { throw failure }
        do { try opener.finish() } catch { throw payload?.earlierFailure() ?? error }
        _ = try payload!.finish()
        let header = opener.header!
        guard let record else { throw PKCS11Error(.malformedObject, "the payload is empty: not a PKCS#11 payload") }
        guard objects.count == record.objectCount else {
            throw PKCS11Error(.malformedObject, "the record counts \(record.objectCount) objects; the payload has \(objects.count)")
        }
        try hsm.apply(record: record, source: PKCS11HSM.ObjectSource(count: objects.count, flags: objects.flags, load: objects.object),
                      restoreId: Hex.encode(header.backupId), dryRun: dryRun)
        return RestoreSummary(backupId: Hex.encode(header.backupId), createdAt: header.createdAt, sourceHSM: header.metadata.hsmId,
                              policies: 0, users: 0, keys: objects.count, chunks: opener.chunkCount, dryRun: dryRun)
    }
}

public enum PKCS11Payload {
    /// The payload's objects as the PKCS#11 payload grammar reads them (§9.4): the token record
    /// first, then one token object per key entry; canonical JSON each.
    public static func decode(_ objects: [PayloadObject]) throws -> (TokenRecord, [TokenObject]) {
        var d = ObjectDecoder()
        for o in objects { try d.add(o) }
        return try d.finish()
    }

    /// The same, one object at a time, in payload order.
    public struct ObjectDecoder {
        var record: TokenRecord?
        var objects: [TokenObject] = []
        public init() {}

        public mutating func add(_ o: PayloadObject) throws {
            if record == nil {
                record = try PKCS11Payload.decodeRecord(o)
                return
            }
            guard o.kind == .key else { throw PKCS11Error(.malformedObject, "\(o.path): a PKCS#11 payload holds only key entries after the record") }
            objects.append(try PayloadJSON.decode(TokenObject.self, o.contents, what: o.path))
        }

        public func finish() throws -> (TokenRecord, [TokenObject]) {
            guard let record else { throw PKCS11Error(.malformedObject, "the payload is empty: not a PKCS#11 payload") }
            guard objects.count == record.objectCount else {
                throw PKCS11Error(.malformedObject, "the record counts \(record.objectCount) objects; the payload has \(objects.count)")
            }
            return (record, objects)
        }
    }

    static func decodeRecord(_ first: PayloadObject) throws -> TokenRecord {
        guard first.kind == .policy, first.path == TokenRecord.path else {
            throw PKCS11Error(.malformedObject, "the payload's first object is not \(TokenRecord.path): not a PKCS#11 payload")
        }
        guard let probe = try? JSONDecoder().decode([String: AnyCodableProbe].self, from: Data(first.contents)),
              case .string(TokenRecord.formatName)? = probe["format"] else {
            throw PKCS11Error(.malformedObject, "\(TokenRecord.path) is not an \(TokenRecord.formatName) record")
        }
        guard case .int(TokenRecord.versionMajor)? = probe["version"] else {
            throw PKCS11Error(.unsupportedVersion, "\(TokenRecord.path) has a PKCS#11 payload version this reader does not know")
        }
        return try PayloadJSON.decode(TokenRecord.self, first.contents, what: TokenRecord.path)
    }

    /// Just enough JSON to read `format` and `version` before the strict decode.
    enum AnyCodableProbe: Decodable {
        case string(String), int(Int), other
        init(from decoder: Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let s = try? c.decode(String.self) { self = .string(s) } else if let i = try? c.decode(Int.self) { self = .int(i) } else { self = .other }
        }
    }
}

extension PKCS11HSM {
    /// Takes the token's restore lock unless this instance holds it (TokenLock, §9.6).
    func lockForRestore() throws {
        if restoreLock == nil { restoreLock = try TokenLock.acquire(modulePath: module.path, token: token) }
    }

    func releaseRestoreLock() {
        restoreLock?.release()
        restoreLock = nil
    }

    /// A test hook (`HSMBACKUP_TEST_PKCS11_PAUSE=between:FILE` or `phase2:N:FILE`): writes FILE and
    /// waits to be killed, between the phases or after N token objects of phase 2. Compiled only
    /// when HSMBACKUP_TEST_HOOKS is defined, which Package.swift does for debug builds alone
    /// (`make test` builds debug): a release binary ignores the variable (§9.6).
    func pauseHook(_ point: String, made: Int = 0) {
        #if HSMBACKUP_TEST_HOOKS
        // getenv, not ProcessInfo.environment: that would copy every variable (the PIN's too) into Strings.
        guard let raw = getenv("HSMBACKUP_TEST_PKCS11_PAUSE") else { return }
        let v = String(cString: raw)
        let parts = v.split(separator: ":", maxSplits: 2).map(String.init)
        let hit = (parts.count == 2 && parts[0] == "between" && point == "between")
            || (parts.count == 3 && parts[0] == "phase2" && point == "phase2" && Int(parts[1]) == made)
        guard hit, let file = parts.last else { return }
        _ = FileManager.default.createFile(atPath: file, contents: Data("paused \(point)\n".utf8))
        for _ in 0..<600 { usleep(100_000) }
        #endif
    }

    /// Removes objects an earlier restore left under its temporary label (it was killed in phase 2).
    /// One that refuses C_DestroyObject (CKA_DESTROYABLE false, from an earlier version that gave
    /// such objects the temporary label) is skipped and named, so it cannot block every restore.
    func removeStaleRestoreObjects() throws -> (removed: Int, left: [String]) {
        var n = 0
        var left: [String] = []
        for h in try session.find([.bool(0x1, true)]) {
            let label = try Self.labelOf(session, h)
            guard label.hasPrefix(PKCS11Labels.restoringPrefix) else { continue }
            do {
                try session.destroy(h)
                n += 1
            } catch let e as PKCS11Error where e.rv == 0x1B {
                left.append(label)
            }
        }
        return (n, left)
    }

    /// Objects on the token with the same class, label and CKA_ID (the duplicate policy, §9.6).
    func existing(_ o: TokenObject) throws -> [UInt64] {
        var t: [Attribute] = [.ulong(0x0, o.objectClass), .bool(0x1, true), .bytes(0x3, o.labelBytes)]
        if let id = Hex.decode(o.idHex), !o.idHex.isEmpty { t.append(.bytes(0x102, id)) }
        if let k = o.keyType { t.append(.ulong(0x100, k)) }
        return try session.find(t)
    }

    /// Checks and applies a decoded payload (§9.6). Public for the tests that damage the wrapped
    /// blobs themselves (which the archive's own authentication otherwise protects).
    public func apply(record: TokenRecord, objects: [TokenObject], restoreId: String, dryRun: Bool) throws {
        let flags = objects.map { o -> UInt8 in
            (o.attributes.contains { $0.type == 0x170 && $0.value == "00" } ? 1 : 0) | (o.attributes.contains { $0.type == 0x172 && $0.value == "00" } ? 2 : 0)
        }
        try apply(record: record, source: ObjectSource(count: objects.count, flags: flags, load: { objects[$0] }), restoreId: restoreId, dryRun: dryRun)
    }

    /// The payload's objects as apply reads them: by index, one at a time (the restore keeps them
    /// sealed in a spool; the tests hand an array). Flags: bit 0 CKA_MODIFIABLE false, bit 1
    /// CKA_DESTROYABLE false.
    struct ObjectSource {
        let count: Int
        let flags: [UInt8]
        let load: (Int) throws -> TokenObject
    }

    func apply(record: TokenRecord, source src: ObjectSource, restoreId: String, dryRun: Bool) throws {
        let p = try requireProvisioned()
        // The whole restore holds the token's lock: phase 2 removes every object under the
        // temporary label, which must never be another running restore's (§9.6).
        if !dryRun { try lockForRestore() }
        defer { if !dryRun { releaseRestoreLock() } }
        let s = session
        // Token objects made by phase 2 (handle, object index). The rollback names what it could not destroy.
        var made: [(UInt64, Int)] = []
        func rollBack(after error: Error) -> (error: Error, complete: Bool) {
            var left: [String] = []
            for (h, i) in made.reversed() {
                do { try s.destroy(h) } catch {
                    let name = (try? src.load(i)).map { "\($0.className) \"\($0.label)\"" } ?? "object \(i + 1)"
                    left.append("\(name) (\((error as? PKCS11Error)?.rvName ?? "\(error)"))")
                }
            }
            made = []
            guard !left.isEmpty else { return (error, true) }
            let note = "; the rollback could not destroy \(left.count) object(s), left on the token: " + left.joined(separator: ", ")
            if let e = error as? PKCS11Error { return (PKCS11Error(e.code, e.reason + note, function: e.function, rv: e.rv, skipped: e.skipped), false) }
            return (PKCS11Error(.callFailed, "\(error)" + note, function: "C_DestroyObject"), false)
        }
        var keys: [UInt64] = []
        defer { for h in keys { try? s.destroy(h) } }

        // Duplicates are refused before anything is made (--replace replaces them at the end).
        // Each token object once: two archived objects with the same class, label and CKA_ID
        // (which PKCS#11 allows) find the same ones, and --replace destroys each only once.
        var duplicates: [UInt64] = []
        var seenDuplicates = Set<UInt64>()
        for i in 0..<src.count { for h in try existing(try src.load(i)) where seenDuplicates.insert(h).inserted { duplicates.append(h) } }
        // --replace cannot replace what refuses C_DestroyObject: refused before anything is made,
        // not found out at the end with both copies on the token.
        let fixed = dryRun ? [] : try duplicates.filter { if case .success(.bool(false)) = try s.attribute($0, 0x172, as: .bool) { return true }; return false }
        // A restore killed in phase 2 may have given some objects their final labels: they are
        // among the duplicates, and the refusal says where they come from and, when --replace
        // can, that it finishes the job.
        let interrupted = dryRun ? nil : restoreLock?.interruptedRestore()
        let interruptedNote = interrupted.map {
            "; an earlier restore onto this token was interrupted in phase 2 (\($0)): objects it labelled are among these"
                + (fixed.isEmpty ? ", so running that restore again with --replace completes it" : "")
        } ?? ""
        func names(_ hs: [UInt64]) throws -> String {
            try hs.prefix(5).map { "\"\(try Self.labelOf(s, $0))\"" }.joined(separator: ", ") + (hs.count > 5 ? ", ..." : "")
        }
        if !duplicates.isEmpty && !options.replace && !dryRun {
            throw PKCS11Error(.duplicateObject, "\(duplicates.count) object(s) with the same class, label and CKA_ID already exist on token \"\(token.label)\" (\(try names(duplicates))); nothing was changed (--replace replaces them"
                              + (fixed.isEmpty ? ")" : " only when none has CKA_DESTROYABLE false; \(fixed.count) of these do, and only the token's own tools can remove them)") + interruptedNote)
        }
        if options.replace && !dryRun && !fixed.isEmpty {
            throw PKCS11Error(.duplicateObject, "\(fixed.count) object(s) to replace on token \"\(token.label)\" have CKA_DESTROYABLE false (\(try names(fixed))), so --replace cannot replace them; nothing was changed; only the token's own tools can remove them" + interruptedNote)
        }
        guard let wrappedTEK = Hex.decode(record.wrappedTEK) else { throw PKCS11Error(.malformedObject, "wrappedTEK is not hex") }
        let tek: UInt64
        do {
            tek = try s.unwrap(.plain(CK.mAESKeyWrap), unwrappingKey: p.tokenPBK, wrapped: wrappedTEK, Self.tekTemplate)
        } catch let e as PKCS11Error {
            throw PKCS11Error(.callFailed, "the token refused to unwrap the backup's token key", function: "C_UnwrapKey", rv: e.rv)
        }
        keys.append(tek)
        var swk: UInt64?
        if let w = record.wrappedSWK {
            guard let blob = Hex.decode(w) else { throw PKCS11Error(.malformedObject, "wrappedSWK is not hex") }
            do {
                swk = try s.unwrap(.plain(CK.mAESKeyWrapPad), unwrappingKey: tek, wrapped: blob, [
                    .ulong(0x0, CK.oPrivateKey), .ulong(0x100, CK.kRSA), .bool(0x1, false), .bool(0x2, true), .bool(0x103, true),
                    .bool(0x162, false), .bool(0x107, true), .bool(0x105, false), .bool(0x108, false)])
            } catch let e as PKCS11Error {
                throw PKCS11Error(.callFailed, "the token refused to unwrap the backup's RSA wrapping key", function: "C_UnwrapKey", rv: e.rv)
            }
            keys.append(swk!)
        }

        // Phase 2 makes non-modifiable objects after the others (they cannot take the temporary
        // label, so a kill after them leaves objects under their final labels), and
        // non-destroyable ones last, under their final labels, once every other object passed its
        // check (neither a rollback nor the next restore's sweep could remove them).
        func rank(_ i: Int) -> Int { src.flags[i] & 2 != 0 ? 2 : src.flags[i] & 1 != 0 ? 1 : 0 }
        let order = (0..<src.count).sorted { a, b in (rank(a), a) < (rank(b), b) }

        func make(_ i: Int, token onToken: Bool) throws -> UInt64 {
            let o = try src.load(i)
            var t: [Attribute] = [.ulong(0x0, o.objectClass)]
            if let k = o.keyType { t.append(.ulong(0x100, k)) }
            t.append(.bool(0x1, onToken))
            let modifiable = !o.attributes.contains { $0.type == 0x170 && $0.value == "00" }
            let destroyable = !o.attributes.contains { $0.type == 0x172 && $0.value == "00" }
            for a in try o.restoreAttributes() {
                if a.type == 0x3, onToken, modifiable, destroyable {
                    t.append(.bytes(0x3, Array((PKCS11Labels.restoringPrefix + restoreId + "/").utf8) + o.labelBytes))
                    continue
                }
                t.append(a)
            }
            do {
                if let w = o.wrapped {
                    guard o.objectClass == CK.oSecretKey || o.objectClass == CK.oPrivateKey else {
                        throw PKCS11Error(.malformedObject, "object \(i + 1): only secret and private keys carry a wrapped value")
                    }
                    guard let blob = Hex.decode(w.blob) else { throw PKCS11Error(.malformedObject, "object \(i + 1): blob is not hex") }
                    switch (w.wrappingKey, w.mechanism) {
                    case ("tek", CK.mAESKeyWrapPad):
                        return try s.unwrap(.plain(CK.mAESKeyWrapPad), unwrappingKey: tek, wrapped: blob, t)
                    case ("swk", CK.mRSAPKCSOAEP):
                        guard let swk else { throw PKCS11Error(.malformedObject, "object \(i + 1) needs the RSA wrapping key the record lacks") }
                        return try s.unwrap(.rsaOAEPSHA1, unwrappingKey: swk, wrapped: blob, t)
                    default:
                        throw PKCS11Error(.malformedObject, "object \(i + 1): wrapping \(w.wrappingKey)/0x\(String(w.mechanism, radix: 16)) unknown")
                    }
                }
                guard o.objectClass != CK.oSecretKey && o.objectClass != CK.oPrivateKey else {
                    throw PKCS11Error(.malformedObject, "object \(i + 1): a secret or private key without a wrapped value")
                }
                return try s.create(t)
            } catch let e as PKCS11Error where e.code == .callFailed {
                throw PKCS11Error(.callFailed, "object \(i + 1) (\(o.className) \"\(o.label)\") could not be \(onToken ? "created on the token" : "unwrapped")",
                                  function: e.function, rv: e.rv)
            }
        }

        enum Outcome { case checked, unchecked, none }
        /// Object i's functional check on handle h (`handles` gives the public halves).
        func checkOne(_ i: Int, _ o: TokenObject, _ h: UInt64, _ handles: [Int: UInt64]) throws -> Outcome {
            guard let c = o.check else { return o.wrapped != nil ? .unchecked : .none }
            let ok: Bool
            switch c.kind {
            case "aes-ecb-kcv":
                ok = (try? s.encrypt(CK.mAESECB, key: h, [UInt8](repeating: 0, count: 16))).map { Hex.encode($0.prefix(8)) == c.value } ?? false
            case "hmac-sha256":
                ok = (try? s.sign(CK.mSHA256HMAC, key: h, PKCS11Labels.checkMessage)).map { Hex.encode($0.prefix(8)) == c.value } ?? false
            case "sign":
                guard let pi = c.publicKey, let ph = handles[pi], (0..<src.count).contains(pi) else { return .unchecked }
                // An earlier version recorded `sign` for key types the check does not cover (DSA):
                // such a key is unchecked, not failed.
                guard let mech = Self.signCheckMechanism(o.keyType) else { return .unchecked }
                // So did it for keys the check cannot pass on any token, which the archive's own
                // attributes show: unchecked too, or such an archive would never restore.
                if o.bool(0x202) == true || o.ulongs(0x4000_0600).map({ !$0.isEmpty && !$0.contains(mech) }) == true
                    || (try? src.load(pi))?.bool(0x10A) == false {
                    return .unchecked
                }
                do { ok = try Self.runSignCheck(s, key: h, publicKey: ph, keyType: o.keyType) } catch let e as PKCS11Error {
                    throw PKCS11Error(.checkFailed, "object \(i + 1) (\(o.className) \"\(o.label)\") failed its sign check after unwrapping",
                                      function: e.function, rv: e.rv)
                }
            default:
                throw PKCS11Error(.malformedObject, "object \(i + 1): check kind \"\(c.kind)\" unknown")
            }
            guard ok else {
                throw PKCS11Error(.checkFailed, "object \(i + 1) (\(o.className) \"\(o.label)\") failed its \(c.kind) check after unwrapping")
            }
            return .checked
        }

        /// The checks of objects `indices`; a `sign` check whose public half is in `later` is
        /// returned in `deferred` instead (it runs once that half exists).
        func runChecks(_ handles: [Int: UInt64], _ indices: [Int], deferring later: Set<Int> = []) throws -> (checked: Int, unchecked: Int, deferred: [Int]) {
            var checked = 0, unchecked = 0
            var deferred: [Int] = []
            for i in indices {
                let o = try src.load(i)
                if let c = o.check, c.kind == "sign", let pi = c.publicKey, later.contains(pi) { deferred.append(i); continue }
                guard let h = handles[i] else { if o.wrapped != nil { unchecked += 1 }; continue }
                switch try checkOne(i, o, h, handles) {
                case .checked: checked += 1
                case .unchecked: unchecked += 1
                case .none: break
                }
            }
            return (checked, unchecked, deferred)
        }

        // Phase 1: everything as session objects, checked. This is the dry run. Each object is
        // checked as soon as it is made and destroyed at once, except public keys a `sign` check
        // still needs (and private keys waiting for theirs), so the module never holds every
        // object twice (memory, §9.5).
        var neededPublic = Set<Int>()
        for i in 0..<src.count { if let c = try src.load(i).check, c.kind == "sign", let pi = c.publicKey { neededPublic.insert(pi) } }
        var phase1Live = Set<UInt64>()
        var livePublic: [Int: UInt64] = [:]
        var waiting: [Int: [(Int, UInt64)]] = [:]
        var phase1 = (checked: 0, unchecked: 0)
        func tally(_ r: Outcome) {
            switch r {
            case .checked: phase1.checked += 1
            case .unchecked: phase1.unchecked += 1
            case .none: break
            }
        }
        func drop(_ h: UInt64) { try? s.destroy(h); phase1Live.remove(h) }
        do {
            for i in order {
                let h = try make(i, token: false)
                phase1Live.insert(h)
                let o = try src.load(i)
                if neededPublic.contains(i) {
                    livePublic[i] = h
                    for (j, hj) in waiting.removeValue(forKey: i) ?? [] {
                        tally(try checkOne(j, try src.load(j), hj, livePublic))
                        drop(hj)
                    }
                }
                if let c = o.check, c.kind == "sign", let pi = c.publicKey, livePublic[pi] == nil, neededPublic.contains(pi) {
                    waiting[pi, default: []].append((i, h))
                    continue
                }
                tally(try checkOne(i, o, h, livePublic))
                if !neededPublic.contains(i) { drop(h) }
            }
            // A private key whose public half never came is unchecked (as when the archive lacks it).
            for (_, list) in waiting { for (j, hj) in list { tally(try checkOne(j, try src.load(j), hj, livePublic)) } }
        } catch {
            for h in phase1Live { try? s.destroy(h) }
            throw error
        }
        for h in phase1Live { try? s.destroy(h) }
        if dryRun {
            lastRestore = PKCS11RestoreReport(objects: src.count, checked: phase1.checked, unchecked: phase1.unchecked, replaced: 0, recoveredStale: 0,
                                              staleLeft: [], dryRun: true, skippedAtBackup: record.skipped)
            return
        }
        pauseHook("between")
        // The journal first: the sweep below already changes the token. If the sweep fails, an
        // earlier interrupted restore's journal is put back: this one labelled nothing.
        try restoreLock?.beginJournal(backupId: restoreId, token: token)
        let stale: (removed: Int, left: [String])
        do { stale = try removeStaleRestoreObjects() } catch {
            if let interrupted { restoreLock?.restoreJournal(interrupted) } else { restoreLock?.endJournal() }
            throw error
        }

        // Phase 2: token objects under the temporary label, checked, then the non-destroyable
        // ones under their final labels, checked, then the labels set, then the old ones
        // (--replace) removed. Any failure before that destroys all it can of what it made.
        let late = order.filter { src.flags[$0] & 2 != 0 }
        let early = order.filter { src.flags[$0] & 2 == 0 }
        var tokenHandles: [Int: UInt64] = [:]
        var relabel: [(UInt64, Int)] = []
        var result = (checked: 0, unchecked: 0)
        func makeOnToken(_ i: Int) throws {
            let h = try make(i, token: true)
            made.append((h, i))
            tokenHandles[i] = h
            pauseHook("phase2", made: made.count)
            if src.flags[i] & 3 == 0 { relabel.append((h, i)) }
        }
        do {
            for i in early { try makeOnToken(i) }
            let first = try runChecks(tokenHandles, early, deferring: Set(late))
            for i in late { try makeOnToken(i) }
            let second = try runChecks(tokenHandles, late + first.deferred)
            result = (first.checked + second.checked, first.unchecked + second.unchecked)
            for (h, i) in relabel { try s.setAttributes(h, [.bytes(0x3, try src.load(i).labelBytes)]) }
        } catch {
            let (e, complete) = rollBack(after: error)
            // Wholly rolled back: nothing of this restore is left to explain.
            if complete { restoreLock?.endJournal() }
            throw e
        }
        made = []
        // The new objects are complete: only now are the ones they replace destroyed, so a
        // failure can leave both (reported), never neither.
        var notReplaced = 0
        for h in duplicates where (try? s.destroy(h)) == nil { notReplaced += 1 }
        // Done (an old journal too: its leftovers were swept, or replaced as duplicates).
        restoreLock?.endJournal()
        if notReplaced > 0 {
            throw PKCS11Error(.callFailed, "the restore is complete, but \(notReplaced) of the \(duplicates.count) objects it replaces could not be destroyed: the token holds both copies of those",
                              function: "C_DestroyObject")
        }
        lastRestore = PKCS11RestoreReport(objects: src.count, checked: result.checked, unchecked: result.unchecked,
                                          replaced: duplicates.count, recoveredStale: stale.removed, staleLeft: stale.left, dryRun: false,
                                          skippedAtBackup: record.skipped)
    }
}
