import CPKCS11
import Foundation

// The C boundary of the PKCS#11 bridge. Only this file and PKCS11Session.swift touch CPKCS11:
// a module loaded with dlopen, its function list checked entry by entry (a NULL entry is an
// error, never a crash), templates whose memory the Swift side owns and wipes, and the two-call
// attribute read. Everything above speaks `Attribute` and `UInt64`.

/// PKCS#11 identifiers this bridge uses, with their standard values (PKCS#11 2.40 / 3.0).
public enum CK {
    // object classes
    public static let oData: UInt64 = 0, oCertificate: UInt64 = 1, oPublicKey: UInt64 = 2, oPrivateKey: UInt64 = 3, oSecretKey: UInt64 = 4
    // key types
    public static let kRSA: UInt64 = 0, kEC: UInt64 = 3, kGenericSecret: UInt64 = 0x10, kAES: UInt64 = 0x1F
    // mechanisms
    public static let mRSAKeyPairGen: UInt64 = 0, mRSAPKCSOAEP: UInt64 = 9, mSHA256RSAPKCS: UInt64 = 0x40
    public static let mSHA1: UInt64 = 0x220, mSHA256HMAC: UInt64 = 0x251
    public static let mECKeyPairGen: UInt64 = 0x1040, mECDSA: UInt64 = 0x1041
    public static let mAESKeyGen: UInt64 = 0x1080, mAESECB: UInt64 = 0x1081
    public static let mAESKeyWrap: UInt64 = 0x2109, mAESKeyWrapPad: UInt64 = 0x210A, mAESKeyWrapKWP: UInt64 = 0x210B
    public static let mSP800108CounterKDF: UInt64 = 0x3AC
    // users, session flags
    public static let userSO: UInt64 = 0, userUser: UInt64 = 1

    public static let classNames: [UInt64: String] = [0: "CKO_DATA", 1: "CKO_CERTIFICATE", 2: "CKO_PUBLIC_KEY", 3: "CKO_PRIVATE_KEY",
                                                      4: "CKO_SECRET_KEY", 5: "CKO_HW_FEATURE", 6: "CKO_DOMAIN_PARAMETERS", 7: "CKO_MECHANISM"]
    public static let keyTypeNames: [UInt64: String] = [0: "CKK_RSA", 1: "CKK_DSA", 2: "CKK_DH", 3: "CKK_EC", 0x10: "CKK_GENERIC_SECRET",
                                                        0x1F: "CKK_AES", 0x40: "CKK_EC_EDWARDS", 0x41: "CKK_EC_MONTGOMERY",
                                                        0x2B: "CKK_SHA256_HMAC"]
    public static func className(_ c: UInt64) -> String { classNames[c] ?? "CKO_0x\(String(c, radix: 16))" }
    public static func keyTypeName(_ k: UInt64) -> String { keyTypeNames[k] ?? "CKK_0x\(String(k, radix: 16))" }
}

/// Bounds on what a module reports (STYLE 3): every length or count it returns is converted with
/// `Int(exactly:)` and checked against a named maximum before anything is allocated, so a faulty
/// or hostile module cannot trap the process or make it allocate what it says.
public enum PKCS11Limits {
    /// An attribute value, a wrapped key or a one-shot output (C_Encrypt, C_Sign).
    public static let attributeBytes = 1 << 24
    /// Slots C_GetSlotList may report.
    public static let slots = 1 << 16

    /// `reported` as an Int no larger than `limit`, or `callFailed` naming the call and what it did.
    public static func length(_ reported: UInt64, limit: Int, _ function: String, _ what: @autoclosure () -> String) throws -> Int {
        guard let n = Int(exactly: reported), n <= limit else {
            throw PKCS11Error(.callFailed, "\(what()): the module reported \(reported), over the limit of \(limit)", function: function)
        }
        return n
    }
}

/// Version and identity strings of the library (C_GetInfo) and of a token (C_GetTokenInfo).
public struct ModuleInfo: Codable, Sendable, Equatable {
    public let cryptokiVersion: String
    public let manufacturer: String
    public let description: String
    public let libraryVersion: String
    public let libraryMajor: Int
    public let libraryMinor: Int
}

