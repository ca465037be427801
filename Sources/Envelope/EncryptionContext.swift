import ByteCoding

/// The encryption context (spec/FORMAT.md §3.2.2; ESDK digest §2.2): UTF-8 key/value pairs.
///
/// Keys and values are kept as their exact UTF-8 bytes: Swift `String` equality treats
/// canonically equivalent spellings (NFC "café" vs NFD "café") as equal, the format does not.
/// Uniqueness and order are decided on raw bytes (memcmp order), never on `String`.
///
/// Grammar (non-empty): u16 pairCount (>0), pairCount × (u16 keyLen, key, u16 valueLen, value).
/// The empty context serializes to zero bytes.
public struct EncryptionContext: Sendable, Equatable, CustomStringConvertible {
    public struct Pair: Sendable, Equatable {
        public let key: [UInt8]
        public let value: [UInt8]
        public var keyString: String { String(decoding: key, as: UTF8.self) }
        public var valueString: String { String(decoding: value, as: UTF8.self) }
    }

    /// The key that carries the signature verification key of signing suites.
    public static let publicKeyKey = "aws-crypto-public-key"
    /// The serialization must fit the header's u16 AAD-length field.
    public static let maximumSerializedBytes = Int(UInt16.max)

    /// Pairs in their stored order: wire order when parsed (which may be unsorted), byte order
    /// when built by this library.
    public private(set) var pairs: [Pair]

    public static let empty = EncryptionContext(validatedPairs: [])

    private init(validatedPairs: [Pair]) { pairs = validatedPairs }

    /// From a dictionary (sorted by UTF-8 bytes). Note that a Swift dictionary cannot hold two
    /// canonically equivalent keys; use `init(pairs:)` for those.
    public init(_ dictionary: [String: String]) throws {
        try self.init(pairs: dictionary.map { ($0.key, $0.value) })
    }

    /// From string pairs (sorted by UTF-8 bytes; duplicate keys by bytes are refused).
    public init(pairs: [(String, String)]) throws {
        try self.init(rawPairs: pairs.map { (Array($0.0.utf8), Array($0.1.utf8)) })
    }

    /// From byte pairs; each must be valid UTF-8. Sorted by bytes; duplicates refused.
    public init(rawPairs: [([UInt8], [UInt8])]) throws {
        var ps: [Pair] = []
        for (k, v) in rawPairs {
            guard String(validating: k, as: UTF8.self) != nil, String(validating: v, as: UTF8.self) != nil else {
                throw EnvelopeError(.invalidEncryptionContext, "context keys and values must be valid UTF-8")
            }
            guard k.count <= Int(UInt16.max), v.count <= Int(UInt16.max) else {
                throw EnvelopeError(.invalidEncryptionContext, "a context key or value exceeds 65535 bytes")
            }
            ps.append(Pair(key: k, value: v))
        }
        ps.sort { $0.key.lexicographicallyPrecedes($1.key) }
        for i in ps.indices.dropFirst() where ps[i].key == ps[i - 1].key {
            throw EnvelopeError(.invalidEncryptionContext, "duplicate context key \"\(ps[i].keyString)\"")
        }
        pairs = ps
        _ = try serialized()
    }

    public var isEmpty: Bool { pairs.isEmpty }
    public var count: Int { pairs.count }

    /// Exact-bytes lookup.
    public func value(forKey key: String) -> String? {
        let k = Array(key.utf8)
        return pairs.first { $0.key == k }?.valueString
    }

    public func containsKey(_ key: String) -> Bool { value(forKey: key) != nil }

    /// True if the stored order is the byte order.
    public var isSorted: Bool {
        zip(pairs, pairs.dropFirst()).allSatisfy { $0.key.lexicographicallyPrecedes($1.key) }
    }

    /// A copy sorted by key bytes (what keyrings use as AAD).
    public var sorted: EncryptionContext {
        EncryptionContext(validatedPairs: pairs.sorted { $0.key.lexicographicallyPrecedes($1.key) })
    }

    /// A copy with one pair added or replaced, kept sorted.
    public func setting(_ key: String, to value: String) throws -> EncryptionContext {
        var raw = pairs.filter { $0.key != Array(key.utf8) }.map { ($0.key, $0.value) }
        raw.append((Array(key.utf8), Array(value.utf8)))
        return try EncryptionContext(rawPairs: raw)
    }

    public func removing(_ key: String) -> EncryptionContext {
        EncryptionContext(validatedPairs: pairs.filter { $0.key != Array(key.utf8) })
    }

    /// Serializes in stored order (`canonical: true` sorts first). Empty → zero bytes.
    public func serialized(canonical: Bool = false) throws -> [UInt8] {
        let ps = canonical ? sorted.pairs : pairs
        if ps.isEmpty { return [] }
        var w = ByteWriter()
        guard ps.count <= Int(UInt16.max) else { throw EnvelopeError(.invalidEncryptionContext, "more than 65535 pairs") }
        w.writeUInt16(UInt16(ps.count))
        do {
            for p in ps {
                try w.writeLengthPrefixed16(p.key, "context key")
                try w.writeLengthPrefixed16(p.value, "context value")
            }
        } catch let e as ByteCodingError {
            throw EnvelopeError(.invalidEncryptionContext, e.description)
        }
        guard w.count <= Self.maximumSerializedBytes else {
            throw EnvelopeError(.invalidEncryptionContext, "serialized context is \(w.count) bytes, the limit is \(Self.maximumSerializedBytes)")
        }
        return w.bytes
    }

    /// Parses exactly `bytes` (the AAD field of a header, already cut to its declared length).
    /// Unsorted pairs are accepted (the SDKs accept them); duplicate keys are not.
    static func parse(_ bytes: ArraySlice<UInt8>, baseOffset: Int) throws -> EncryptionContext {
        if bytes.isEmpty { return .empty }
        var r = ByteReader(bytes, baseOffset: baseOffset)
        do {
            let at = r.offset
            let n = Int(try r.readUInt16("context pair count"))
            guard n > 0 else { throw EnvelopeError(.invalidEncryptionContext, "a non-empty context declares 0 pairs", offset: at) }
            var ps: [Pair] = []
            var seen = Set<[UInt8]>()
            for _ in 0..<n {
                let kAt = r.offset
                let k = Array(try r.readString16("context key").utf8)
                let v = Array(try r.readString16("context value").utf8)
                guard seen.insert(k).inserted else {
                    throw EnvelopeError(.invalidEncryptionContext, "duplicate context key \"\(String(decoding: k, as: UTF8.self))\"", offset: kAt)
                }
                ps.append(Pair(key: k, value: v))
            }
            try r.expectEnd("encryption context")
            return EncryptionContext(validatedPairs: ps)
        } catch let e as ByteCodingError {
            throw EnvelopeError(.invalidEncryptionContext, e.description, offset: e.offset)
        }
    }

    public var description: String {
        "{" + pairs.map { "\"\($0.keyString)\": \"\($0.valueString)\"" }.joined(separator: ", ") + "}"
    }
}
