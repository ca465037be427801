// Errors of the PKCS#11 bridge (spec/FORMAT.md §9.8). One type, a stable code, the reason, and
// for a failed PKCS#11 call the function and its CK_RV with its standard name.

public struct PKCS11Error: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable, Codable {
        /// The module path could not be loaded (dlopen), or it has no C_GetFunctionList.
        case moduleLoadFailed
        /// The module's function list lacks a function this bridge needs.
        case functionMissing
        /// A PKCS#11 call returned something other than CKR_OK (see `rv`).
        case callFailed
        /// No token with the given label is present.
        case tokenNotFound
        /// The user PIN was refused (CKR_PIN_INCORRECT, CKR_PIN_LOCKED, ...).
        case loginFailed
        /// The token holds no hsmbackup PBK for the archive's manufacturer and fingerprint.
        case notProvisioned
        /// The token was provisioned already (provision runs once).
        case alreadyProvisioned
        /// The token's PBK check value differs from the archive's (another PBK value under the same id).
        case checkValueMismatch
        /// The archive is not a PKCS#11 archive, or from another token manufacturer.
        case wrongManufacturer
        /// The payload's PKCS#11 format major version is unknown.
        case unsupportedVersion
        /// Objects could not be backed up and `--allow-partial` was not given (see `skipped`).
        case partialBackup
        /// Objects with the same class, CKA_ID and label exist on the target and `--replace` was not given.
        case duplicateObject
        /// A payload object does not follow the PKCS#11 payload grammar.
        case malformedObject
        /// A restored key failed its functional check (KCV, HMAC, sign/verify).
        case checkFailed
        case invalidArgument
        /// Another restore onto the same token holds the token's restore lock (§9.6); nothing was changed.
        case tokenBusy
        /// The token's restore lock file could not be made or locked.
        case lockFailed
        /// The backup's encrypted temporary spool could not be made, written or read back, or was changed on disk.
        case spoolFailed
        /// The token's objects changed between the backup's two passes over them (§9.5); nothing was written.
        case tokenChanged
    }

    public let code: Code
    public let reason: String
    /// The PKCS#11 function that failed, and its return value.
    public let function: String?
    public let rv: UInt64?
    /// For `partialBackup`: every object that could not be backed up.
    public let skipped: [SkippedObject]

    public init(_ code: Code, _ reason: String, function: String? = nil, rv: UInt64? = nil, skipped: [SkippedObject] = []) {
        self.code = code
        self.reason = reason
        self.function = function
        self.rv = rv
        self.skipped = skipped
    }

    public var rvName: String? { rv.map(CKR.name) }

    public var description: String {
        var s = "pkcs11 \(code.rawValue): \(reason)"
        if let function, let rv { s += " (\(function): \(CKR.name(rv)) 0x\(String(rv, radix: 16)))" }
        return s
    }
}

