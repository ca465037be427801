import BackupCrypto
import ByteCoding
import Foundation
import PayloadCodec

// Implements the payload checks of spec/FORMAT.md section 4.7 as a stream, in memory that does
// not grow with the payload: the tar arrives in pieces as chunks authenticate; the manifest (the
// first entry) is parsed record by record as it arrives, never held whole; each object is then
// checked against its record. What is kept per object is 4 bytes of a record fingerprint (so a
// mismatch is reported at the object where it happens) and 16 bytes of a path key (each path at
// most once); a running SHA-256 over every record, compared with the same over what the objects
// turned out to be, makes the check exact at the end.

/// One manifest record (spec 4.7).
public struct ManifestRecord: Sendable, Equatable {
    public let kind: ObjectKind
    public let path: String
    public let size: Int
    public let sha256: [UInt8]

    init(kind: ObjectKind, path: String, size: Int, sha256: [UInt8]) {
        self.kind = kind
        self.path = path
        self.size = size
        self.sha256 = sha256
    }

    /// A record back from its `encoded` bytes (which `encode` wrote).
    init(encoded e: UnsafeRawBufferPointer) {
        let n = Int(e[1]) << 8 | Int(e[2])
        kind = e[0] == 1 ? .policy : e[0] == 2 ? .user : .key
        path = String(decoding: e[3..<(3 + n)], as: UTF8.self)
        var v: UInt64 = 0
        for i in 0..<8 { v = v << 8 | UInt64(e[3 + n + i]) }
        size = Int(v)
        sha256 = Array(e[(3 + n + 8)..<(3 + n + 8 + 32)])
    }

    /// `encoded` of a record given as the manifest's bytes (the digest as 64 lowercase hex
    /// digits, already checked), written into `out`, whose storage is reused.
    static func encode(kind: ObjectKind, path: UnsafeBufferPointer<UInt8>, size: Int, hexDigest: UnsafeBufferPointer<UInt8>,
                       into out: inout [UInt8]) {
        // Written in place, not byte by byte through `append` (this runs once per record while
        // the other threads wait for the manifest).
        let total = 1 + 2 + path.count + 8 + 32
        out.removeAll(keepingCapacity: true)
        out.reserveCapacity(total)
        out.append(contentsOf: repeatElement(0, count: total))
        out.withUnsafeMutableBufferPointer { o in
            let d = o.baseAddress!
            writeHead(kind: kind, path: path, size: size, to: d)
            let digest = d + 3 + path.count + 8
            @inline(__always) func nibble(_ c: UInt8) -> UInt8 { c <= 0x39 ? c &- 0x30 : c &- 0x61 &+ 10 }
            for i in 0..<32 { digest[i] = nibble(hexDigest[2 * i]) << 4 | nibble(hexDigest[2 * i + 1]) }
        }
    }

    /// The bytes both sides of the check hash: kind, path, size, SHA-256.
    var encoded: [UInt8] {
        precondition(sha256.count == 32)
        var path = self.path
        return path.withUTF8 { p in
            let total = 1 + 2 + p.count + 8 + 32
            return [UInt8](unsafeUninitializedCapacity: total) { o, initialized in
                let d = o.baseAddress!
                Self.writeHead(kind: kind, path: p, size: size, to: d)
                sha256.withUnsafeBufferPointer { (d + 3 + p.count + 8).update(from: $0.baseAddress!, count: 32) }
                initialized = total
            }
        }
    }

    /// The length of the encoded record that starts at `offset` in `b`.
    static func encodedCount(in b: UnsafeRawBufferPointer, at offset: Int) -> Int {
        3 + (Int(b[offset + 1]) << 8 | Int(b[offset + 2])) + 8 + 32
    }

