import BackupCrypto
import CPKCS11

/// An attribute value, typed the way the archive encodes it (spec §9.4): never raw host-order
/// CK_ULONG bytes.
public enum AttributeValue: Equatable, Sendable {
    case bool(Bool)
    case ulong(UInt64)
    case bytes([UInt8])
    /// An array of CK_ULONG (CKA_ALLOWED_MECHANISMS).
    case ulongs([UInt64])
    /// A nested template (CKA_WRAP_TEMPLATE / CKA_UNWRAP_TEMPLATE); written, never read back.
    case template([Attribute])
    /// A secret value (CKA_VALUE of a key this process imports): copied into the template's
    /// own buffer, which is wiped after the call; never held in an unwiped array.
    case secret(SecureBytes)

    public static func == (a: AttributeValue, b: AttributeValue) -> Bool {
        switch (a, b) {
        case let (.bool(x), .bool(y)): return x == y
        case let (.ulong(x), .ulong(y)): return x == y
        case let (.bytes(x), .bytes(y)): return x == y
        case let (.ulongs(x), .ulongs(y)): return x == y
        case let (.template(x), .template(y)): return x == y
        case let (.secret(x), .secret(y)): return x === y
        default: return false
        }
    }
}

public struct Attribute: Equatable, Sendable {
    public let type: UInt64
    public let value: AttributeValue
    public init(_ type: UInt64, _ value: AttributeValue) {
        self.type = type
        self.value = value
    }
    public static func bool(_ t: UInt64, _ v: Bool) -> Attribute { Attribute(t, .bool(v)) }
    public static func ulong(_ t: UInt64, _ v: UInt64) -> Attribute { Attribute(t, .ulong(v)) }
    public static func bytes(_ t: UInt64, _ v: [UInt8]) -> Attribute { Attribute(t, .bytes(v)) }
    public static func secret(_ t: UInt64, _ v: SecureBytes) -> Attribute { Attribute(t, .secret(v)) }
}

/// A CK_ATTRIBUTE array whose value buffers this object owns; wiped and freed in deinit, so
/// every pointer outlives the call that uses it.
final class CTemplate {
    let pointer: UnsafeMutablePointer<CK_ATTRIBUTE>
    let count: Int
    private var buffers: [(UnsafeMutableRawPointer, Int)] = []
    private var nested: [CTemplate] = []