public struct TokenInfo: Codable, Sendable, Equatable {
    public let slot: UInt64
    public let label: String
    public let manufacturer: String
    public let model: String
    public let serialNumber: String
    public let hardwareVersion: String
    public let firmwareVersion: String
    public let flags: UInt64
}

/// A loaded PKCS#11 module (dlopen + C_GetFunctionList + C_Initialize). C_Finalize and dlclose
/// run in deinit. C_Initialize is per process, so `open` hands out the live instance of a path
/// while anyone holds it; once the last holder lets go the module is finalized, and the next
/// `open` initializes it again (SoftHSM then reads SOFTHSM2_CONF again).
public final class PKCS11Module: @unchecked Sendable {
    private final class Weak { weak var module: PKCS11Module? ; init(_ m: PKCS11Module) { module = m } }
    nonisolated(unsafe) private static var live: [String: Weak] = [:]
    private static let liveLock = NSLock()

    public static func open(path: String) throws -> PKCS11Module {
        liveLock.lock()
        defer { liveLock.unlock() }
        // One instance per library file, whatever the spelling of its path (C_Initialize is per process).
        let key = realpath(path, nil).map { p in defer { free(p) }; return String(cString: p) } ?? path
        if let m = live[key]?.module { return m }
        let m = try PKCS11Module(path: path)
        live[key] = Weak(m)
        return m
    }

    public let path: String
    let functions: UnsafeMutablePointer<CK_FUNCTION_LIST>
    private let handle: UnsafeMutableRawPointer
    /// True when this instance's C_Initialize initialized the library (CKR_OK). With
    /// CKR_CRYPTOKI_ALREADY_INITIALIZED someone else in the process did (another path spelling
    /// of the same library, or another PKCS#11 user): C_Finalize is theirs to call, not ours.
    private var initialized = false

    private init(path: String) throws {
        self.path = path
        guard let h = dlopen(path, HB_RTLD_NOW_LOCAL) else {
            let why = dlerror().map { String(cString: $0) } ?? "dlopen failed"
            throw PKCS11Error(.moduleLoadFailed, "cannot load the PKCS#11 module \(path): \(why)")
        }
        guard let sym = dlsym(h, "C_GetFunctionList") else {
            dlclose(h)
            throw PKCS11Error(.moduleLoadFailed, "\(path) is not a PKCS#11 module: it has no C_GetFunctionList")
        }
        var list: UnsafeMutablePointer<CK_FUNCTION_LIST>?
        let rv = hb_get_function_list(sym, &list)
        guard rv == CKR_OK, let list else {
            dlclose(h)
            throw PKCS11Error(.moduleLoadFailed, "\(path): C_GetFunctionList failed", function: "C_GetFunctionList", rv: UInt64(rv))
        }
        handle = h
        functions = list
        var args = CK_C_INITIALIZE_ARGS()
        args.flags = CK_FLAGS(CKF_OS_LOCKING_OK)
        guard let initialize = list.pointee.C_Initialize else {
            dlclose(h)
            throw PKCS11Error(.functionMissing, "\(path) has no C_Initialize", function: "C_Initialize")
        }
        let irv = initialize(&args)
        guard irv == CKR_OK || irv == CKR_CRYPTOKI_ALREADY_INITIALIZED else {
            dlclose(h)
            throw PKCS11Error(.callFailed, "\(path): C_Initialize failed", function: "C_Initialize", rv: UInt64(irv))
        }
        initialized = irv == CKR_OK
    }

    deinit {
        if initialized, let finalize = functions.pointee.C_Finalize { _ = finalize(nil) }
        dlclose(handle)
    }

    /// Throws `functionMissing` for a NULL entry, `callFailed` (with the CK_RV) for anything but CKR_OK.
    static func check(_ rv: CK_RV, _ function: String, _ what: @autoclosure () -> String) throws {
        guard rv == CKR_OK else { throw PKCS11Error(.callFailed, what(), function: function, rv: UInt64(rv)) }
    }

    static func need<F>(_ f: F?, _ name: String) throws -> F {
        guard let f else { throw PKCS11Error(.functionMissing, "the module has no \(name)", function: name) }
        return f
    }

