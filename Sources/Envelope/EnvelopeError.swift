import ByteCoding
import BackupCrypto

/// The one error type of the Envelope module (spec/FORMAT.md §3). `code` is stable and is what
/// tests and the CLI switch on; `frame` and `offset` say where, when it is known; `reason` is for
/// people and never contains key material.
public struct EnvelopeError: Error, Equatable, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable, CaseIterable {
        // Header (§3.2)
        case truncatedHeader            // the input ended inside the header
        case unsupportedVersion         // a message format version other than 1 or 2
        case unsupportedSuite           // an algorithm suite ID we do not implement
        case suiteVersionMismatch       // suite ID does not belong to the header's version
        case nonCommittingSuiteRefused  // v1 / non-committing suite under the default policy
        case malformedHeader            // a length, count or fixed field that is impossible
        case invalidEncryptionContext   // duplicate keys, bad UTF-8, too large
        case reservedContextKey         // aws-crypto-public-key missing, present when it must not be, or supplied by a caller
        case invalidContentType         // neither framed (2) nor non-framed (1)
        case invalidFrameLength         // frame length outside the rules for the content type
        case noEncryptedDataKeys        // EDK count 0
        case tooManyEncryptedDataKeys   // EDK count over the configured maximum
        case headerTooLarge             // the header exceeds the named limit
        // Keys (§3.5)
        case noUsableKey                // no keyring opened any EDK; reason names the keys that would
        case encryptedDataKeyAuthenticationFailed // an EDK for a key held exactly (local KMS version) did not authenticate: altered header
        case keyVersionDisabled         // a local KMS key version exists but is disabled
        case commitmentMismatch         // the derived commitment key differs from the header's
        case headerAuthenticationFailed // the header tag does not verify
        // Body (§3.3)
        case frameOutOfSequence         // a sequence number other than the next one
        case frameAuthenticationFailed  // a frame (or the non-framed body) tag does not verify
        case truncatedFrame             // the input ended inside a frame
        case missingFinalFrame          // the input ended at a frame boundary with no final frame
        case finalFrameTooLong          // final frame content length > frame length
        case bodyTooLarge               // non-framed content over the limit this reader buffers
        case tooManyFrames              // more than 2^32-1 frames
        // Footer (§3.4)
        case truncatedFooter            // the input ended inside (or before) the footer
        case invalidSignature           // the footer signature does not verify
        case trailingBytes              // bytes after the end of the message
        // API use and the local KMS (§3.6)
        case invalidArgument            // a bad encrypt parameter (frame length, context, suite)
        case keyNotFound                // no such local KMS key or version
        case keyExists                  // create-key on a name that exists
        case invalidKeyName             // a key name outside the allowed alphabet
        case keystoreCorrupt            // a keystore file that does not parse
        case archiveMetadataInvalid     // reserved archive keys missing or malformed
        case archiveMetadataMismatch    // public metadata disagrees with the inner header
        case io                         // the byte source or sink failed
    }

    public let code: Code
    public let reason: String
    /// 1-based frame number (the final frame included) when the error is about a frame.
    public let frame: UInt32?
    /// Absolute byte offset in the message when known.
    public let offset: Int?

    public init(_ code: Code, _ reason: String, frame: UInt32? = nil, offset: Int? = nil) {
        self.code = code
        self.reason = reason
        self.frame = frame
        self.offset = offset
    }

    public var description: String {
        var s = "envelope error [\(code.rawValue)]"
        if let frame { s += " in frame \(frame)" }
        if let offset { s += " at offset \(offset)" }
        return s + ": " + reason
    }

    public static func == (a: EnvelopeError, b: EnvelopeError) -> Bool {
        a.code == b.code && a.frame == b.frame && a.offset == b.offset
    }

    /// Maps a ByteReader failure while parsing the header to our code.
    static func header(_ e: ByteCodingError, truncated: Code = .truncatedHeader) -> EnvelopeError {
        switch e.code {
        case .truncated: return EnvelopeError(truncated, "\(e.field): \(e.reason)", offset: e.offset)
        case .invalidUTF8: return EnvelopeError(.invalidEncryptionContext, "\(e.field): \(e.reason)", offset: e.offset)
        case .limitExceeded: return EnvelopeError(.malformedHeader, "\(e.field): \(e.reason)", offset: e.offset)
        default: return EnvelopeError(.malformedHeader, "\(e.field): \(e.reason)", offset: e.offset)
        }
    }

    static func crypto(_ e: Error, _ what: String) -> EnvelopeError {
        if let e = e as? EnvelopeError { return e }
        return EnvelopeError(.invalidArgument, "\(what): \(e)")
    }
}
