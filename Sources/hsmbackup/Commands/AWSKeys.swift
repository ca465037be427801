import AWSCore
import AWSKMS
import Envelope
import Foundation

// AWS KMS keys on the command line (issue 16): `--kms-key arn:aws:kms:…` (a key ARN, an alias
// ARN or `alias/NAME`) wherever a local KMS key name is accepted. Credentials, region and
// endpoint follow the AWS conventions (AWSCore: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/
// AWS_SESSION_TOKEN, AWS_PROFILE and ~/.aws/credentials, AWS_REGION, AWS_ENDPOINT_URL_KMS);
// never a secret in a flag.

enum AWSKeyrings {
    /// Resolved once per process, on first use (a command with no AWS key never reads them).
    nonisolated(unsafe) private static var cachedCredentials: AWSCredentials?
    private static let lock = NSLock()

    static func credentials() throws -> AWSCredentials {
        lock.lock(); defer { lock.unlock() }
        if let c = cachedCredentials { return c }
        let c = try AWSCredentialsResolver.resolve(.process)
        cachedCredentials = c
        return c
    }

    static func keyring(_ identifier: String) throws -> Keyring {
        try AWSKMSKeyring.make(identifier, credentials: try credentials(), retry: try AWSConfiguration.retryPolicy())
    }
}

extension EnvelopeKeyOptions {
    /// A local KMS key name, or an AWS KMS key (`arn:…` or `alias/…`).
    func keyring(forKMSKey name: String) throws -> Keyring {
        if KMSKeyIdentifier.looksLikeAWS(name) { return try AWSKeyrings.keyring(name) }
        return try kms.keyring(name)
    }
}

extension AWSError: CLIExitMappable {
    var cliExit: CLIExit {
        switch category {
        case .configuration: return .usage                       // no credentials or region, a bad ARN or endpoint
        case .notFound: return .notFound                         // NotFoundException: no such key or alias
        case .authentication, .accessDenied, .keyUnusable: return .noUsableKey // the key cannot be used with these credentials
        case .invalidRequest: return .usage                      // ValidationException and other 4xx
        case .transport, .throttled, .serverError, .clockSkew, .invalidResponse, .preconditionFailed, .conflict:
            return .ioError                                      // the service failed or could not be reached (after retries)
        }
    }

    var cliMessage: String { description }
}