    public func info() throws -> ModuleInfo {
        var i = CK_INFO()
        try Self.check(try Self.need(functions.pointee.C_GetInfo, "C_GetInfo")(&i), "C_GetInfo", "reading the library information")
        return ModuleInfo(cryptokiVersion: "\(i.cryptokiVersion.major).\(i.cryptokiVersion.minor)",
                          manufacturer: Self.text(i.manufacturerID), description: Self.text(i.libraryDescription),
                          libraryVersion: "\(i.libraryVersion.major).\(i.libraryVersion.minor)",
                          libraryMajor: Int(i.libraryVersion.major), libraryMinor: Int(i.libraryVersion.minor))
    }

    /// Every token present.
    public func tokens() throws -> [TokenInfo] {
        let getSlots = try Self.need(functions.pointee.C_GetSlotList, "C_GetSlotList")
        var count: CK_ULONG = 0
        try Self.check(getSlots(1, nil, &count), "C_GetSlotList", "listing slots")
        let n = try PKCS11Limits.length(UInt64(count), limit: PKCS11Limits.slots, "C_GetSlotList", "listing slots")
        var slots = [CK_SLOT_ID](repeating: 0, count: n)
        if count > 0 { try Self.check(getSlots(1, &slots, &count), "C_GetSlotList", "listing slots") }
        guard UInt64(count) <= UInt64(n) else {
            throw PKCS11Error(.callFailed, "listing slots: the module reported \(count) slots written into room for \(n)", function: "C_GetSlotList")
        }
        let getToken = try Self.need(functions.pointee.C_GetTokenInfo, "C_GetTokenInfo")
        var out: [TokenInfo] = []
        for slot in slots.prefix(Int(count)) {
            var t = CK_TOKEN_INFO()
            guard getToken(slot, &t) == CKR_OK else { continue }
            out.append(TokenInfo(slot: UInt64(slot), label: Self.text(t.label), manufacturer: Self.text(t.manufacturerID),
                                 model: Self.text(t.model), serialNumber: Self.text(t.serialNumber),
                                 hardwareVersion: "\(t.hardwareVersion.major).\(t.hardwareVersion.minor)",
                                 firmwareVersion: "\(t.firmwareVersion.major).\(t.firmwareVersion.minor)", flags: UInt64(t.flags)))
        }
        return out
    }

    /// The one token whose label is `label` (exactly, after trimming the padding).
    public func token(labelled label: String) throws -> TokenInfo {
        let matches = try tokens().filter { $0.label == label }
        guard matches.count == 1 else {
            throw PKCS11Error(.tokenNotFound, matches.isEmpty ? "no token labelled \"\(label)\" in \(path)"
                                                               : "\(matches.count) tokens are labelled \"\(label)\" in \(path)")
        }
        return matches[0]
    }

    /// Whether the token's slot lists `mechanism` with all of `flags`.
    public func supports(slot: UInt64, mechanism: UInt64, flags: UInt64) -> Bool {
        guard let f = functions.pointee.C_GetMechanismInfo else { return false }
        var info = CK_MECHANISM_INFO()
        guard f(CK_SLOT_ID(slot), CK_MECHANISM_TYPE(mechanism), &info) == CKR_OK else { return false }
        return UInt64(info.flags) & flags == flags
    }

    public func openSession(slot: UInt64) throws -> PKCS11Session {
        let open = try Self.need(functions.pointee.C_OpenSession, "C_OpenSession")
        var h: CK_SESSION_HANDLE = 0
        try Self.check(open(CK_SLOT_ID(slot), CK_FLAGS(CKF_SERIAL_SESSION | CKF_RW_SESSION), nil, nil, &h), "C_OpenSession",
                       "opening a read/write session")
        return PKCS11Session(module: self, handle: h)
    }

    /// A space-padded fixed-size field (label, model, ...) as a trimmed string.
    static func text<T>(_ field: T) -> String {
        withUnsafeBytes(of: field) { raw in
            var bytes = Array(raw)
            while let last = bytes.last, last == 0x20 || last == 0 { bytes.removeLast() }
            return String(decoding: bytes, as: UTF8.self)
        }
    }
}
