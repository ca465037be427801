/// The facade's own error type, for what only the facade can know (ids, the store, agreement
/// between layers). Errors of the layers below (EnvelopeError, ArchiveError, HSMError, StoreError,
/// CryptoError) pass through unchanged, so callers can match on their codes.
public struct HSMBackupError: Error, Equatable, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable {
        case backupNotFound        // no backup with that id (or prefix) in the store
        case ambiguousBackupID     // an id prefix that names several backups
        case invalidArgument       // options that do not fit together
        case metadataMismatch      // public metadata disagrees with the inner header
        case verificationFailed    // a verification report with errors (see its findings)
        case incompatibleHSM       // the target HSM is of another manufacturer or operator key
        case backupNotReady        // an operation that needs a ready backup
    }

    public let code: Code
    public let reason: String

    public init(_ code: Code, _ reason: String) {
        self.code = code
        self.reason = reason
    }

    public var description: String { "\(reason) [\(code.rawValue)]" }
    public static func == (a: Self, b: Self) -> Bool { a.code == b.code }
}