    init(_ attributes: [Attribute]) throws {
        count = attributes.count
        pointer = .allocate(capacity: max(1, attributes.count))
        for (i, a) in attributes.enumerated() {
            let (p, n): (UnsafeMutableRawPointer?, Int)
            switch a.value {
            case .bool(let b):
                let buf = alloc(1)
                buf.storeBytes(of: CK_BBOOL(b ? 1 : 0), as: CK_BBOOL.self)
                (p, n) = (buf, 1)
            case .ulong(let u):
                guard let v = CK_ULONG(exactly: u) else { throw PKCS11Error(.invalidArgument, "attribute 0x\(String(a.type, radix: 16)) value \(u) does not fit a CK_ULONG here") }
                let buf = alloc(MemoryLayout<CK_ULONG>.size)
                buf.storeBytes(of: v, as: CK_ULONG.self)
                (p, n) = (buf, MemoryLayout<CK_ULONG>.size)
            case .bytes(let bytes):
                let buf = alloc(max(1, bytes.count))
                bytes.withUnsafeBytes { if !$0.isEmpty { buf.copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
                (p, n) = (bytes.isEmpty ? nil : buf, bytes.count)
            case .secret(let secret):
                let buf = alloc(max(1, secret.count))
                secret.withUnsafeBytes { if !$0.isEmpty { buf.copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
                (p, n) = (buf, secret.count)
            case .ulongs(let us):
                let size = MemoryLayout<CK_ULONG>.size
                let buf = alloc(max(1, us.count * size))
                for (j, u) in us.enumerated() {
                    guard let v = CK_ULONG(exactly: u) else { throw PKCS11Error(.invalidArgument, "mechanism \(u) does not fit a CK_ULONG here") }
                    buf.storeBytes(of: v, toByteOffset: j * size, as: CK_ULONG.self)
                }
                (p, n) = (buf, us.count * size)
            case .template(let inner):
                let t = try CTemplate(inner)
                nested.append(t)
                (p, n) = (UnsafeMutableRawPointer(t.pointer), t.count * MemoryLayout<CK_ATTRIBUTE>.stride)
            }
            (pointer + i).initialize(to: CK_ATTRIBUTE(type: CK_ATTRIBUTE_TYPE(a.type), pValue: p, ulValueLen: CK_ULONG(n)))
        }
    }

    private func alloc(_ n: Int) -> UnsafeMutableRawPointer {
        let p = UnsafeMutableRawPointer.allocate(byteCount: n, alignment: 16)
        buffers.append((p, n))
        return p
    }

    deinit {
        for (p, n) in buffers {
            memset_s(p, n)
            p.deallocate()
        }
        pointer.deinitialize(count: count)
        pointer.deallocate()
    }
}

/// Wipes `n` bytes in a way the optimizer keeps.
@inline(never) func memset_s(_ p: UnsafeMutableRawPointer, _ n: Int) {
    let v = p.bindMemory(to: UInt8.self, capacity: n)
    for i in 0..<n { (v + i).pointee = 0 }
}

/// A mechanism with an optional parameter block this side owns for the call.
public enum Mechanism: Sendable {
    case plain(UInt64)
    /// CKM_RSA_PKCS_OAEP with SHA-1 / MGF1-SHA1 and no label (the one SoftHSM 2.6 wraps with).
    case rsaOAEPSHA1
    /// A mechanism whose parameter is a byte string (an IV for CKM_AES_CBC_PAD).
    case withParameter(UInt64, [UInt8])

    func with<R>(_ body: (UnsafeMutablePointer<CK_MECHANISM>) throws -> R) rethrows -> R {
        switch self {
        case .plain(let m):
            var mech = CK_MECHANISM(mechanism: CK_MECHANISM_TYPE(m), pParameter: nil, ulParameterLen: 0)
            return try body(&mech)
        case .withParameter(let m, let bytes):
            var copy = bytes
            return try copy.withUnsafeMutableBytes { raw in
                var mech = CK_MECHANISM(mechanism: CK_MECHANISM_TYPE(m), pParameter: raw.baseAddress, ulParameterLen: CK_ULONG(raw.count))
                return try body(&mech)
            }
        case .rsaOAEPSHA1:
            var params = CK_RSA_PKCS_OAEP_PARAMS(hashAlg: CK_MECHANISM_TYPE(CK.mSHA1), mgf: CK_RSA_PKCS_MGF_TYPE(CKG_MGF1_SHA1),
                                                 source: CK_RSA_PKCS_OAEP_SOURCE_TYPE(CKZ_DATA_SPECIFIED), pSourceData: nil,
                                                 ulSourceDataLen: 0)
            return try withUnsafeMutablePointer(to: &params) { pp in
                var mech = CK_MECHANISM(mechanism: CK_MECHANISM_TYPE(CK.mRSAPKCSOAEP), pParameter: UnsafeMutableRawPointer(pp),
                                        ulParameterLen: CK_ULONG(MemoryLayout<CK_RSA_PKCS_OAEP_PARAMS>.size))
                return try body(&mech)
            }
        }
    }
}

/// How an attribute's bytes are read back (the archive's encoding follows from it).
public enum AttributeKind: String, Sendable {
    case bool, ulong, bytes, ulongs
}

/// One read/write session. Closed in deinit. Login state belongs to the application, not the
/// session (PKCS#11 2.40 §5.6): deinit does not log out, since that would log out every other
/// session of this process on the token; closing the last session ends the login.
public final class PKCS11Session {
    public let module: PKCS11Module
    let handle: CK_SESSION_HANDLE
    private var loggedIn = false
    private var f: CK_FUNCTION_LIST { module.functions.pointee }

    init(module: PKCS11Module, handle: CK_SESSION_HANDLE) {
        self.module = module
        self.handle = handle
    }

    deinit {
        if let close = f.C_CloseSession { _ = close(handle) }
    }

    private func need<F>(_ fn: F?, _ name: String) throws -> F { try PKCS11Module.need(fn, name) }
    private func check(_ rv: CK_RV, _ name: String, _ what: @autoclosure () -> String) throws {
        try PKCS11Module.check(rv, name, what())
    }

    /// Logs in as `user` (CKU_SO or CKU_USER) with a PIN that is never copied into a String.
    public func login(user: UInt64, pin: SecureBytes) throws {
        let login = try need(f.C_Login, "C_Login")
        let rv = pin.withUnsafeBytes { raw in
            login(handle, CK_USER_TYPE(user), UnsafeMutablePointer(mutating: raw.bindMemory(to: CK_UTF8CHAR.self).baseAddress),
                  CK_ULONG(raw.count))
        }
        if rv == CKR_USER_ALREADY_LOGGED_IN { loggedIn = true; return }
        guard rv == CKR_OK else {
            let who = user == CK.userSO ? "security officer" : "user"
            throw PKCS11Error(.loginFailed, "the token refused the \(who) PIN", function: "C_Login", rv: UInt64(rv))
        }
        loggedIn = true
    }

    public func logout() {
        if loggedIn, let logout = f.C_Logout { _ = logout(handle) }
        loggedIn = false
    }

    /// Handles of the objects matching `template` (all visible objects for an empty one).
    public func find(_ template: [Attribute]) throws -> [UInt64] {
        let t = try CTemplate(template)
        try check(try need(f.C_FindObjectsInit, "C_FindObjectsInit")(handle, t.pointer, CK_ULONG(t.count)), "C_FindObjectsInit", "searching objects")
        defer { _ = f.C_FindObjectsFinal?(handle) }
        let findObjects = try need(f.C_FindObjects, "C_FindObjects")
        var out: [UInt64] = []
        var batch = [CK_OBJECT_HANDLE](repeating: 0, count: 256)
        while true {
            var n: CK_ULONG = 0
            try check(findObjects(handle, &batch, CK_ULONG(batch.count), &n), "C_FindObjects", "searching objects")
            if n == 0 { break }
            guard UInt64(n) <= UInt64(batch.count) else {
                throw PKCS11Error(.callFailed, "searching objects: the token returned \(n) handles for \(batch.count) places", function: "C_FindObjects")
            }
            out.append(contentsOf: batch.prefix(Int(n)).map { UInt64($0) })
        }
        return out
    }

    /// Reads one attribute with the two-call pattern. Returns the CK_RV only when the token says
    /// it will not give the value (CKR_ATTRIBUTE_SENSITIVE, CKR_ATTRIBUTE_TYPE_INVALID): one
    /// refused attribute never hides the others. Any other CK_RV, a length the two calls disagree
    /// on, or a value of the wrong size for its kind throws: an attribute silently left out would
    /// come back with the target token's default (spec §9.4). A value over
    /// `PKCS11Limits.attributeBytes` is a refusal with `tooLong` set, so the caller can list the object.
    public func attribute(_ object: UInt64, _ type: UInt64, as kind: AttributeKind) throws -> Result<AttributeValue, ReadRefusal> {
        let get = try need(f.C_GetAttributeValue, "C_GetAttributeValue")
        let what = "reading attribute \(AttributeRegistry.name(type)) of object \(object)"
        var a = CK_ATTRIBUTE(type: CK_ATTRIBUTE_TYPE(type), pValue: nil, ulValueLen: 0)
        let rv = get(handle, CK_OBJECT_HANDLE(object), &a, 1)
        if rv == CKR_ATTRIBUTE_SENSITIVE || rv == CKR_ATTRIBUTE_TYPE_INVALID { return .failure(ReadRefusal(rv: UInt64(rv))) }
        try check(rv, "C_GetAttributeValue", what)
        guard a.ulValueLen != HB_CK_UNAVAILABLE_INFORMATION else {
            throw PKCS11Error(.callFailed, "\(what): CKR_OK with no length (CK_UNAVAILABLE_INFORMATION)", function: "C_GetAttributeValue")
        }
        guard UInt64(a.ulValueLen) <= UInt64(PKCS11Limits.attributeBytes) else {
            return .failure(ReadRefusal(rv: UInt64(CKR_OK), tooLong: UInt64(a.ulValueLen)))
        }
        let n = try PKCS11Limits.length(UInt64(a.ulValueLen), limit: PKCS11Limits.attributeBytes, "C_GetAttributeValue", what)
        let buf = UnsafeMutableRawPointer.allocate(byteCount: max(1, n), alignment: 16)
        defer { memset_s(buf, max(1, n)); buf.deallocate() }
        a.pValue = buf
        let rv2 = get(handle, CK_OBJECT_HANDLE(object), &a, 1)
        if rv2 == CKR_BUFFER_TOO_SMALL || (rv2 == CKR_OK && a.ulValueLen != CK_ULONG(n)) {
            throw PKCS11Error(.tokenChanged, "\(what): its length changed between the two calls of the read", function: "C_GetAttributeValue",
                              rv: UInt64(rv2))
        }
        try check(rv2, "C_GetAttributeValue", what)
        let raw = UnsafeRawBufferPointer(start: buf, count: n)
        let size = MemoryLayout<CK_ULONG>.size
        func wrongSize(_ expected: String) -> PKCS11Error {
            PKCS11Error(.callFailed, "\(what): the token gave \(n) bytes for \(expected)", function: "C_GetAttributeValue")
        }
        switch kind {
        case .bool:
            guard n == 1 else { throw wrongSize("a CK_BBOOL") }
            return .success(.bool(raw[0] != 0))
        case .ulong:
            guard n == size else { throw wrongSize("a CK_ULONG") }
            return .success(.ulong(UInt64(raw.loadUnaligned(as: CK_ULONG.self))))
        case .ulongs:
            guard n % size == 0 else { throw wrongSize("an array of CK_ULONG") }
            return .success(.ulongs((0..<(n / size)).map { UInt64(raw.loadUnaligned(fromByteOffset: $0 * size, as: CK_ULONG.self)) }))
        case .bytes:
            return .success(.bytes(Array(raw)))
        }
    }

    public struct ReadRefusal: Error, Sendable {
        public let rv: UInt64
        /// For an attribute read: the length the token reported when it is over `PKCS11Limits.attributeBytes`.
        public let tooLong: UInt64?
        public init(rv: UInt64, tooLong: UInt64? = nil) {
            self.rv = rv
            self.tooLong = tooLong
        }
    }

    /// The byte length of an attribute's value (the first call of the two-call pattern only),
    /// nil when the token does not give it. For attribute arrays (CKA_WRAP_TEMPLATE, ...), whose
    /// value is never read here, a non-zero length means a non-empty template.
    public func attributeLength(_ object: UInt64, _ type: UInt64) throws -> Int? {
        let get = try need(f.C_GetAttributeValue, "C_GetAttributeValue")
        let what = "reading the length of attribute \(AttributeRegistry.name(type)) of object \(object)"
        var a = CK_ATTRIBUTE(type: CK_ATTRIBUTE_TYPE(type), pValue: nil, ulValueLen: 0)
        let rv = get(handle, CK_OBJECT_HANDLE(object), &a, 1)
        if rv == CKR_ATTRIBUTE_SENSITIVE || rv == CKR_ATTRIBUTE_TYPE_INVALID { return nil }
        try check(rv, "C_GetAttributeValue", what)
        guard a.ulValueLen != HB_CK_UNAVAILABLE_INFORMATION else {
            throw PKCS11Error(.callFailed, "\(what): CKR_OK with no length (CK_UNAVAILABLE_INFORMATION)", function: "C_GetAttributeValue")
        }
        return try PKCS11Limits.length(UInt64(a.ulValueLen), limit: PKCS11Limits.attributeBytes, "C_GetAttributeValue", what)
    }

    /// A secret value (CKA_VALUE of an extractable, non-sensitive key) read straight into wiped memory.
    public func secretValue(_ object: UInt64) throws -> SecureBytes {
        let get = try need(f.C_GetAttributeValue, "C_GetAttributeValue")
        var a = CK_ATTRIBUTE(type: CK_ATTRIBUTE_TYPE(CKA_VALUE), pValue: nil, ulValueLen: 0)
        try check(get(handle, CK_OBJECT_HANDLE(object), &a, 1), "C_GetAttributeValue", "reading a key value")
        guard a.ulValueLen != HB_CK_UNAVAILABLE_INFORMATION, a.ulValueLen <= 1024 else {
            throw PKCS11Error(.callFailed, "reading a key value", function: "C_GetAttributeValue", rv: UInt64(CKR_ATTRIBUTE_SENSITIVE))
        }
        let n = Int(a.ulValueLen)
        var rv: CK_RV = CKR_OK
        let value = SecureBytes(count: n) { out in
            a.pValue = out.baseAddress
            rv = get(handle, CK_OBJECT_HANDLE(object), &a, 1)
        }
        try check(rv, "C_GetAttributeValue", "reading a key value")
        return value
    }

    /// A value the caller needs (throws with the CK_RV when the token refuses it).
    public func required(_ object: UInt64, _ type: UInt64, as kind: AttributeKind) throws -> AttributeValue {
        switch try attribute(object, type, as: kind) {
        case .success(let v): return v
        case .failure(let r):
            throw PKCS11Error(.callFailed, "reading attribute \(AttributeRegistry.name(type)) of object \(object)",
                              function: "C_GetAttributeValue", rv: r.rv)
        }
    }

    public func setAttributes(_ object: UInt64, _ attributes: [Attribute]) throws {
        let t = try CTemplate(attributes)
        try check(try need(f.C_SetAttributeValue, "C_SetAttributeValue")(handle, CK_OBJECT_HANDLE(object), t.pointer, CK_ULONG(t.count)),
                  "C_SetAttributeValue", "changing object \(object)")
    }

    public func create(_ attributes: [Attribute]) throws -> UInt64 {
        let t = try CTemplate(attributes)
        var h: CK_OBJECT_HANDLE = 0
        try check(try need(f.C_CreateObject, "C_CreateObject")(handle, t.pointer, CK_ULONG(t.count), &h), "C_CreateObject", "creating an object")
        return UInt64(h)
    }

    public func destroy(_ object: UInt64) throws {
        try check(try need(f.C_DestroyObject, "C_DestroyObject")(handle, CK_OBJECT_HANDLE(object)), "C_DestroyObject",
                  "destroying object \(object)")
    }

    public func generateKey(_ mechanism: UInt64, _ attributes: [Attribute]) throws -> UInt64 {
        let t = try CTemplate(attributes)
        var h: CK_OBJECT_HANDLE = 0
        let gen = try need(f.C_GenerateKey, "C_GenerateKey")
        try Mechanism.plain(mechanism).with { m in
            try check(gen(handle, m, t.pointer, CK_ULONG(t.count), &h), "C_GenerateKey", "generating a key")
        }
        return UInt64(h)
    }

    public func generateKeyPair(_ mechanism: UInt64, publicKey: [Attribute], privateKey: [Attribute]) throws -> (public: UInt64, private: UInt64) {
        let pt = try CTemplate(publicKey), st = try CTemplate(privateKey)
        var hp: CK_OBJECT_HANDLE = 0, hs: CK_OBJECT_HANDLE = 0
        let gen = try need(f.C_GenerateKeyPair, "C_GenerateKeyPair")
        try Mechanism.plain(mechanism).with { m in
            try check(gen(handle, m, pt.pointer, CK_ULONG(pt.count), st.pointer, CK_ULONG(st.count), &hp, &hs),
                      "C_GenerateKeyPair", "generating a key pair")
        }
        return (UInt64(hp), UInt64(hs))
    }

    /// C_WrapKey with the two-call length pattern. Returns the CK_RV on refusal (so a backup can list it).
    public func wrap(_ mechanism: Mechanism, wrappingKey: UInt64, key: UInt64) throws -> Result<[UInt8], ReadRefusal> {
        let wrapKey = try need(f.C_WrapKey, "C_WrapKey")
        return try mechanism.with { m in
            var n: CK_ULONG = 0
            let rv = wrapKey(handle, m, CK_OBJECT_HANDLE(wrappingKey), CK_OBJECT_HANDLE(key), nil, &n)
            guard rv == CKR_OK else { return .failure(ReadRefusal(rv: UInt64(rv))) }
            let count = try PKCS11Limits.length(UInt64(n), limit: PKCS11Limits.attributeBytes, "C_WrapKey", "wrapping object \(key)")
            var out = [UInt8](repeating: 0, count: count)
            defer { wipe(&out) }
            let rv2 = wrapKey(handle, m, CK_OBJECT_HANDLE(wrappingKey), CK_OBJECT_HANDLE(key), &out, &n)
            guard rv2 == CKR_OK else { return .failure(ReadRefusal(rv: UInt64(rv2))) }
            // The second call may shorten the length, never lengthen it past the buffer.
            guard UInt64(n) <= UInt64(count) else {
                throw PKCS11Error(.callFailed, "wrapping object \(key): the token reported \(n) bytes written into a buffer of \(count)", function: "C_WrapKey")
            }
            return .success(Array(out.prefix(Int(n))))
        }
    }

    public func unwrap(_ mechanism: Mechanism, unwrappingKey: UInt64, wrapped: [UInt8], _ attributes: [Attribute]) throws -> UInt64 {
        let t = try CTemplate(attributes)
        let unwrapKey = try need(f.C_UnwrapKey, "C_UnwrapKey")
        var h: CK_OBJECT_HANDLE = 0
        var blob = wrapped
        try mechanism.with { m in
            try check(unwrapKey(handle, m, CK_OBJECT_HANDLE(unwrappingKey), &blob, CK_ULONG(blob.count), t.pointer, CK_ULONG(t.count), &h),
                      "C_UnwrapKey", "unwrapping a key")
        }
        return UInt64(h)
    }

    /// One-shot C_Encrypt / C_Sign (two-call length pattern).
    public func encrypt(_ mechanism: UInt64, key: UInt64, _ data: [UInt8]) throws -> [UInt8] {
        try encrypt(.plain(mechanism), key: key, data)
    }

    public func decrypt(_ mechanism: UInt64, key: UInt64, _ data: [UInt8]) throws -> [UInt8] {
        try decrypt(.plain(mechanism), key: key, data)
    }

    public func encrypt(_ mechanism: Mechanism, key: UInt64, _ data: [UInt8]) throws -> [UInt8] {
        try oneShot(mechanism, key: key, data, initName: "C_EncryptInit", initFn: f.C_EncryptInit, name: "C_Encrypt", fn: f.C_Encrypt)
    }

    public func sign(_ mechanism: UInt64, key: UInt64, _ data: [UInt8]) throws -> [UInt8] {
        try oneShot(.plain(mechanism), key: key, data, initName: "C_SignInit", initFn: f.C_SignInit, name: "C_Sign", fn: f.C_Sign)
    }

    public func decrypt(_ mechanism: Mechanism, key: UInt64, _ data: [UInt8]) throws -> [UInt8] {
        try oneShot(mechanism, key: key, data, initName: "C_DecryptInit", initFn: f.C_DecryptInit, name: "C_Decrypt", fn: f.C_Decrypt)
    }

    private func oneShot(_ mechanism: Mechanism, key: UInt64, _ data: [UInt8], initName: String,
                         initFn: CK_C_EncryptInit?, name: String,
                         fn: (@convention(c) (CK_SESSION_HANDLE, UnsafeMutablePointer<CK_BYTE>?, CK_ULONG, UnsafeMutablePointer<CK_BYTE>?, UnsafeMutablePointer<CK_ULONG>?) -> CK_RV)?) throws -> [UInt8] {
        let start = try need(initFn, initName), run = try need(fn, name)
        try mechanism.with { m in try check(start(handle, m, CK_OBJECT_HANDLE(key)), initName, "starting \(name)") }
        var input = data
        var n: CK_ULONG = 0
        try check(run(handle, &input, CK_ULONG(input.count), nil, &n), name, "\(name) (length)")
        let count = try PKCS11Limits.length(UInt64(n), limit: PKCS11Limits.attributeBytes, name, "\(name) (length)")
        var out = [UInt8](repeating: 0, count: count)
        try check(run(handle, &input, CK_ULONG(input.count), &out, &n), name, name)
        guard UInt64(n) <= UInt64(count) else {
            throw PKCS11Error(.callFailed, "\(name): the token reported \(n) bytes written into a buffer of \(count)", function: name)
        }
        return Array(out.prefix(Int(n)))
    }

    /// C_Verify: true for a valid signature, false for CKR_SIGNATURE_INVALID, throws otherwise.
    public func verify(_ mechanism: UInt64, key: UInt64, _ data: [UInt8], signature: [UInt8]) throws -> Bool {
        let start = try need(f.C_VerifyInit, "C_VerifyInit"), run = try need(f.C_Verify, "C_Verify")
        try Mechanism.plain(mechanism).with { m in try check(start(handle, m, CK_OBJECT_HANDLE(key)), "C_VerifyInit", "starting C_Verify") }
        var input = data, sig = signature
        let rv = run(handle, &input, CK_ULONG(input.count), &sig, CK_ULONG(sig.count))
        if rv == CKR_SIGNATURE_INVALID || rv == CKR_SIGNATURE_LEN_RANGE { return false }
        try check(rv, "C_Verify", "verifying a signature")
        return true
    }
}