/// Return values (PKCS#11 2.40 §5.1) and their names.
public enum CKR {
    public static let ok: UInt64 = 0
    public static let names: [UInt64: String] = [
        0x0: "CKR_OK", 0x1: "CKR_CANCEL", 0x2: "CKR_HOST_MEMORY", 0x3: "CKR_SLOT_ID_INVALID", 0x5: "CKR_GENERAL_ERROR",
        0x6: "CKR_FUNCTION_FAILED", 0x7: "CKR_ARGUMENTS_BAD", 0x10: "CKR_ATTRIBUTE_READ_ONLY", 0x11: "CKR_ATTRIBUTE_SENSITIVE",
        0x12: "CKR_ATTRIBUTE_TYPE_INVALID", 0x13: "CKR_ATTRIBUTE_VALUE_INVALID", 0x1B: "CKR_ACTION_PROHIBITED",
        0x20: "CKR_DATA_INVALID", 0x21: "CKR_DATA_LEN_RANGE", 0x30: "CKR_DEVICE_ERROR", 0x31: "CKR_DEVICE_MEMORY",
        0x32: "CKR_DEVICE_REMOVED", 0x40: "CKR_ENCRYPTED_DATA_INVALID", 0x41: "CKR_ENCRYPTED_DATA_LEN_RANGE",
        0x50: "CKR_FUNCTION_CANCELED", 0x54: "CKR_FUNCTION_NOT_SUPPORTED", 0x60: "CKR_KEY_HANDLE_INVALID",
        0x62: "CKR_KEY_SIZE_RANGE", 0x63: "CKR_KEY_TYPE_INCONSISTENT", 0x68: "CKR_KEY_FUNCTION_NOT_PERMITTED",
        0x69: "CKR_KEY_NOT_WRAPPABLE", 0x6A: "CKR_KEY_UNEXTRACTABLE", 0x70: "CKR_MECHANISM_INVALID",
        0x71: "CKR_MECHANISM_PARAM_INVALID", 0x82: "CKR_OBJECT_HANDLE_INVALID", 0x90: "CKR_OPERATION_ACTIVE",
        0x91: "CKR_OPERATION_NOT_INITIALIZED", 0xA0: "CKR_PIN_INCORRECT", 0xA1: "CKR_PIN_INVALID", 0xA2: "CKR_PIN_LEN_RANGE",
        0xA3: "CKR_PIN_EXPIRED", 0xA4: "CKR_PIN_LOCKED", 0xB0: "CKR_SESSION_CLOSED", 0xB3: "CKR_SESSION_HANDLE_INVALID",
        0xB5: "CKR_SESSION_READ_ONLY", 0xC0: "CKR_SIGNATURE_INVALID", 0xC1: "CKR_SIGNATURE_LEN_RANGE",
        0xD0: "CKR_TEMPLATE_INCOMPLETE", 0xD1: "CKR_TEMPLATE_INCONSISTENT", 0xE0: "CKR_TOKEN_NOT_PRESENT",
        0xE1: "CKR_TOKEN_NOT_RECOGNIZED", 0xE2: "CKR_TOKEN_WRITE_PROTECTED", 0xF0: "CKR_UNWRAPPING_KEY_HANDLE_INVALID",
        0xF1: "CKR_UNWRAPPING_KEY_SIZE_RANGE", 0xF2: "CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT", 0x100: "CKR_USER_ALREADY_LOGGED_IN",
        0x101: "CKR_USER_NOT_LOGGED_IN", 0x102: "CKR_USER_PIN_NOT_INITIALIZED", 0x103: "CKR_USER_TYPE_INVALID",
        0x104: "CKR_USER_ANOTHER_ALREADY_LOGGED_IN", 0x110: "CKR_WRAPPED_KEY_INVALID", 0x112: "CKR_WRAPPED_KEY_LEN_RANGE",
        0x113: "CKR_WRAPPING_KEY_HANDLE_INVALID", 0x114: "CKR_WRAPPING_KEY_SIZE_RANGE", 0x115: "CKR_WRAPPING_KEY_TYPE_INCONSISTENT",
        0x150: "CKR_BUFFER_TOO_SMALL", 0x190: "CKR_CRYPTOKI_NOT_INITIALIZED", 0x191: "CKR_CRYPTOKI_ALREADY_INITIALIZED",
    ]

    public static func name(_ rv: UInt64) -> String { names[rv] ?? (rv >= 0x8000_0000 ? "CKR_VENDOR_DEFINED" : "CKR_0x\(String(rv, radix: 16))") }
}

/// An object the backup could not take, as the archive and the terminal list it.
public struct SkippedObject: Codable, Sendable, Equatable {
    public let label: String
    /// CKA_ID, lowercase hex ("" when the object has none).
    public let id: String
    public let objectClass: String
    public let keyType: String?
    /// The CK_RV of the call that refused it (nil when the bridge itself declined it, e.g. a class it does not back up).
    public let rv: UInt64?
    public let rvName: String?
    public let reason: String

    public init(label: String, id: String, objectClass: String, keyType: String?, rv: UInt64?, reason: String) {
        self.label = label
        self.id = id
        self.objectClass = objectClass
        self.keyType = keyType
        self.rv = rv
        self.rvName = rv.map(CKR.name)
        self.reason = reason
    }
}
