import CArchive

/// POSIX pax tar (IEEE 1003.1-2001 "pax interchange format"): written through libarchive, read
/// by `PaxTarReader`.
/// Spec: spec/FORMAT.md section 4.7 (payload). Only regular files with relative, normalized
/// UTF-8 paths are written or accepted; every other entry type is refused.
public struct TarEntry: Sendable, Equatable {
    public let path: String
    public let contents: [UInt8]

    public init(path: String, contents: [UInt8]) {
        self.path = path
        self.contents = contents
    }
}

public struct TarLimits: Sendable {
    public var maximumEntries: Int
    public var maximumEntryBytes: Int
    public var maximumPathBytes: Int
    /// Whether the reader itself refuses a path seen before (it keeps every path to do so). A
    /// caller that checks each entry against a list of unique paths turns it off.
    public var refusesDuplicatePaths: Bool

    public init(maximumEntries: Int = 1 << 20, maximumEntryBytes: Int = 64 << 20, maximumPathBytes: Int = 1024,
                refusesDuplicatePaths: Bool = true) {
        self.maximumEntries = maximumEntries
        self.maximumEntryBytes = maximumEntryBytes
        self.maximumPathBytes = maximumPathBytes
        self.refusesDuplicatePaths = refusesDuplicatePaths
    }
}

public enum PaxTar {
    /// The fixed metadata every entry is written with, so the same entries give the same bytes.
    public static let entryMode: UInt32 = 0o600
    public static let entryMTime = 0

    /// Writes the entries in order as a pax tar. Paths are checked as the reader checks them.
    public static func write(_ entries: [TarEntry], limits: TarLimits = TarLimits()) throws -> [UInt8] {
        PayloadLocale.ensure()
        guard entries.count <= limits.maximumEntries else {
            throw PayloadCodecError(.tooManyEntries, "\(entries.count) entries exceed the limit of \(limits.maximumEntries)")
        }
        var seen = Set<String>()
        for (i, e) in entries.enumerated() {
            try checkPath(e.path, index: i, limits: limits)
            guard seen.insert(e.path).inserted else {
                throw PayloadCodecError(.duplicatePath, "path appears twice", entryIndex: i, entryPath: e.path)
            }
            guard e.contents.count <= limits.maximumEntryBytes else {
                throw PayloadCodecError(.entryTooLarge, "\(e.contents.count) bytes exceed the limit of \(limits.maximumEntryBytes)",
                                        entryIndex: i, entryPath: e.path)
            }
        }
        let sink = MemorySink()
        guard let a = archive_write_new() else { throw PayloadCodecError(.tarWriteFailed, "archive_write_new failed") }
        defer { archive_write_free(a) }
        func check(_ r: Int32, _ what: String) throws {
            guard r == ARCHIVE_OK else {
                throw PayloadCodecError(.tarWriteFailed, "\(what): \(errorString(a))")
            }
        }
        try check(archive_write_set_format_pax(a), "set_format_pax")
        try check(archive_write_add_filter_none(a), "add_filter_none")
        // End right after the two end-of-archive blocks: no padding to a 10 KiB record.
        try check(archive_write_set_bytes_in_last_block(a, 1), "set_bytes_in_last_block")
        let ctx = Unmanaged.passUnretained(sink).toOpaque()
        try check(archive_write_open2(a, ctx, nil, { _, ctx, buf, n in
            guard let ctx, let buf else { return -1 }
            let sink = Unmanaged<MemorySink>.fromOpaque(ctx).takeUnretainedValue()
            sink.bytes.append(contentsOf: UnsafeRawBufferPointer(start: buf, count: n))
            return n
        }, nil, nil), "open")
        for (i, e) in entries.enumerated() {
            guard let entry = archive_entry_new() else { throw PayloadCodecError(.tarWriteFailed, "archive_entry_new failed") }
            defer { archive_entry_free(entry) }
            archive_entry_set_pathname_utf8(entry, e.path)
            archive_entry_set_filetype(entry, hsmb_ae_ifreg())
            archive_entry_set_perm(entry, mode_t(entryMode))
            archive_entry_set_size(entry, la_int64_t(e.contents.count))
            archive_entry_set_mtime(entry, time_t(entryMTime), 0)
            archive_entry_set_uid(entry, 0)
            archive_entry_set_gid(entry, 0)
            let r = archive_write_header(a, entry)
            guard r == ARCHIVE_OK else {
                throw PayloadCodecError(.tarWriteFailed, "write_header: \(errorString(a))", entryIndex: i, entryPath: e.path)
            }
            if !e.contents.isEmpty {
                let n = e.contents.withUnsafeBytes { archive_write_data(a, $0.baseAddress, $0.count) }
                guard n == e.contents.count else {
                    throw PayloadCodecError(.tarWriteFailed, "write_data: \(errorString(a))", entryIndex: i, entryPath: e.path)
                }
            }
        }
        try check(archive_write_close(a), "close")
        return sink.bytes
    }

