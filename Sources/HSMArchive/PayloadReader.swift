import BackupCrypto
import ByteCoding
import PayloadCodec

// Implements the payload checks of spec/FORMAT.md section 4.7 as a stream: the tar arrives in
// pieces as chunks authenticate and is checked entry by entry (manifest first, then each object
// against its manifest record: path, size, SHA-256), so memory holds the manifest's records and
// one object, never the payload.

/// The manifest's records in compact columns (about 60 bytes per object: a restore of a million
/// objects keeps them all until the objects arrive): kind, size, the path in one byte pool and
/// the SHA-256 in another.
public struct ManifestTable: Sendable {
    private var kinds: [ObjectKind] = []
    private var sizes: [UInt32] = []
    private var pathEnds: [UInt32] = []
    private var pathPool: [UInt8] = []
    private var digests: [UInt8] = []

    public init() {}

    public var count: Int { kinds.count }

    mutating func append(kind: ObjectKind, path: ArraySlice<UInt8>, size: Int, sha256: [UInt8]) {
        kinds.append(kind)
        sizes.append(UInt32(size))
        pathPool.append(contentsOf: path)
        pathEnds.append(UInt32(pathPool.count))
        digests.append(contentsOf: sha256)
    }

    public func kind(_ i: Int) -> ObjectKind { kinds[i] }
    public func size(_ i: Int) -> Int { Int(sizes[i]) }
    public func pathBytes(_ i: Int) -> ArraySlice<UInt8> { pathPool[(i == 0 ? 0 : Int(pathEnds[i - 1]))..<Int(pathEnds[i])] }
    public func path(_ i: Int) -> String { String(decoding: pathBytes(i), as: UTF8.self) }
    public func sha256(_ i: Int) -> ArraySlice<UInt8> { digests[(32 * i)..<(32 * i + 32)] }
}