    /// The path bytes of an encoded record.
    static func encodedPath(_ e: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: e[3..<(3 + (Int(e[1]) << 8 | Int(e[2])))])
    }

    /// The layout before the digest: kind (1 policy, 2 user, 3 key), path length u16, path, size u64.
    private static func writeHead(kind: ObjectKind, path: UnsafeBufferPointer<UInt8>, size: Int, to d: UnsafeMutablePointer<UInt8>) {
        d[0] = kind == .policy ? 1 : kind == .user ? 2 : 3
        d[1] = UInt8(truncatingIfNeeded: path.count >> 8)
        d[2] = UInt8(truncatingIfNeeded: path.count)
        if path.count > 0 { (d + 3).update(from: path.baseAddress!, count: path.count) }
        UnsafeMutableRawPointer(d + 3 + path.count).storeBytes(of: UInt64(size).bigEndian, as: UInt64.self)
    }

    /// 32 bits that tell a record from a changed one at once, so the error names the object
    /// (SipHash under a key drawn per process; the running SHA-256 is what decides). Computed
    /// twice per object, on the manifest's record and on the object found: one inlined
    /// SipHash pass, not an opaque `Hasher` (issue 17).
    static func fingerprint(_ encoded: [UInt8]) -> UInt32 {
        encoded.withUnsafeBytes { fingerprint($0) }
    }

    static func fingerprint(_ encoded: UnsafeRawBufferPointer) -> UInt32 {
        UInt32(truncatingIfNeeded: fingerprintKey.hash(encoded).0)
    }

    private static let fingerprintKey = SipHash128.randomlyKeyed()
}

/// Streaming parser of the canonical manifest (spec 4.7). The grammar is the canonical encoding
/// itself, so what parses is canonical by construction (one encoding per value):
///
///   manifest = `{"format":"hsmbackup-payload","objects":[` [record *("," record)] `],"version":1}`
///   record   = `{"kind":"` kind `","path":"` path `","sha256":"` 64 lowercase hex `","size":` uint `}`
///   kind     = "policy" / "user" / "key";  uint = "0" / [1-9] *DIGIT
///   path     = the kind's directory, then [A-Za-z0-9._/-]*, ending ".json", at most 1024 bytes
///
/// Records are ordered policies, users, keys, and no path appears twice. Feed the manifest's
/// bytes in any pieces (its total length is known from its tar header); each record is handed
/// to `onRecord` as soon as it is complete. Memory: one record's bytes and the path keys.
public struct ManifestParser {
    /// No record is longer (a 1024-byte path, a 64 MiB size): with this many bytes in hand, a
    /// record that does not parse is malformed, not short.
    static let maximumRecordBytes = 2048

    public let totalBytes: Int
    private let maximumObjectBytes: Int
    private var buffer: [UInt8] = []
    /// The current record's encoded bytes (reused: one allocation for the whole manifest).
    private var scratch: [UInt8] = []
    private var consumed = 0
    private var received = 0
    private var begun = false
    private var ended = false
    public private(set) var count = 0
    /// Records of each kind so far.
    public var counts: [ObjectKind: Int] { [.policy: policies, .user: users, .key: keys] }
    private var policies = 0, users = 0, keys = 0
    private var previousKind: ObjectKind?
    /// Each path once: 128 bits of two seeded hashes stand for it (16 bytes a path, not a
    /// String). A collision could only refuse a good manifest, never pass a bad one.
    private var seen: PathHashSet
    /// When true, the caller checks the paths (`ManifestRecordLane`, on another core): each record
    /// goes out with the offset its "listed twice" error names, and `seen` stays empty.
    private let callerChecksPaths: Bool
    private var pathEnd = 0
    /// Where, in `buffer`, the path of a record whose parse has begun but not ended lies: if the
    /// record then fails, its path may still be a repeat, which the serial parser reported first.
    private var unfinishedPath: Range<Int>?

    /// `expectedRecords`: how many records the header announces, so the path set is sized once
    /// (never beyond what `totalBytes` could hold: a record is at least 100 bytes).
    public init(totalBytes: Int, maximumObjectBytes: Int = PayloadBundle.tarLimits.maximumEntryBytes, expectedRecords: Int = 0) {
        self.init(totalBytes: totalBytes, maximumObjectBytes: maximumObjectBytes, expectedRecords: expectedRecords, callerChecksPaths: false)
    }

