/// Percent-encoding as SigV4 defines it (S3-KMS digest §1.1): every UTF-8 byte except
/// `A-Z a-z 0-9 - _ . ~` becomes `%XX` with upper-case hex; a space is `%20`, never `+`.
/// Build wire paths and queries with these functions, never with `URLComponents.queryItems`
/// (which leaves `+` and `/` alone), so the bytes sent are the bytes signed.
public enum AWSURIEncoding {
    private static let hex = Array("0123456789ABCDEF".utf8)

    @inline(__always)
    static func isUnreserved(_ c: UInt8) -> Bool {
        (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || (c >= 0x30 && c <= 0x39)
            || c == 0x2D || c == 0x5F || c == 0x2E || c == 0x7E
    }

    /// Encodes every byte but the unreserved ones (and `/` when `keepSlash`).
    public static func encode<C: Collection>(bytes: C, keepSlash: Bool) -> String where C.Element == UInt8 {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        for c in bytes {
            if isUnreserved(c) || (keepSlash && c == 0x2F) {
                out.append(c)
            } else {
                out.append(0x25); out.append(hex[Int(c >> 4)]); out.append(hex[Int(c & 0x0F)])
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// A query name or value (`/` encoded too).
    public static func encodeQueryComponent(_ s: String) -> String { encode(bytes: Array(s.utf8), keepSlash: false) }

    /// A path: each segment encoded, `/` kept. An S3 key goes through this exactly once.
    public static func encodePath(_ s: String) -> String { encode(bytes: Array(s.utf8), keepSlash: true) }

    /// A wire query string from items in the given order; a nil value is a bare name (`?uploads`).
    public static func query(_ items: [(String, String?)]) -> String {
        items.map { name, value in
            value.map { encodeQueryComponent(name) + "=" + encodeQueryComponent($0) } ?? encodeQueryComponent(name)
        }.joined(separator: "&")
    }

    /// Decodes `%XX` escapes (either case); anything else, an invalid escape included, stays as it is.
    public static func decode(_ s: String) -> [UInt8] {
        let b = Array(s.utf8)
        var out: [UInt8] = []
        out.reserveCapacity(b.count)
        var i = 0
        while i < b.count {
            if b[i] == 0x25, i + 2 < b.count, let h = nibble(b[i + 1]), let l = nibble(b[i + 2]) {
                out.append(h << 4 | l)
                i += 3
            } else {
                out.append(b[i])
                i += 1
            }
        }
        return out
    }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: return c - 0x30
        case 0x41...0x46: return c - 0x41 + 10
        case 0x61...0x66: return c - 0x61 + 10
        default: return nil
        }
    }
}
