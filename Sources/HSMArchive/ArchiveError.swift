import ByteCoding
import BackupCrypto
import PayloadCodec

/// The one error type of HSMArchive (spec/FORMAT.md section 4.9 lists the codes). `code` is
/// stable and is what tests and the vectors' `expect` field name; `offset` is the absolute byte
/// offset in the inner blob, `chunk` the chunk index, `field` the header field or object path.
public struct ArchiveError: Error, Equatable, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable, CaseIterable {
        case badMagic                   // not an inner blob
        case unsupportedVersion         // unknown major version (refused before any crypto)
        case truncated                  // the input ends inside the header or a chunk frame
        case limitExceeded              // a length or count above its named limit
        case malformedHeader            // a header field with an invalid value or encoding
        case wrongManufacturer          // the blob names another manufacturer than the HSM
        case pbkMismatch                // PBK fingerprint differs: wrong MKBK generation or AKBK
        case ebkUnwrapFailed            // KW unwrap of the EBK under the PBK failed
        case headerSealMismatch         // the header seal does not verify under the EBK
        case malformedFrame             // unknown frame type or a length breaking the framing rules
        case chunkAuthenticationFailed  // KWP unwrap of a chunk failed
        case chunkBindingMismatch       // a chunk bound to another header, index or final flag
        case missingFinalChunk          // the chunk stream ends without its final chunk
        case dataAfterFinalChunk        // bytes after the final chunk
        case payloadMalformed           // zstd stream invalid, truncated, or of the wrong size
        case tarMalformed               // the payload tar is invalid or unsafe
        case manifestMalformed          // the manifest is missing, invalid, or disagrees with the tar
        case objectDigestMismatch       // an object's path, size or SHA-256 differs from its manifest record
        case objectCountMismatch        // object counts differ between header and manifest
        case invalidArgument            // a writer was given values the format cannot carry
        case writerFailed               // the writer was used after it failed or finished
    }

    public let code: Code
    public let reason: String
    public let offset: Int?
    public let chunk: Int?
    public let field: String?

    public init(_ code: Code, _ reason: String, offset: Int? = nil, chunk: Int? = nil, field: String? = nil) {
        self.code = code
        self.reason = reason
        self.offset = offset
        self.chunk = chunk
        self.field = field
    }

    public var description: String {
        var at: [String] = []
        if let field { at.append(field) }
        if let chunk { at.append("chunk \(chunk)") }
        if let offset { at.append("offset \(offset)") }
        return "inner blob error [\(code.rawValue)]\(at.isEmpty ? "" : " (" + at.joined(separator: ", ") + ")"): \(reason)"
    }

    public static func == (a: ArchiveError, b: ArchiveError) -> Bool { a.code == b.code }

    /// A ByteReader failure inside the header, as the matching archive error.
    static func header(_ e: ByteCodingError) -> ArchiveError {
        let code: Code
        switch e.code {
        case .truncated: code = .truncated
        case .limitExceeded: code = .limitExceeded
        case .trailingBytes, .invalidLength, .invalidUTF8, .unexpectedValue: code = .malformedHeader
        }
        return ArchiveError(code, e.reason, offset: e.offset, field: e.field)
    }
}