    init(totalBytes: Int, maximumObjectBytes: Int = PayloadBundle.tarLimits.maximumEntryBytes, expectedRecords: Int = 0,
         callerChecksPaths: Bool) {
        self.totalBytes = totalBytes
        self.maximumObjectBytes = maximumObjectBytes
        self.callerChecksPaths = callerChecksPaths
        seen = PathHashSet(capacity: callerChecksPaths ? 0 : min(max(0, expectedRecords), totalBytes / 100))
    }

    /// The records' paths at most once each is the caller's check (`callerChecksPaths`): each
    /// record as `ManifestRecord.encoded`, with the offset `duplicatePath` names for it.
    mutating func feedRecords(_ bytes: UnsafeRawBufferPointer, onRecord: (UnsafeRawBufferPointer, Int) throws -> Void) throws {
        precondition(callerChecksPaths)
        buffer.append(contentsOf: bytes)
        received += bytes.count
        try parseAvailable(onRecord: onRecord)
    }

    /// After a failure inside a record (`callerChecksPaths`): that record's path and the offset
    /// its "listed twice" error would name, when its path had been read.
    func unfinishedRecordPath() -> (path: [UInt8], end: Int)? {
        guard let r = unfinishedPath, r.upperBound <= buffer.count else { return nil }
        return (Array(buffer[r]), pathEnd)
    }

    /// The error of a path listed a second time, at `offset` (what this parser throws itself).
    static func duplicatePath(_ path: UnsafeRawBufferPointer, at offset: Int) -> ArchiveError {
        malformed("path \(String(decoding: path, as: UTF8.self)) listed twice", at: offset)
    }

    public mutating func feed(_ bytes: UnsafeRawBufferPointer, onRecord: (ManifestRecord) throws -> Void) throws {
        try feedEncoded(bytes) { try onRecord(ManifestRecord(encoded: $0)) }
    }

    /// `feed`, each record handed over as its `ManifestRecord.encoded` bytes (valid for the call
    /// only): the form the payload check hashes, with no String or array made per record.
    public mutating func feedEncoded(_ bytes: UnsafeRawBufferPointer, onRecord: (UnsafeRawBufferPointer) throws -> Void) throws {
        precondition(!callerChecksPaths)
        buffer.append(contentsOf: bytes)
        received += bytes.count
        try parseAvailable { encoded, _ in try onRecord(encoded) }
    }

    /// All `totalBytes` have been fed: the manifest must have ended exactly there.
    public mutating func finish() throws {
        guard received == totalBytes, ended, buffer.count == 0 else { throw fail("the manifest is incomplete", at: consumed) }
    }

    /// Parses a whole manifest (tests, tools).
    public static func parse(_ bytes: [UInt8]) throws -> [ManifestRecord] {
        var p = ManifestParser(totalBytes: bytes.count)
        var out: [ManifestRecord] = []
        try bytes.withUnsafeBytes { try p.feed($0) { out.append($0) } }
        try p.finish()
        return out
    }

    private func fail(_ why: String, at offset: Int) -> ArchiveError { Self.malformed(why, at: offset) }

    private static func malformed(_ why: String, at offset: Int) -> ArchiveError {
        ArchiveError(.manifestMalformed, "the manifest is not a canonical version-1 manifest: \(why) at byte \(offset)",
                     field: PayloadManifest.path)
    }