/// Parser of the canonical manifest (spec 4.7). The grammar is the canonical encoding itself,
/// so what parses is canonical by construction (one encoding per value):
///
///   manifest = `{"format":"hsmbackup-payload","objects":[` [record *("," record)] `],"version":1}`
///   record   = `{"kind":"` kind `","path":"` path `","sha256":"` 64 lowercase hex `","size":` uint `}`
///   kind     = "policy" / "user" / "key";  uint = "0" / [1-9] *DIGIT
///   path     = the kind's directory, then [A-Za-z0-9._/-]*, ending ".json", at most 1024 bytes
///
/// Records are ordered policies, users, keys.
public enum ManifestParser {
    public static func parse(_ bytes: [UInt8], maximumObjectBytes: Int = PayloadBundle.tarLimits.maximumEntryBytes) throws -> ManifestTable {
        var at = 0
        func fail(_ why: String) -> ArchiveError {
            ArchiveError(.manifestMalformed, "the manifest is not a canonical version-1 manifest: \(why) at byte \(at)",
                         field: PayloadManifest.path)
        }
        func expect(_ literal: StaticString) throws {
            let n = literal.utf8CodeUnitCount
            let ok = literal.withUTF8Buffer { lit in at + n <= bytes.count && bytes[at..<(at + n)].elementsEqual(lit) }
            guard ok else { throw fail("expected \(literal)") }
            at += n
        }
        func string(allowed: [Bool], maximum: Int) throws -> ArraySlice<UInt8> {
            let start = at
            while at < bytes.count, bytes[at] != UInt8(ascii: "\"") {
                guard allowed[Int(bytes[at])], at - start < maximum else { throw fail("character or length not allowed in a string") }
                at += 1
            }
            let s = bytes[start..<at]
            try expect("\"")
            return s
        }
        try expect(#"{"format":"hsmbackup-payload","objects":["#)
        var records = ManifestTable()
        // Each path once: 128 bits of its SHA-256 stand for it (16 bytes a path, not a String).
        var seen = Set<SIMD2<UInt64>>()
        var previousKind: ObjectKind?
        let order: [ObjectKind: Int] = [.policy: 0, .user: 1, .key: 2]
        func table(_ chars: String) -> [Bool] {
            var t = [Bool](repeating: false, count: 256)
            for c in chars.utf8 { t[Int(c)] = true }
            return t
        }
        let hex = table("0123456789abcdef")
        let lower = table("abcdefghijklmnopqrstuvwxyz")
        let pathChars = table(String(decoding: Array(PayloadBundle.pathCharacters), as: UTF8.self))
        while at < bytes.count, bytes[at] != UInt8(ascii: "]") {
            if records.count > 0 { try expect(",") }
            try expect(#"{"kind":""#)
            let kindBytes = try string(allowed: lower, maximum: 8)
            guard let kind = ObjectKind(rawValue: String(decoding: kindBytes, as: UTF8.self)) else { throw fail("unknown kind") }
            if let previousKind, order[previousKind]! > order[kind]! {
                throw fail("objects must be ordered policies, users, keys")
            }
            previousKind = kind
            try expect(#","path":""#)
            let pathBytes = try string(allowed: pathChars, maximum: PayloadBundle.maximumPathBytes)
            guard pathBytes.starts(with: kind.directory.utf8), pathBytes.count > kind.directory.utf8.count + 5,
                  pathBytes.suffix(5).elementsEqual(".json".utf8) else {
                throw fail("path \(String(decoding: pathBytes, as: UTF8.self)) is not \(kind.directory)<name>.json")
            }
            let key = SHA256Hasher.hash(pathBytes).withUnsafeBytes { SIMD2<UInt64>($0.load(as: UInt64.self), $0.load(fromByteOffset: 8, as: UInt64.self)) }
            guard seen.insert(key).inserted else { throw fail("path \(String(decoding: pathBytes, as: UTF8.self)) listed twice") }
            try expect(#","sha256":""#)
            let digestHex = try string(allowed: hex, maximum: 64)
            guard digestHex.count == 64 else { throw fail("sha256 is not 64 lowercase hex digits") }
            try expect(#","size":"#)
            let sizeAt = at
            var size = 0
            while at < bytes.count, bytes[at] >= 0x30, bytes[at] <= 0x39 {
                guard !(at > sizeAt && bytes[sizeAt] == 0x30) else { throw fail("a size with a leading zero") }
                size = size * 10 + Int(bytes[at] - 0x30)
                guard size <= maximumObjectBytes else { throw fail("size beyond the \(maximumObjectBytes)-byte entry limit") }
                at += 1
            }
            guard at > sizeAt else { throw fail("a size") }
            try expect("}")
            records.append(kind: kind, path: pathBytes, size: size,
                           sha256: digestHex.withUnsafeBytes { Hex.decode(utf8: $0)! })
        }
        try expect(#"],"version":1}"#)
        guard at == bytes.count else { throw fail("bytes after the manifest") }
        return records
    }
}

/// The streaming payload check. Feed the tar in pieces, then `finish()`. Each object that
/// matches its record is handed to `onObject` (if given) with its bytes; without it, objects are
/// only hashed. Errors are `ArchiveError`s: `tarMalformed`, `manifestMalformed`,
/// `objectDigestMismatch`, `objectCountMismatch`. Once failed it stays failed.
public final class PayloadReader: TarVisitor {
    public struct Summary: Sendable, Equatable {
        public let policies: Int
        public let users: Int
        public let keys: Int
    }

    private let descriptor: PayloadDescriptor
    private let onObject: ((PayloadObject) throws -> Void)?
    private var tar: PaxTarReader!
    private var records = ManifestTable()
    private var manifestBytes: [UInt8] = []
    private var entry = -1
    private var hasher: SHA256Hasher?
    private var contents: [UInt8] = []
    private var failure: Error?

    public init(descriptor: PayloadDescriptor, onObject: ((PayloadObject) throws -> Void)? = nil) {
        self.descriptor = descriptor
        self.onObject = onObject
        // Each entry must be the manifest's next path, and those are unique (ManifestParser):
        // the tar reader need not keep every path too.
        var limits = PayloadBundle.tarLimits
        limits.refusesDuplicatePaths = false
        tar = PaxTarReader(limits: limits, visitor: self)
    }

    /// The manifest's records, once the manifest entry has been read.
    public var manifest: ManifestTable { records }

    public func feed(_ bytes: UnsafeRawBufferPointer) throws {
        if let failure { throw failure }
        do { try tar.feed(bytes) } catch { throw record(error) }
    }

    public func feed(_ bytes: [UInt8]) throws { try bytes.withUnsafeBytes { try feed($0) } }

    public func finish() throws -> Summary {
        if let failure { throw failure }
        do {
            try tar.finish()
            guard entry >= 0 else {
                throw ArchiveError(.manifestMalformed, "the payload holds no \(PayloadManifest.path)", field: PayloadManifest.path)
            }
            guard entry == records.count else {
                throw ArchiveError(.manifestMalformed, "the manifest lists \(records.count) objects, the tar holds \(entry)")
            }
        } catch { throw record(error) }
        return Summary(policies: Int(descriptor.policyCount), users: Int(descriptor.userCount), keys: Int(descriptor.keyCount))
    }

    private func record(_ error: Error) -> Error {
        let e: Error
        if let p = error as? PayloadCodecError {
            e = ArchiveError(.tarMalformed, p.reason, offset: p.offset, field: p.entryPath)
        } else {
            e = error
        }
        failure = e
        wipe(&contents)
        return e
    }

    // MARK: TarVisitor

    public func beginEntry(index: Int, path: String, size: Int, offset: Int) throws {
        entry = index
        if index == 0 {
            guard path == PayloadManifest.path else {
                throw ArchiveError(.manifestMalformed, "the first tar entry must be \(PayloadManifest.path)", field: path)
            }
            manifestBytes.reserveCapacity(size)
            return
        }
        guard index <= records.count else {
            throw ArchiveError(.manifestMalformed, "the tar holds more entries than the manifest's \(records.count) objects", field: path)
        }
        let r = index - 1
        guard records.pathBytes(r).elementsEqual(path.utf8) else {
            throw ArchiveError(.manifestMalformed, "tar entry \(path) where the manifest lists \(records.path(r))", field: path)
        }
        guard records.size(r) == size else {
            throw ArchiveError(.objectDigestMismatch, "object size \(size) differs from the manifest's \(records.size(r))", field: path)
        }
        hasher = SHA256Hasher()
        if onObject != nil {
            contents = []
            contents.reserveCapacity(size)
        }
    }

    public func entryData(_ bytes: UnsafeRawBufferPointer) throws {
        if entry == 0 {
            manifestBytes.append(contentsOf: bytes)
        } else {
            hasher!.update(bytes)
            if onObject != nil { contents.append(contentsOf: bytes) }
        }
    }

    public func endEntry() throws {
        if entry == 0 {
            records = try ManifestParser.parse(manifestBytes)
            manifestBytes = []
            var counts: [ObjectKind: Int] = [:]
            for r in 0..<records.count { counts[records.kind(r), default: 0] += 1 }
            let (p, u, k) = (counts[.policy] ?? 0, counts[.user] ?? 0, counts[.key] ?? 0)
            guard p == Int(descriptor.policyCount), u == Int(descriptor.userCount), k == Int(descriptor.keyCount) else {
                throw ArchiveError(.objectCountMismatch,
                                   "header counts \(descriptor.policyCount)/\(descriptor.userCount)/\(descriptor.keyCount) (policies/users/keys), manifest \(p)/\(u)/\(k)")
            }
            return
        }
        let r = entry - 1
        let digest = hasher!.finalize()
        hasher = nil
        guard constantTimeEqual(digest, records.sha256(r)) else {
            throw ArchiveError(.objectDigestMismatch, "object SHA-256 differs from the manifest", field: records.path(r))
        }
        if let onObject {
            let object = PayloadObject(kind: records.kind(r), path: records.path(r), contents: contents)
            contents = []
            try onObject(object)
        }
    }
}
