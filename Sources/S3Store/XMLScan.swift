import Foundation

// A minimal scanner for the flat XML documents S3 answers with (ListBucketResult, Error,
// InitiateMultipartUploadResult, ListMultipartUploadsResult): element text by name, and the
// blocks of a repeated element. It never resolves external entities (there are none to resolve:
// only the five predefined entities and numeric references are decoded).
struct XMLScan {
    let text: String

    init(_ bytes: [UInt8]) { text = String(decoding: bytes, as: UTF8.self) }
    init(text: String) { self.text = text }

    /// The decoded text of every `<name>...</name>` (no attributes expected), in order.
    func all(_ name: String) -> [String] {
        var out: [String] = []
        let open = "<\(name)>", close = "</\(name)>"
        var rest = text[...]
        while let o = rest.range(of: open) {
            let after = rest[o.upperBound...]
            guard let c = after.range(of: close) else { break }
            out.append(Self.decode(String(after[..<c.lowerBound])))
            rest = after[c.upperBound...]
        }
        return out
    }

    func first(_ name: String) -> String? { all(name).first }

    /// Each `<name>...</name>` block as its own scanner (raw, not decoded).
    func blocks(_ name: String) -> [XMLScan] {
        var out: [XMLScan] = []
        let open = "<\(name)>", close = "</\(name)>"
        var rest = text[...]
        while let o = rest.range(of: open) {
            let after = rest[o.upperBound...]
            guard let c = after.range(of: close) else { break }
            out.append(XMLScan(text: String(after[..<c.lowerBound])))
            rest = after[c.upperBound...]
        }
        return out
    }

    static func decode(_ s: String) -> String {
        guard s.contains("&") else { return s }
        var out = ""
        var i = s.startIndex
        while i < s.endIndex {
            if s[i] == "&", let semi = s[i...].firstIndex(of: ";") {
                let entity = String(s[s.index(after: i)..<semi])
                var replacement: String?
                switch entity {
                case "amp": replacement = "&"
                case "lt": replacement = "<"
                case "gt": replacement = ">"
                case "quot": replacement = "\""
                case "apos": replacement = "'"
                default:
                    if entity.hasPrefix("#x"), let v = UInt32(entity.dropFirst(2), radix: 16), let u = Unicode.Scalar(v) {
                        replacement = String(Character(u))
                    } else if entity.hasPrefix("#"), let v = UInt32(entity.dropFirst()), let u = Unicode.Scalar(v) {
                        replacement = String(Character(u))
                    }
                }
                if let replacement {
                    out += replacement
                    i = s.index(after: semi)
                    continue
                }
            }
            out.append(s[i])
            i = s.index(after: i)
        }
        return out
    }

    /// Escapes text for an XML element body.
    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }
}