    private mutating func parseAvailable(onRecord: (UnsafeRawBufferPointer, Int) throws -> Void) throws {
        let all = received == totalBytes
        var at = 0
        var scratch = self.scratch
        self.scratch = []
        defer { self.scratch = scratch }
        try buffer.withUnsafeBufferPointer { b in
            func expect(_ literal: StaticString) throws {
                guard Self.matches(b, at, literal) else { throw fail("expected \(literal)", at: consumed + at) }
                at += literal.utf8CodeUnitCount
            }
            if !begun {
                guard at + Self.prefix.utf8CodeUnitCount <= b.count else {
                    if all { throw fail("expected the manifest's opening", at: consumed) }
                    return
                }
                try expect(Self.prefix)
                begun = true
            }
            while !ended {
                // Enough bytes for any record, or all there is.
                guard all || b.count - at >= Self.maximumRecordBytes + Self.suffix.utf8CodeUnitCount else { break }
                guard at + 1 <= b.count else { throw fail("the manifest ends inside its list", at: consumed + at) }
                if b[at] == UInt8(ascii: "]") {
                    try expect(Self.suffix)
                    ended = true
                    break
                }
                if count > 0 { try expect(",") }
                let kind = try parseRecord(b, &at, into: &scratch)
                unfinishedPath = nil
                count += 1
                switch kind {
                case .policy: policies += 1
                case .user: users += 1
                case .key: keys += 1
                }
                let pathEnd = self.pathEnd
                try scratch.withUnsafeBytes { try onRecord($0, pathEnd) }
            }
            if ended, at < b.count { throw fail("bytes after the manifest", at: consumed + at) }
        }
        buffer.removeFirst(at)
        consumed += at
    }

    private static let prefix: StaticString = #"{"format":"hsmbackup-payload","objects":["#
    private static let suffix: StaticString = #"],"version":1}"#

    /// Whether `literal` is at `at` in `b` (false when `b` ends first).
    private static func matches(_ b: UnsafeBufferPointer<UInt8>, _ at: Int, _ literal: StaticString) -> Bool {
        let n = literal.utf8CodeUnitCount
        return at + n <= b.count && memcmp(b.baseAddress! + at, literal.utf8Start, n) == 0
    }

    // Byte classes as 256-entry tables, built once and never written again (so shared
    // across threads safely): a record's parse reads them ~120 times.
    nonisolated(unsafe) private static let hex = table("0123456789abcdef")
    nonisolated(unsafe) private static let lower = table("abcdefghijklmnopqrstuvwxyz")
    nonisolated(unsafe) private static let pathChars = table(String(decoding: Array(PayloadBundle.pathCharacters), as: UTF8.self))
    private static func table(_ chars: String) -> UnsafePointer<Bool> {
        let t = UnsafeMutablePointer<Bool>.allocate(capacity: 256)
        t.initialize(repeating: false, count: 256)
        for c in chars.utf8 { t[Int(c)] = true }
        return UnsafePointer(t)
    }

