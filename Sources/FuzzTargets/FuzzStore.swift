import BackupCrypto
import ObjectStore

enum FuzzStore {
    /// Replaces the last 32 bytes by the SHA-256 of the rest, so the fuzzer gets past the
    /// record's (or catalog's) own digest to the fields behind it.
    static func withDigestFixed(_ bytes: [UInt8]) -> [UInt8] {
        guard bytes.count >= 32 else { return bytes }
        let body = Array(bytes.dropLast(32))
        return body + SHA256Hasher.hash(body)
    }

    /// Checksum records. Input byte 0: bit 0 = fix the record digest first; bit 1 = the rest is
    /// a replica file tail (record ‖ footer), read through `parseFooter` as the store does.
    /// Canonicity: a record that parses encodes to exactly its bytes (with its footer, too).
    static func record(_ data: [UInt8]) {
        guard let mode = data.first else { return }
        var bytes = Array(data.dropFirst())
        if mode & 2 == 0 {
            if mode & 1 != 0 { bytes = withDigestFixed(bytes) }
            do {
                let r = try ObjectRecord.parse(bytes, baseOffset: 0)
                check(try r.encode() == bytes, "object record does not re-encode to its bytes")
            } catch { expectTyped(error, "ObjectRecord.parse") }
            return
        }
        do {
            guard bytes.count >= ObjectRecord.footerLength else { return }
            let length = try ObjectRecord.parseFooter(Array(bytes.suffix(ObjectRecord.footerLength)), fileSize: bytes.count)
            check(length + ObjectRecord.footerLength <= bytes.count, "footer record length beyond the file")
            let start = bytes.count - ObjectRecord.footerLength - length
            var record = Array(bytes[start..<(bytes.count - ObjectRecord.footerLength)])
            if mode & 1 != 0 { record = withDigestFixed(record) }
            let r = try ObjectRecord.parse(record, baseOffset: start)
            check(try r.encode() == record, "object record does not re-encode to its bytes")
            if mode & 1 == 0 {
                check(try r.encodeWithFooter() == Array(bytes[start...]), "record with footer does not re-encode to its bytes")
            }
        } catch { expectTyped(error, "ObjectRecord.parseFooter/parse") }
    }

    /// The catalog. Input byte 0: bit 0 = fix the catalog digest first. Canonicity: a catalog
    /// that parses encodes to exactly its bytes.
    static func catalog(_ data: [UInt8]) {
        guard let mode = data.first else { return }
        var bytes = Array(data.dropFirst())
        if mode & 1 != 0 { bytes = withDigestFixed(bytes) }
        do {
            let s = try CatalogSnapshot.parse(bytes)
            check(try s.encode() == bytes, "catalog does not re-encode to its bytes")
        } catch { expectTyped(error, "CatalogSnapshot.parse") }
    }
}
