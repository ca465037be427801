/// The one error type of PayloadCodec. `code` is stable (tests assert on it); `entry` names the
/// tar entry (index and path) where one is involved; `offset` is a byte offset in the input where
/// one is known.
public struct PayloadCodecError: Error, Equatable, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable {
        case unsafePath            // absolute, `..`, `.`, empty component, NUL, or not UTF-8
        case duplicatePath         // the same path twice in one archive
        case unsupportedEntryType  // anything but a regular file (links, devices, dirs, fifos)
        case entryTooLarge         // an entry larger than the limit, or than it declared
        case tooManyEntries        // more entries than the limit
        case malformedTar          // the tar breaks the grammar of PaxTarReader
        case tarWriteFailed        // libarchive failed while writing
        case compressFailed        // zstd failed while compressing
        case malformedCompressed   // zstd could not decode the input (corrupt, not zstd)
        case truncatedCompressed   // the zstd frame ends early
        case trailingCompressed    // bytes after the single zstd frame
        case sizeLimitExceeded     // decompressed output would exceed the declared size (zstd bomb)
        case sizeMismatch          // decompressed output is shorter than declared
        case unsupportedFrame      // a zstd frame with a dictionary, or a window larger than its content
    }

    public let code: Code
    public let reason: String
    public let entryIndex: Int?
    public let entryPath: String?
    public let offset: Int?

    public init(_ code: Code, _ reason: String, entryIndex: Int? = nil, entryPath: String? = nil, offset: Int? = nil) {
        self.code = code
        self.reason = reason
        self.entryIndex = entryIndex
        self.entryPath = entryPath
        self.offset = offset
    }

    public var description: String {
        var at = ""
        if let entryIndex { at += " entry \(entryIndex)" }
        if let entryPath { at += " (\(entryPath))" }
        if let offset { at += " at offset \(offset)" }
        return "payload codec error [\(code.rawValue)]\(at): \(reason)"
    }

    public static func == (a: PayloadCodecError, b: PayloadCodecError) -> Bool { a.code == b.code }
}