    /// Reads a whole tar from memory through `PaxTarReader` (the one reader; see its grammar).
    public static func read(_ bytes: [UInt8], limits: TarLimits = TarLimits()) throws -> [TarEntry] {
        let collector = TarEntryCollector()
        let reader = PaxTarReader(limits: limits, visitor: collector)
        try reader.feed(bytes)
        try reader.finish()
        return collector.entries
    }

    /// A safe member path: relative, UTF-8, components neither empty nor `.` nor `..`, no NUL,
    /// no backslash, at most `maximumPathBytes`.
    public static func checkPath(_ path: String, index: Int, limits: TarLimits = TarLimits()) throws {
        func refuse(_ why: String) -> PayloadCodecError {
            PayloadCodecError(.unsafePath, why, entryIndex: index, entryPath: path)
        }
        // One pass over the UTF-8 bytes (a restore checks a path per object).
        var utf8 = path
        let problem: String? = utf8.withUTF8 { b in
            guard !b.isEmpty else { return "empty path" }
            guard b.count <= limits.maximumPathBytes else { return "path longer than \(limits.maximumPathBytes) bytes" }
            guard b[0] != UInt8(ascii: "/") else { return "absolute path" }
            var start = 0
            var unsafeCharacter = false
            var badComponent: String?
            for i in 0...b.count {
                let c = i < b.count ? b[i] : UInt8(ascii: "/")
                if c == 0 || c == UInt8(ascii: "\\") { unsafeCharacter = true }
                guard c == UInt8(ascii: "/") else { continue }
                let n = i - start
                if badComponent == nil {
                    if n == 0 {
                        badComponent = "empty path component"
                    } else if b[start] == UInt8(ascii: "."), n == 1 || (n == 2 && b[start + 1] == UInt8(ascii: ".")) {
                        badComponent = "`.` or `..` component"
                    }
                }
                start = i + 1
            }
            // The same precedence as before: a NUL or backslash is named first.
            return unsafeCharacter ? "NUL or backslash in path" : badComponent
        }
        if let problem { throw refuse(problem) }
    }

    private static func errorString(_ a: OpaquePointer) -> String {
        guard let s = archive_error_string(a) else { return "libarchive error \(archive_errno(a))" }
        return String(cString: s)
    }
}

final class MemorySink {
    var bytes: [UInt8] = []
}

/// Keeps every entry whole (for small tars: `PaxTar.read`, tests, tools).
public final class TarEntryCollector: TarVisitor {
    public private(set) var entries: [TarEntry] = []
    private var path = ""
    private var data: [UInt8] = []

    public init() {}

    public func beginEntry(index: Int, path: String, size: Int, offset: Int) throws {
        self.path = path
        data = []
        data.reserveCapacity(size)
    }

    public func entryData(_ bytes: UnsafeRawBufferPointer) throws { data.append(contentsOf: bytes) }

    public func endEntry() throws { entries.append(TarEntry(path: path, contents: data)) }
}

/// libarchive's pax writer converts names through the C locale: it needs a UTF-8 LC_CTYPE, set
/// once per process before the first archive is opened.
enum PayloadLocale {
    private static let once: Void = { hsmb_set_utf8_ctype() }()
    static func ensure() { _ = once }
}
