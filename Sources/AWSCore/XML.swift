import Foundation

/// A small, non-validating XML reader for AWS response bodies (S3 results and errors, the
/// `<ErrorResponse>` of query services). Grammar read: an optional `<?xml …?>` declaration,
/// comments, elements with attributes (kept, unparsed values unescaped), character data with
/// the five predefined entities and `&#N;`/`&#xN;`, CDATA sections. No DTDs (refused), no
/// namespaces (a prefix stays part of the name; `xmlns` is an ordinary attribute). Depth and
/// size are bounded.
public final class AWSXMLNode: Sendable {
    public let name: String
    public let attributes: [String: String]
    public let children: [AWSXMLNode]
    /// The element's own character data, concatenated (not its children's).
    public let text: String

    init(name: String, attributes: [String: String], children: [AWSXMLNode], text: String) {
        self.name = name
        self.attributes = attributes
        self.children = children
        self.text = text
    }

    public static let maximumDepth = 32
    public static let maximumBytes = 64 << 20

    /// The first child named `name`.
    public func child(_ name: String) -> AWSXMLNode? { children.first { $0.name == name } }
    /// Every child named `name`, in order.
    public func children(_ name: String) -> [AWSXMLNode] { children.filter { $0.name == name } }
    /// The text of the first child named `name`.
    public func value(_ name: String) -> String? { child(name)?.text }
    /// The first element named `name` anywhere below (depth first), this one included.
    public func first(_ name: String) -> AWSXMLNode? {
        if self.name == name { return self }
        for c in children { if let f = c.first(name) { return f } }
        return nil
    }

    public enum ParseError: Error, Equatable, CustomStringConvertible {
        case malformed(String, offset: Int)
        public var description: String {
            switch self { case .malformed(let why, let offset): return "XML: \(why) at byte \(offset)" }
        }
    }

    /// Parses a document with one root element.
    public static func parse<C: Collection>(_ data: C) throws -> AWSXMLNode where C.Element == UInt8 {
        let bytes = Array(data)
        guard bytes.count <= maximumBytes else { throw ParseError.malformed("document larger than \(maximumBytes) bytes", offset: 0) }
        var p = Parser(b: bytes)
        p.skipMisc()
        guard p.peek == 0x3C else { throw ParseError.malformed("no root element", offset: p.i) }
        let root = try p.element(depth: 0)
        p.skipMisc()
        guard p.i == bytes.count else { throw ParseError.malformed("content after the root element", offset: p.i) }
        return root
    }

    private struct Parser {
        let b: [UInt8]
        var i = 0
        var peek: UInt8? { i < b.count ? b[i] : nil }

        func starts(_ s: String) -> Bool {
            let u = Array(s.utf8)
            return i + u.count <= b.count && Array(b[i..<(i + u.count)]) == u
        }

        mutating func skipSpace() { while let c = peek, c == 0x20 || c == 0x09 || c == 0x0A || c == 0x0D { i += 1 } }

        mutating func skip(past s: String) throws {
            let u = Array(s.utf8)
            while i + u.count <= b.count {
                if Array(b[i..<(i + u.count)]) == u { i += u.count; return }
                i += 1
            }
            throw ParseError.malformed("unterminated construct (no \(s))", offset: i)
        }

        /// Whitespace, the declaration, processing instructions and comments.
        mutating func skipMisc() {
            while true {
                skipSpace()
                if starts("<?") { if (try? skip(past: "?>")) == nil { return } } else if starts("<!--") { if (try? skip(past: "-->")) == nil { return } } else { return }
            }
        }

        mutating func name() throws -> String {
            let start = i
            while let c = peek, !(c == 0x20 || c == 0x09 || c == 0x0A || c == 0x0D || c == 0x2F || c == 0x3E || c == 0x3D) { i += 1 }
            guard i > start else { throw ParseError.malformed("expected a name", offset: i) }
            return String(decoding: b[start..<i], as: UTF8.self)
        }

