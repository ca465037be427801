import BackupCrypto
import ByteCoding

/// The key hierarchy of spec/FORMAT.md section 4.2. Every derivation is SP 800-108 KDF in
/// counter mode with HMAC-SHA256 (32-bit big-endian counter before the fixed input
/// Label || 0x00 || Context || [L]32). Labels are ASCII, without terminator.
public enum KeyHierarchy {
    public static let pbkLabel = "hsmbackup/v1 PBK"
    public static let fingerprintLabel = "hsmbackup/v1 PBK fingerprint"
    public static let sealKeyLabel = "hsmbackup/v1 inner header seal"
    public static let fingerprintByteCount = 32
    public static let sealKeyByteCount = 32
    /// Manufacturer ids are 1...128 bytes of UTF-8.
    public static let maximumManufacturerIdBytes = 128

    /// u16 length || UTF-8 manufacturer id: the context of the PBK and fingerprint derivations.
    public static func manufacturerContext(_ manufacturerId: String) throws -> [UInt8] {
        let id = Array(manufacturerId.utf8)
        guard !id.isEmpty, id.count <= maximumManufacturerIdBytes else {
            throw ArchiveError(.invalidArgument, "manufacturer id must be 1...\(maximumManufacturerIdBytes) bytes of UTF-8", field: "manufacturer id")
        }
        var w = ByteWriter()
        try w.writeLengthPrefixed16(id, "manufacturer id")
        return w.bytes
    }

    /// PBK = KDF(K_IN = MKBK || AKBK, Label = pbkLabel, Context = manufacturerContext, L = 256).
    public static func derivePBK(mkbk: ManufacturerBackupKey, akbk: OperatorBackupKey, manufacturerId: String) throws -> PersistentBackupKey {
        let context = try manufacturerContext(manufacturerId)
        let kin = SecureBytes(count: mkbk.byteCount + akbk.byteCount) { out in
            mkbk.withUnsafeBytes { out.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            akbk.withUnsafeBytes { (out.baseAddress! + mkbk.byteCount).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        }
        let fixed = KBKDF.fixedInput(label: Array(pbkLabel.utf8), context: context, outputBytes: 32)
        let bytes = try kin.withUnsafeBytes { try KBKDF.derive(key: $0, fixedInput: fixed, outputBytes: 32) }
        return try PersistentBackupKey(secret: bytes)
    }

    /// Fingerprint = KDF(K_IN = PBK, Label = fingerprintLabel, Context = manufacturerContext, L = 256).
    /// Public: it identifies the PBK without revealing it.
    public static func fingerprint(of pbk: PersistentBackupKey, manufacturerId: String) throws -> [UInt8] {
        let context = try manufacturerContext(manufacturerId)
        let fixed = KBKDF.fixedInput(label: Array(fingerprintLabel.utf8), context: context, outputBytes: fingerprintByteCount)
        return try pbk.withUnsafeBytes { try KBKDF.derive(key: $0, fixedInput: fixed, outputBytes: fingerprintByteCount) }.unsafeCopy()
    }

    /// K_seal = KDF(K_IN = EBK, Label = sealKeyLabel, Context = backup id (16 bytes), L = 256).
    public static func sealKey(ebk: EphemeralBackupKey, backupId: [UInt8]) throws -> DerivationKey {
        let fixed = KBKDF.fixedInput(label: Array(sealKeyLabel.utf8), context: backupId, outputBytes: sealKeyByteCount)
        return try DerivationKey(secret: ebk.withUnsafeBytes { try KBKDF.derive(key: $0, fixedInput: fixed, outputBytes: sealKeyByteCount) })
    }
}
