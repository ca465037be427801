import BackupCrypto
import ByteCoding

/// Where the HSM gets randomness (EBKs, backup ids, populated key material). Production uses
/// the CSPRNG; `make samples` and tests inject a seeded source so output is reproducible.
public protocol RandomSource: AnyObject {
    func bytes(count: Int) -> [UInt8]
    func secureBytes(count: Int) -> SecureBytes
}

public final class SystemRandomSource: RandomSource {
    public init() {}
    public func bytes(count: Int) -> [UInt8] { SecureRandom.bytes(count: count) }
    public func secureBytes(count: Int) -> SecureBytes { SecureRandom.secureBytes(count: count) }
}

/// A deterministic source for tests and samples only (never for real keys): block i is
/// SHA-256("hsmbackup seeded random v1" || seed (u64) || i (u64)), the blocks concatenated.
public final class SeededRandomSource: RandomSource {
    public static let domain = Array("hsmbackup seeded random v1".utf8)
    public let seed: UInt64
    private var counter: UInt64 = 0
    private var pool: [UInt8] = []

    public init(seed: UInt64) { self.seed = seed }

    public func bytes(count: Int) -> [UInt8] {
        while pool.count < count {
            var w = ByteWriter()
            w.writeBytes(Self.domain)
            w.writeUInt64(seed)
            w.writeUInt64(counter)
            counter += 1
            pool.append(contentsOf: SHA256Hasher.hash(w.bytes))
        }
        let out = Array(pool.prefix(count))
        pool.removeFirst(count)
        return out
    }

    public func secureBytes(count: Int) -> SecureBytes {
        var b = bytes(count: count)
        defer { wipe(&b) }
        return SecureBytes(copying: b)
    }
}
