import BackupCrypto
import ByteCoding
import Envelope
import Foundation
import HSMArchive
import ObjectStore
import PayloadCodec

/// The fuzz targets of every parser that reads untrusted bytes (issue 8, item 1). Each target
/// takes arbitrary bytes and must return normally: a typed thrown error is an expected outcome,
/// caught here. A broken invariant (a parse that does not re-serialize to the identical bytes, a
/// tampered message that still opens, two readers that disagree) calls `fatalError`, which
/// libFuzzer (and the XCTest replay) reports as a finding. Crashes, traps and hangs are findings
/// by themselves.
///
/// The same functions run under libFuzzer (`Sources/hsmbackup-fuzz`) and in the XCTest replay
/// of the committed corpus (`Tests/FuzzTargetsTests`), so every corpus file and every past
/// crash is checked by `swift test` without libFuzzer.
public enum FuzzTarget: String, CaseIterable, Sendable {
    /// Envelope message header: `MessageHeader.parse` and `HeaderReader`, canonical re-serialization.
    case envelopeHeader = "envelope-header"
    /// Envelope frames and footer: `EnvelopeStructure.walk` and `EnvelopeDecryptor` under a fixed
    /// raw AES keyring, over the input as a message or over a message built from the input.
    case envelopeFrames = "envelope-frames"
    /// Inner header: `InnerHeader.parse`, canonical re-serialization.
    case innerHeader = "inner-header"
    /// Inner chunk framing and binding: `InnerStructureChecker`, `InnerBlobOpener` with fixed keys.
    case innerChunks = "inner-chunks"
    /// Payload: `PaxTar.read` (and `PayloadBundle.parse`), the bounded zstd decompressor.
    case payload = "payload"
    /// Store checksum records: `ObjectRecord.parse`, `ObjectRecord.parseFooter`.
    case storeRecord = "store-record"
    /// Store catalog: `CatalogSnapshot.parse`.
    case catalog = "catalog"
    /// Local KMS keystore files: `key.json` and `vN.key`.
    case keystore = "keystore"
    /// Catalog listings: `CatalogSnapshot.query` (index fast path) against the full parse, and
    /// the listing options as text (`CatalogQueryOptions`).
    case catalogQuery = "catalog-query"
    /// Per-backup metadata objects: `BackupEntry.parseMeta`, canonical re-encoding.
    case backupMeta = "backup-meta"
    /// Retention policy objects (`RetentionPolicy.parseObject`) and the lifecycle's time rules
    /// (`RetentionRules`).
    case retentionPolicy = "retention-policy"

    public func run(_ data: [UInt8]) {
        switch self {
        case .envelopeHeader: FuzzEnvelope.header(data)
        case .envelopeFrames: FuzzEnvelope.frames(data)
        case .innerHeader: FuzzInner.header(data)
        case .innerChunks: FuzzInner.chunks(data)
        case .payload: FuzzPayload.run(data)
        case .storeRecord: FuzzStore.record(data)
        case .catalog: FuzzStore.catalog(data)
        case .keystore: FuzzKeystore.run(data)
        case .catalogQuery: FuzzCatalogObjects.query(data)
        case .backupMeta: FuzzCatalogObjects.meta(data)
        case .retentionPolicy: FuzzCatalogObjects.policy(data)
        }
    }
}

/// A broken invariant: reported as a crash so libFuzzer saves the input.
func finding(_ what: @autoclosure () -> String, file: StaticString = #file, line: UInt = #line) -> Never {
    fatalError("FUZZ FINDING: \(what())", file: file, line: line)
}

func check(_ ok: Bool, _ what: @autoclosure () -> String, file: StaticString = #file, line: UInt = #line) {
    if !ok { finding(what(), file: file, line: line) }
}

/// Only typed errors of the project's modules are acceptable outcomes; anything else (a
/// Foundation error, an untyped error) is a finding too.
func expectTyped(_ error: Error, _ target: String) {
    switch error {
    case is EnvelopeError, is ArchiveError, is PayloadCodecError, is ByteCodingError, is StoreError, is CryptoError: return
    default: finding("\(target): untyped error \(type(of: error)): \(error)")
    }
}

/// Fixed keys of the targets (never secret: test material only).
public enum FuzzKeys {
    /// The raw AES keyring the envelope seeds are encrypted under.
    public static func envelopeKeyring() -> RawAESKeyring {
        try! RawAESKeyring(namespace: "hsmbackup-fuzz", name: "fuzz-key",
                           wrappingKey: try! WrappingKey(bytes: [UInt8](repeating: 0x42, count: 32)))
    }

    /// The backup keys of spec/vectors/inner (manufacturer "example-hsm-co").
    public static let manufacturerId = "example-hsm-co"
    public static func backupKeyring() -> BackupKeyring {
        BackupKeyring(manufacturerId: manufacturerId,
                      mkbk: try! ManufacturerBackupKey(bytes: Array(0x00...0x1f)),
                      akbk: try! OperatorBackupKey(bytes: Array(0x20...0x3f)))
    }

    public static func ebk() -> EphemeralBackupKey { try! EphemeralBackupKey(bytes: Array(0x40...0x5f)) }
}

/// Reads a little script from the input: bytes taken from the front, never past the end.
struct FuzzInput {
    let bytes: [UInt8]
    var position = 0
    init(_ bytes: [UInt8]) { self.bytes = bytes }
    var remaining: Int { bytes.count - position }
    mutating func byte() -> UInt8 {
        guard position < bytes.count else { return 0 }
        defer { position += 1 }
        return bytes[position]
    }
    mutating func u16() -> Int { Int(byte()) << 8 | Int(byte()) }
    mutating func take(_ n: Int) -> [UInt8] {
        let k = min(n, remaining)
        defer { position += k }
        return Array(bytes[position..<(position + k)])
    }
    mutating func rest() -> [UInt8] { take(remaining) }
}

/// Applies up to `count` mutations read from `input` to `message`: XOR a byte, truncate, or
/// insert a byte. Returns the mutated message.
func mutate(_ message: [UInt8], script input: inout FuzzInput, count: Int) -> [UInt8] {
    var m = message
    for _ in 0..<count where input.remaining >= 3 && !m.isEmpty {
        let op = input.byte()
        let at = input.u16() % m.count
        switch op % 4 {
        case 0, 1: m[at] ^= (op | 1)
        case 2: m.removeLast(m.count - at)
        default: m.insert(op, at: at)
        }
    }
    return m
}