        mutating func element(depth: Int) throws -> AWSXMLNode {
            guard depth < AWSXMLNode.maximumDepth else { throw ParseError.malformed("nested deeper than \(AWSXMLNode.maximumDepth)", offset: i) }
            guard peek == 0x3C else { throw ParseError.malformed("expected <", offset: i) }
            i += 1
            if starts("!DOCTYPE") || starts("!ENTITY") { throw ParseError.malformed("DTDs are not accepted", offset: i) }
            let tag = try name()
            var attrs: [String: String] = [:]
            while true {
                skipSpace()
                guard let c = peek else { throw ParseError.malformed("unterminated tag <\(tag)", offset: i) }
                if c == 0x2F { // />
                    i += 1
                    guard peek == 0x3E else { throw ParseError.malformed("expected >", offset: i) }
                    i += 1
                    return AWSXMLNode(name: tag, attributes: attrs, children: [], text: "")
                }
                if c == 0x3E { i += 1; break }
                let an = try name()
                skipSpace()
                guard peek == 0x3D else { throw ParseError.malformed("expected = after attribute \(an)", offset: i) }
                i += 1
                skipSpace()
                guard let q = peek, q == 0x22 || q == 0x27 else { throw ParseError.malformed("expected a quoted value", offset: i) }
                i += 1
                let vs = i
                while let c2 = peek, c2 != q { i += 1 }
                guard peek == q else { throw ParseError.malformed("unterminated attribute value", offset: i) }
                attrs[an] = try unescape(b[vs..<i], at: vs)
                i += 1
            }
            var children: [AWSXMLNode] = []
            var text = ""
            while true {
                guard let c = peek else { throw ParseError.malformed("unterminated element <\(tag)>", offset: i) }
                if c == 0x3C {
                    if starts("</") {
                        i += 2
                        let end = try name()
                        guard end == tag else { throw ParseError.malformed("</\(end)> closes <\(tag)>", offset: i) }
                        skipSpace()
                        guard peek == 0x3E else { throw ParseError.malformed("expected >", offset: i) }
                        i += 1
                        return AWSXMLNode(name: tag, attributes: attrs, children: children, text: text)
                    }
                    if starts("<!--") { try skip(past: "-->"); continue }
                    if starts("<![CDATA[") {
                        i += 9
                        let s = i
                        try skip(past: "]]>")
                        text += String(decoding: b[s..<(i - 3)], as: UTF8.self)
                        continue
                    }
                    if starts("<?") { try skip(past: "?>"); continue }
                    children.append(try element(depth: depth + 1))
                } else {
                    let s = i
                    while let c2 = peek, c2 != 0x3C { i += 1 }
                    text += try unescape(b[s..<i], at: s)
                }
            }
        }

        func unescape(_ s: ArraySlice<UInt8>, at offset: Int) throws -> String {
            guard s.contains(0x26) else { return String(decoding: s, as: UTF8.self) }
            var out: [UInt8] = []
            var j = s.startIndex
            while j < s.endIndex {
                if s[j] == 0x26 {
                    guard let semi = s[j...].firstIndex(of: 0x3B), semi - j <= 12 else {
                        throw ParseError.malformed("unterminated entity", offset: offset + (j - s.startIndex))
                    }
                    let ent = String(decoding: s[(j + 1)..<semi], as: UTF8.self)
                    switch ent {
                    case "lt": out.append(0x3C)
                    case "gt": out.append(0x3E)
                    case "amp": out.append(0x26)
                    case "quot": out.append(0x22)
                    case "apos": out.append(0x27)
                    default:
                        var scalar: UInt32?
                        if ent.hasPrefix("#x") || ent.hasPrefix("#X") { scalar = UInt32(ent.dropFirst(2), radix: 16) } else if ent.hasPrefix("#") { scalar = UInt32(ent.dropFirst(1)) }
                        guard let v = scalar, let u = Unicode.Scalar(v) else {
                            throw ParseError.malformed("unknown entity &\(ent);", offset: offset + (j - s.startIndex))
                        }
                        out.append(contentsOf: Array(String(Character(u)).utf8))
                    }
                    j = semi + 1
                } else {
                    out.append(s[j])
                    j += 1
                }
            }
            return String(decoding: out, as: UTF8.self)
        }
    }
}
