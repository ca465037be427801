import COpenSSL

/// The CSPRNG (OpenSSL's RAND_bytes). Failure to get randomness is fatal: continuing would
/// produce predictable keys.
public enum SecureRandom {
    public static func bytes(count: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        if count > 0 {
            let ok = out.withUnsafeMutableBytes { RAND_bytes($0.baseAddress!.assumingMemoryBound(to: UInt8.self), Int32(count)) }
            precondition(ok == 1, "RAND_bytes failed: no secure randomness available")
        }
        return out
    }

    public static func secureBytes(count: Int) -> SecureBytes {
        SecureBytes(count: count) { buf in
            if count > 0 {
                let ok = RAND_bytes(buf.baseAddress!.assumingMemoryBound(to: UInt8.self), Int32(count))
                precondition(ok == 1, "RAND_bytes failed: no secure randomness available")
            }
        }
    }
}