    /// One record at `at`, written into `out` as its `ManifestRecord.encoded` bytes; returns
    /// its kind. Pure byte work: no String unless an error names the path.
    private mutating func parseRecord(_ b: UnsafeBufferPointer<UInt8>, _ at: inout Int, into out: inout [UInt8]) throws -> ObjectKind {
        let base = consumed
        let p = b.baseAddress!, n = b.count
        func fail(_ why: String) -> ArchiveError { self.fail(why, at: base + at) }
        func expect(_ literal: StaticString) throws {
            guard Self.matches(b, at, literal) else { throw fail("expected \(literal)") }
            at += literal.utf8CodeUnitCount
        }
        func string(allowed: UnsafePointer<Bool>, maximum: Int) throws -> Range<Int> {
            let start = at
            var i = at
            while i < n, p[i] != UInt8(ascii: "\"") {
                guard allowed[Int(p[i])], i - start < maximum else {
                    at = i
                    throw fail("character or length not allowed in a string")
                }
                i += 1
            }
            at = i
            let r = start..<at
            try expect("\"")
            return r
        }
        func equals(_ r: Range<Int>, _ literal: StaticString) -> Bool {
            r.count == literal.utf8CodeUnitCount && memcmp(p + r.lowerBound, literal.utf8Start, r.count) == 0
        }
        try expect(#"{"kind":""#)
        let kindRange = try string(allowed: Self.lower, maximum: 8)
        let kind: ObjectKind
        let directory: StaticString
        if equals(kindRange, "policy") {
            kind = .policy; directory = "policies/"
        } else if equals(kindRange, "user") {
            kind = .user; directory = "users/"
        } else if equals(kindRange, "key") {
            kind = .key; directory = "keys/"
        } else {
            throw fail("unknown kind")
        }
        if let previousKind, previousKind.payloadOrder > kind.payloadOrder {
            throw fail("objects must be ordered policies, users, keys")
        }
        previousKind = kind
        try expect(#","path":""#)
        let pathRange = try string(allowed: Self.pathChars, maximum: PayloadBundle.maximumPathBytes)
        let path = UnsafeBufferPointer(rebasing: b[pathRange])
        let d = directory.utf8CodeUnitCount
        guard path.count > d + 5, memcmp(path.baseAddress!, directory.utf8Start, d) == 0,
              memcmp(path.baseAddress! + path.count - 5, ".json", 5) == 0 else {
            throw fail("path \(String(decoding: path, as: UTF8.self)) is not \(kind.directory)<name>.json")
        }
        if callerChecksPaths {
            pathEnd = base + at
            unfinishedPath = pathRange
        } else {
            // Copy on write: a copied parser goes on with its own set, as a value should.
            if !isKnownUniquelyReferenced(&seen) { seen = seen.copy() }
            guard seen.insert(UnsafeRawBufferPointer(path)) else { throw Self.duplicatePath(UnsafeRawBufferPointer(path), at: base + at) }
        }
        try expect(#","sha256":""#)
        let digestRange = try string(allowed: Self.hex, maximum: 64)
        guard digestRange.count == 64 else { throw fail("sha256 is not 64 lowercase hex digits") }
        try expect(#","size":"#)
        let sizeAt = at
        var size = 0
        while at < n, p[at] >= 0x30, p[at] <= 0x39 {
            guard !(at > sizeAt && p[sizeAt] == 0x30) else { throw fail("a size with a leading zero") }
            size = size * 10 + Int(p[at] - 0x30)
            guard size <= maximumObjectBytes else { throw fail("size beyond the \(maximumObjectBytes)-byte entry limit") }
            at += 1
        }
        guard at > sizeAt else { throw fail("a size") }
        try expect("}")
        ManifestRecord.encode(kind: kind, path: path, size: size, hexDigest: UnsafeBufferPointer(rebasing: b[digestRange]), into: &out)
        return kind
    }
}

/// The manifest's paths seen so far, each as its 128-bit SipHash-2-4 (`SipHash128`, keyed at
/// random per set) in an open-addressing table (issue 17: the `Set` this replaces hashed each
/// key a third time and grew as it went; two passes of Swift's `Hasher`, the next version, cost
/// five times one inlined pass). SipHash is a keyed PRF, so no archive can
/// aim for two paths that collide; a chance collision (2^-128 a pair) could only make a good
/// manifest be refused, never a bad one pass. (A multiply-and-fold hash used here at first let
/// chosen paths collide whatever its seed; the review caught it, `PathHashSetTests` keeps the
/// pair.) The table doubles at three quarters full (16 bytes a slot: 8 MiB for the 380,000 paths
/// of a 1 GiB payload, as the `Set` took). A class, as it owns its table; `ManifestParser`
/// copies it on write, so the parser keeps value semantics.
final class PathHashSet {
    private var slots: UnsafeMutableBufferPointer<SIMD2<UInt64>>
    private var count = 0
    private let sip: SipHash128

    private init(slots: UnsafeMutableBufferPointer<SIMD2<UInt64>>, count: Int, sip: SipHash128) {
        self.slots = slots
        self.count = count
        self.sip = sip
    }

    /// An independent set holding the same paths (under the same key).
    func copy() -> PathHashSet {
        let table = UnsafeMutableBufferPointer<SIMD2<UInt64>>.allocate(capacity: slots.count)
        _ = table.initialize(from: slots)
        return PathHashSet(slots: table, count: count, sip: sip)
    }

    init(capacity: Int, sip: SipHash128 = .randomlyKeyed()) {
        var size = 64
        while Self.full(size) < capacity { size *= 2 }
        slots = .allocate(capacity: size)
        slots.initialize(repeating: .zero)
        self.sip = sip
    }

    deinit { slots.deallocate() }

    /// The most paths a table of `size` slots holds before it doubles.
    private static func full(_ size: Int) -> Int { size / 4 * 3 }

    /// Whether the path's hash is in the set.
    func contains(_ path: UnsafeRawBufferPointer) -> Bool { probe(key(path)).found }

    /// Adds the path's hash; false when it was there already.
    func insert(_ path: UnsafeRawBufferPointer) -> Bool {
        if count + 1 > Self.full(slots.count) { grow() }
        let k = key(path)
        let (slot, found) = probe(k)
        if found { return false }
        slots[slot] = k
        count += 1
        return true
    }

    /// The path's 128-bit key; zero marks an empty slot, so no key is zero.
    @inline(__always) private func key(_ path: UnsafeRawBufferPointer) -> SIMD2<UInt64> {
        let (a, b) = sip.hash(path)
        var key = SIMD2(a, b)
        if key == .zero { key.x = 1 }
        return key
    }

    /// Linear probing from the key's home slot: where the key is, or the empty slot it would take.
    @inline(__always) private func probe(_ key: SIMD2<UInt64>) -> (slot: Int, found: Bool) {
        let mask = slots.count - 1
        var i = Int(truncatingIfNeeded: key.x) & mask
        while slots[i] != .zero {
            if slots[i] == key { return (i, true) }
            i = (i + 1) & mask
        }
        return (i, false)
    }

    private func grow() {
        let old = slots
        slots = .allocate(capacity: old.count * 2)
        slots.initialize(repeating: .zero)
        let mask = slots.count - 1
        for key in old where key != .zero {
            var i = Int(truncatingIfNeeded: key.x) & mask
            while slots[i] != .zero { i = (i + 1) & mask }
            slots[i] = key
        }
        old.deallocate()
    }
}

/// An object read whole from the tar whose SHA-256 is not yet checked against its manifest
/// record (a `PayloadReader` made with `onUncheckedObject`). `digest(using:)` may run on any
/// thread (issue 17: hashing every object is a third of the reader's work, and objects are
/// independent); the result goes back to the reader, in payload order, through `accept(_:)`.
public struct UncheckedObject: Sendable {
    public let object: PayloadObject
    /// The tar entry (1-based among objects) and its record's fingerprint.
    let entry: Int
    let expected: UInt32

    /// Hashes the object with `hasher` (reset first; one per thread) into what `accept` needs.
    public func digest(using hasher: SHA256Hasher) -> DigestedObject {
        hasher.reset()
        hasher.update(object.contents)
        let encoded = ManifestRecord(kind: object.kind, path: object.path, size: object.contents.count, sha256: hasher.finalize()).encoded
        return DigestedObject(entry: entry, path: object.path, encoded: encoded,
                              matches: ManifestRecord.fingerprint(encoded) == expected)
    }
}

/// An `UncheckedObject`'s record as found; `PayloadReader.accept` decides.
public struct DigestedObject: Sendable {
    let entry: Int
    public let path: String
    let encoded: [UInt8]
    /// Whether the object is its record's (what `accept` will say; a worker may stop at a
    /// mismatch rather than check the rest of its batch).
    public let matches: Bool
}

/// The streaming payload check. Feed the tar in pieces, then `finish()`. Each object whose
/// record fingerprint matches is handed to `onObject` (if given) with its bytes; without it,
/// objects are only hashed. With `onUncheckedObject` instead, each object is handed over before
/// its digest is checked, and the consumer hashes it (`UncheckedObject.digest`) on whatever
/// thread it likes and returns every result through `accept(_:)` in payload order; `finish()`
/// refuses a payload whose objects were not all accepted. Errors are `ArchiveError`s:
/// `tarMalformed`, `manifestMalformed`, `objectDigestMismatch` (at the object, or at the end if
/// only the running digest tells), `objectCountMismatch`. Once failed it stays failed.
public final class PayloadReader: TarVisitor {
    public struct Summary: Sendable, Equatable {
        public let policies: Int
        public let users: Int
        public let keys: Int
    }

    private let descriptor: PayloadDescriptor
    private let onObject: ((PayloadObject) throws -> Void)?
    private let onUncheckedObject: ((UncheckedObject) throws -> Void)?
    /// Objects whose digest came back through `accept` (deferred mode).
    private var accepted = 0
    private var tar: PaxTarReader!
    private var manifest: ManifestParser?
    /// While the manifest streams: its paths, fingerprints and running digest, on another core.
    private var recordLane: ManifestRecordLane?
    private var fingerprints: [UInt32] = []
    private let listed = SHA256Hasher()
    private let found = SHA256Hasher()
    private var entry = -1
    private var path = ""
    private var kind = ObjectKind.key
    private var size = 0
    private var hasher: SHA256Hasher?
    private var contents: [UInt8] = []
    private var failure: Error?

    public convenience init(descriptor: PayloadDescriptor, onObject: ((PayloadObject) throws -> Void)? = nil) {
        self.init(descriptor: descriptor, onObject: onObject, onUncheckedObject: nil)
    }

    /// Deferred-digest mode: see `UncheckedObject`. (Its own first label, so that a trailing
    /// closure after `descriptor:` stays the plain mode's `onObject`.)
    public convenience init(deferringDigestsOf descriptor: PayloadDescriptor, onUncheckedObject: @escaping (UncheckedObject) throws -> Void) {
        self.init(descriptor: descriptor, onObject: nil, onUncheckedObject: onUncheckedObject)
    }

    private init(descriptor: PayloadDescriptor, onObject: ((PayloadObject) throws -> Void)?,
                 onUncheckedObject: ((UncheckedObject) throws -> Void)?) {
        self.descriptor = descriptor
        self.onObject = onObject
        self.onUncheckedObject = onUncheckedObject
        // Each entry must match the manifest's next record, whose paths are unique
        // (ManifestParser): the tar reader need not keep every path too.
        var limits = PayloadBundle.tarLimits
        limits.refusesDuplicatePaths = false
        tar = PaxTarReader(limits: limits, visitor: self)
    }

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
            guard entry == fingerprints.count else {
                throw ArchiveError(.manifestMalformed, "the manifest lists \(fingerprints.count) objects, the tar holds \(entry)")
            }
            if onUncheckedObject != nil, accepted != entry {
                throw ArchiveError(.objectDigestMismatch, "\(entry - accepted) of the payload's \(entry) objects were never checked against the manifest")
            }
            guard constantTimeEqual(listed.finalize(), found.finalize()) else {
                throw ArchiveError(.objectDigestMismatch, "the objects' paths, sizes or SHA-256s differ from the manifest")
            }
        } catch { throw record(error) }
        return Summary(policies: Int(descriptor.policyCount), users: Int(descriptor.userCount), keys: Int(descriptor.keyCount))
    }

    /// Deferred mode: the digest of the next object, in payload order. Throws
    /// `objectDigestMismatch` naming the object when it is not its record's.
    ///
    /// Every object handed out lies before any failure the reader met since (it stops at the
    /// first), so its digest is still judged after one: a mismatch here is the earlier error.
    public func accept(_ d: DigestedObject) throws {
        guard onUncheckedObject != nil, d.entry == accepted + 1 else {
            preconditionFailure("PayloadReader.accept: object \(d.entry) out of order (expected \(accepted + 1))")
        }
        accepted += 1
        guard d.matches else {
            let e = ArchiveError(.objectDigestMismatch, "object path, size or SHA-256 differs from manifest record \(d.entry)", field: d.path)
            if failure == nil { _ = record(e) }
            throw e
        }
        found.update(d.encoded)
    }

    /// For a consumer that stops on an error of its own (a later chunk that does not
    /// authenticate, a blob cut short): the reader's own failure that lies before it, if any,
    /// which is then the one to report (a path listed twice that the lane has not yet reported).
    public func earlierFailure() -> Error? {
        guard let lane = recordLane, let e = lane.drain() else { return nil }
        return record(e)
    }

    private func record(_ error: Error) -> Error {
        var e: Error
        if let p = error as? PayloadCodecError {
            e = ArchiveError(.tarMalformed, p.reason, offset: p.offset, field: p.entryPath)
        } else {
            e = error
        }
        // A path listed twice that the lane has not reported yet lies before this failure; so
        // does the path of the record this failure interrupted, if it repeats an earlier one.
        if let lane = recordLane {
            recordLane = nil
            if let earlier = lane.drain() {
                e = earlier
            } else if let (path, end) = manifest?.unfinishedRecordPath(), lane.contains(path) {
                e = path.withUnsafeBytes { ManifestParser.duplicatePath($0, at: end) }
            }
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
            let expected = Int(descriptor.policyCount) + Int(descriptor.userCount) + Int(descriptor.keyCount)
            manifest = ManifestParser(totalBytes: size, callerChecksPaths: true)
            recordLane = ManifestRecordLane(expectedRecords: min(expected, size / 100), listed: listed)
            if size == 0 { try endManifest() }
            return
        }
        guard index <= fingerprints.count else {
            throw ArchiveError(.manifestMalformed, "the tar holds more entries than the manifest's \(fingerprints.count) objects", field: path)
        }
        // Every record's path is in its kind's directory: an entry outside them is not its
        // record's object (a renamed entry, the same code as any other path that differs).
        guard let kind = ObjectKind.of(path: path) else {
            throw ArchiveError(.objectDigestMismatch, "tar entry \(index) (\(path)) is in none of policies/, users/, keys/: not manifest record \(index)",
                               field: path)
        }
        self.path = path
        self.kind = kind
        self.size = size
        if onUncheckedObject == nil { hasher = SHA256Hasher() }
        if onObject != nil || onUncheckedObject != nil {
            contents = []
            contents.reserveCapacity(size)
        }
    }

    public func entryData(_ bytes: UnsafeRawBufferPointer) throws {
        if entry == 0 {
            let lane = recordLane!
            try manifest!.feedRecords(bytes) { encoded, pathEnd in lane.add(encoded, pathEnd: pathEnd) }
        } else if onUncheckedObject != nil {
            contents.append(contentsOf: bytes)
        } else {
            hasher!.update(bytes)
            if onObject != nil { contents.append(contentsOf: bytes) }
        }
    }

    public func endEntry() throws {
        if entry == 0 {
            if manifest!.totalBytes > 0 { try endManifest() }
            return
        }
        if let onUncheckedObject {
            let object = PayloadObject(kind: kind, path: path, contents: contents)
            contents = []
            try onUncheckedObject(UncheckedObject(object: object, entry: entry, expected: fingerprints[entry - 1]))
            return
        }
        let actual = ManifestRecord(kind: kind, path: path, size: size, sha256: hasher!.finalize())
        hasher = nil
        let encoded = actual.encoded
        found.update(encoded)
        guard ManifestRecord.fingerprint(encoded) == fingerprints[entry - 1] else {
            throw ArchiveError(.objectDigestMismatch, "object path, size or SHA-256 differs from manifest record \(entry)", field: path)
        }
        if let onObject {
            let object = PayloadObject(kind: kind, path: path, contents: contents)
            contents = []
            try onObject(object)
        }
    }

    private func endManifest() throws {
        // The lane's records all parsed before anything `finish` could find: its error first.
        fingerprints = try recordLane!.finish()
        recordLane = nil
        try manifest!.finish()
        let counts = manifest!.counts
        let (p, u, k) = (counts[.policy]!, counts[.user]!, counts[.key]!)
        manifest = nil
        guard p == Int(descriptor.policyCount), u == Int(descriptor.userCount), k == Int(descriptor.keyCount) else {
            throw ArchiveError(.objectCountMismatch,
                               "header counts \(descriptor.policyCount)/\(descriptor.userCount)/\(descriptor.keyCount) (policies/users/keys), manifest \(p)/\(u)/\(k)")
        }
    }
}
