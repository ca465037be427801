import Durability

/// The HSM's own errors (format errors of a blob are `ArchiveError`s and pass through as is).
public struct HSMError: Error, Equatable, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable {
        case notFound              // no HSM state in the directory
        case alreadyExists         // creating an HSM where one (or other files) already is
        case operatorKeyMissing    // backup/restore before the operator installed the AKBK
        case operatorKeyPresent    // installing an AKBK where one already is
        case invalidState          // a state file is missing, unreadable or malformed
        case invalidObject         // a restored object does not decode, or breaks a content rule
        case invalidArgument       // populate/create arguments outside what the HSM supports
        case io                    // the file system failed
    }

    public let code: Code
    public let reason: String
    public let path: String?

    public init(_ code: Code, _ reason: String, path: String? = nil) {
        self.code = code
        self.reason = reason
        self.path = path
    }

    public var description: String { "HSM error [\(code.rawValue)]\(path.map { " (\($0))" } ?? ""): \(reason)" }

    public static func == (a: HSMError, b: HSMError) -> Bool { a.code == b.code }

    static func file(_ e: FileError) -> HSMError {
        let code: Code
        switch e.code {
        case .notFound: code = .notFound
        case .notDirectory: code = .invalidArgument  // `hsm create` under a path that is a file
        default: code = .io
        }
        return HSMError(code, e.description, path: e.path)
    }
}
