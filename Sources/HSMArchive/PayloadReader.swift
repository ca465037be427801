import BackupCrypto
import ByteCoding
import PayloadCodec

// Implements the payload checks of spec/FORMAT.md section 4.7 as a stream: the tar arrives in
// pieces as chunks authenticate and is checked entry by entry (manifest first, then each object
// against its manifest record: path, size, SHA-256), so memory holds the manifest's records and
// one object, never the payload.

/// A manifest record in compact form (the digest as 32 bytes).
public struct ManifestRecord: Sendable, Equatable {
    public let kind: ObjectKind
    public let path: String
    public let size: Int
    public let sha256: [UInt8]
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
    public static func parse(_ bytes: [UInt8], maximumObjectBytes: Int = PayloadBundle.tarLimits.maximumEntryBytes) throws -> [ManifestRecord] {
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
        func string(allowed: Set<UInt8>, maximum: Int) throws -> [UInt8] {
            let start = at
            while at < bytes.count, bytes[at] != UInt8(ascii: "\"") {
                guard allowed.contains(bytes[at]), at - start < maximum else { throw fail("character or length not allowed in a string") }
                at += 1
            }
            let s = Array(bytes[start..<at])
            try expect("\"")
            return s
        }
        try expect(#"{"format":"hsmbackup-payload","objects":["#)
        var records: [ManifestRecord] = []
        let order: [ObjectKind: Int] = [.policy: 0, .user: 1, .key: 2]
        let hex = Set(Array("0123456789abcdef".utf8))
        while at < bytes.count, bytes[at] != UInt8(ascii: "]") {
            if !records.isEmpty { try expect(",") }
            try expect(#"{"kind":""#)
            let kindBytes = try string(allowed: Set(Array("abcdefghijklmnopqrstuvwxyz".utf8)), maximum: 8)
            guard let kind = ObjectKind(rawValue: String(decoding: kindBytes, as: UTF8.self)) else { throw fail("unknown kind") }
            if let previous = records.last, order[previous.kind]! > order[kind]! {
                throw fail("objects must be ordered policies, users, keys")
            }
            try expect(#","path":""#)
            let pathBytes = try string(allowed: PayloadBundle.pathCharacters, maximum: PayloadBundle.maximumPathBytes)
            let path = String(decoding: pathBytes, as: UTF8.self)
            guard path.hasPrefix(kind.directory), path.hasSuffix(".json") else { throw fail("path \(path) is not \(kind.directory)<name>.json") }
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
            records.append(ManifestRecord(kind: kind, path: path, size: size,
                                          sha256: Hex.decode(String(decoding: digestHex, as: UTF8.self))!))
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
    private var records: [ManifestRecord] = []
    private var manifestBytes: [UInt8] = []
    private var entry = -1
    private var hasher: SHA256Hasher?
    private var contents: [UInt8] = []
    private var failure: Error?

    public init(descriptor: PayloadDescriptor, onObject: ((PayloadObject) throws -> Void)? = nil) {
        self.descriptor = descriptor
        self.onObject = onObject
        tar = PaxTarReader(limits: PayloadBundle.tarLimits, visitor: self)
    }

    /// The manifest's records, once the manifest entry has been read.
    public var manifest: [ManifestRecord] { records }

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
        let r = records[index - 1]
        guard r.path == path else {
            throw ArchiveError(.manifestMalformed, "tar entry \(path) where the manifest lists \(r.path)", field: path)
        }
        guard r.size == size else {
            throw ArchiveError(.objectDigestMismatch, "object size \(size) differs from the manifest's \(r.size)", field: path)
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
            for r in records { counts[r.kind, default: 0] += 1 }
            let (p, u, k) = (counts[.policy] ?? 0, counts[.user] ?? 0, counts[.key] ?? 0)
            guard p == Int(descriptor.policyCount), u == Int(descriptor.userCount), k == Int(descriptor.keyCount) else {
                throw ArchiveError(.objectCountMismatch,
                                   "header counts \(descriptor.policyCount)/\(descriptor.userCount)/\(descriptor.keyCount) (policies/users/keys), manifest \(p)/\(u)/\(k)")
            }
            return
        }
        let r = records[entry - 1]
        let digest = hasher!.finalize()
        hasher = nil
        guard constantTimeEqual(digest, r.sha256) else {
            throw ArchiveError(.objectDigestMismatch, "object SHA-256 differs from the manifest", field: r.path)
        }
        if let onObject {
            let object = PayloadObject(kind: r.kind, path: r.path, contents: contents)
            contents = []
            try onObject(object)
        }
    }
}
