import COpenSSL

/// The one error type of BackupCrypto. `code` is stable and is what tests assert on; `reason`
/// is for people and never contains key material.
public struct CryptoError: Error, Equatable, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable {
        case invalidKeySize            // a key of a length the operation does not take
        case invalidInputSize          // plaintext/ciphertext length outside the mode's rules
        case authenticationFailed      // unwrap integrity check, GCM tag or signature failed
        case unsupportedNonceLength    // GCM nonce other than 12 bytes
        case unsupportedTagLength      // GCM tag other than 16 bytes
        case outputTooLarge            // KDF output longer than the KDF allows
        case invalidPublicKey          // an EC point that is not on P-384
        case invalidSignatureEncoding  // a signature that is not DER
        case openSSL                   // an OpenSSL call failed; reason holds its error queue
    }

    public let code: Code
    public let reason: String

    public init(_ code: Code, _ reason: String) {
        self.code = code
        self.reason = reason
    }

    public var description: String { "crypto error [\(code.rawValue)]: \(reason)" }

    public static func == (a: CryptoError, b: CryptoError) -> Bool { a.code == b.code }

    /// Turns a failed OpenSSL call and the thread's error queue into a typed error, and empties
    /// the queue so a later failure does not report a stale reason.
    static func openSSL(_ function: String) -> CryptoError {
        var messages: [String] = []
        while true {
            let err = ERR_get_error()
            if err == 0 { break }
            var buffer = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(err, &buffer, buffer.count)
            messages.append(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) },
                                   as: UTF8.self))
        }
        let detail = messages.isEmpty ? "no OpenSSL error queued" : messages.joined(separator: "; ")
        return CryptoError(.openSSL, "\(function) failed: \(detail)")
    }

    /// Empties the OpenSSL error queue (after a failure we report with our own code).
    static func clearQueue() { ERR_clear_error() }
}
