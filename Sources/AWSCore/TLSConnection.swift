// TLS for `SocketHTTPTransport` on OpenSSL 3's libssl: the only Swift that touches the CTLS
// module. A `TLSContext` (SSL_CTX) holds the rules every connection shares; a `TLSSession`
// (SSL) is one connection's TLS over a non-blocking socket that the transport polls. Both own
// their OpenSSL object and free it in deinit. `TLSErrors` turns a failed call and OpenSSL's error
// queue into the code and reason the transport reports (`AWSError`, kind `.transport`).
//
// The rules, with no switch to relax them:
// - TLS 1.2 at least (a server that offers only TLS 1.0/1.1 is refused);
// - the server's chain is verified (SSL_VERIFY_PEER) against the system trust store
//   (SSL_CTX_set_default_verify_paths: /etc/ssl/certs on Debian/Ubuntu; OpenSSL's SSL_CERT_FILE
//   and SSL_CERT_DIR override it) or, when set, only against the PEM bundle of `AWS_CA_BUNDLE`
//   or of `ca_bundle` in the AWS config file's active profile, as the AWS SDKs do; a bundle that
//   cannot be read is an error, never a fallback to the system store;
// - the certificate must name the host: SSL_set1_host for a name (no partial wildcards such as
//   `s3*.example.com`), X509_VERIFY_PARAM_set1_ip_asc for an IPv4 or IPv6 literal;
// - SNI carries the name (never an IP literal, which RFC 6066 forbids);
// - no compression, no renegotiation; decrypted records wiped once read (SSL_OP_CLEANSE_PLAINTEXT).
// A certificate the chain or the name check refuses, and a handshake the server and these rules
// cannot agree on, are final (`AWSError.isRetryable` is false for their codes).
#if canImport(Glibc)
import Glibc
#endif
import CTLS
import Durability
import Foundation

/// The certificates a server's chain must lead to.
public enum TLSTrust: Sendable, Equatable, CustomStringConvertible {
    /// OpenSSL's default locations (the distribution's CA store).
    case system
    /// Only the certificates in this PEM file; `source` says where the path came from.
    case bundle(path: String, source: String)

    /// `AWS_CA_BUNDLE`, else `ca_bundle` of the active profile (`AWS_PROFILE`, else `default`) in
    /// the config file (`AWS_CONFIG_FILE`, else `~/.aws/config`), else the system store. A leading
    /// `~/` is the home directory.
    public static func resolve(_ env: AWSEnvironment = .process) throws -> TLSTrust {
        func expand(_ p: String) -> String { p.hasPrefix("~/") ? env.home + p.dropFirst(1) : p }
        if let p = env["AWS_CA_BUNDLE"] { return .bundle(path: expand(p), source: "AWS_CA_BUNDLE") }
        if let file = try AWSSharedConfigFile.load(env.configFile),
           let p = file.profile(env.profile, isConfigFile: true)?.string("ca_bundle"), !p.isEmpty {
            return .bundle(path: expand(p), source: "ca_bundle in \(env.configFile) (profile \(env.profile))")
        }
        return .system
    }

    public var description: String {
        switch self {
        case .system: return "the system trust store"
        case .bundle(let path, let source): return "the CA bundle \(path) (\(source))"
        }
    }
}

/// One SSL_CTX: client method, TLS 1.2 minimum, peer verification against `trust`.
final class TLSContext: @unchecked Sendable {
    let pointer: OpaquePointer
    let trust: TLSTrust

    private init(pointer: OpaquePointer, trust: TLSTrust) {
        self.pointer = pointer
        self.trust = trust
    }

    deinit { SSL_CTX_free(pointer) }

    /// Throws `AWSError` (kind `.configuration`, code `InvalidCABundle`) when the bundle cannot
    /// be read or holds no certificate.
    static func make(trust: TLSTrust) throws -> TLSContext {
        ERR_clear_error()
        guard let ctx = SSL_CTX_new(TLS_client_method()) else {
            throw AWSError.configuration("TLSSetupFailed", "cannot set up TLS: \(TLSErrors.drainQueue())", service: "http")
        }
        var keep = false
        defer { if !keep { SSL_CTX_free(ctx) } }
        guard hsmb_tls_ctx_set_min_tls12(ctx) == 1 else {
            throw AWSError.configuration("TLSSetupFailed", "cannot require TLS 1.2: \(TLSErrors.drainQueue())", service: "http")
        }
        hsmb_tls_ctx_configure(ctx)
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nil)
        switch trust {
        case .system:
            guard SSL_CTX_set_default_verify_paths(ctx) == 1 else {
                throw AWSError.configuration("TLSSetupFailed", "cannot use the system trust store: \(TLSErrors.drainQueue())", service: "http")
            }
        case .bundle(let path, let source):
            // Read by us first, for a clear reason (OpenSSL would say "system lib").
            do {
                let fd = try AtomicFile.openRegularFile(path)
                close(fd)
            } catch let e as FileError {
                throw AWSError.configuration("InvalidCABundle", "the CA bundle \(path) from \(source) cannot be read: \(e.reason)", service: "http")
            }
            ERR_clear_error()
            guard SSL_CTX_load_verify_locations(ctx, path, nil) == 1 else {
                throw AWSError.configuration("InvalidCABundle",
                                             "the CA bundle \(path) from \(source) holds no certificate OpenSSL can read (PEM expected): \(TLSErrors.drainQueue())",
                                             service: "http")
            }
        }
        keep = true
        return TLSContext(pointer: ctx, trust: trust)
    }
}

/// What a libssl call came to.
enum TLSOutcome {
    /// Done: bytes read or written (0 for the handshake).
    case done(Int)
    /// Call again once the socket is readable / writable.
    case wantRead
    case wantWrite
    /// The peer ended the stream: with close_notify (`notify`), or by closing the socket without it.
    case closed(notify: Bool)
    case failed(TLSFailure)
}

/// A failed TLS call: the transport's error code and the reason for the message.
struct TLSFailure: Error {
    /// `CertificateVerifyFailed`, `TLSHandshakeFailed` (both final), `TransportError`,
    /// `ConnectionClosed` or `TLSError`.
    let code: String
    let reason: String
}

/// One connection's TLS (an SSL over a non-blocking socket it does not own).
final class TLSSession {
    let ssl: OpaquePointer
    let context: TLSContext
    /// The host the certificate must name (brackets stripped from an IPv6 literal).
    let host: String
    private(set) var established = false
    /// A fatal error happened: no close_notify, no reuse.
    private(set) var broken = false
    private var shutDown = false

    /// Our socket BIO's method (CTLS shim: MSG_NOSIGNAL sends), made once for the process.
    nonisolated(unsafe) private static let bioMethod: OpaquePointer? = hsmb_tls_bio_method_new()

    private init(ssl: OpaquePointer, context: TLSContext, host: String) {
        self.ssl = ssl
        self.context = context
        self.host = host
    }

    deinit { SSL_free(ssl) } // frees the BIO too

    /// A session over `fd` for `host`, with the name check and SNI set; the handshake is `handshake()`.
    static func make(context: TLSContext, fd: Int32, host rawHost: String) throws -> TLSSession {
        ERR_clear_error()
        // A trailing dot (an absolute DNS name) is neither in certificates nor allowed in SNI.
        var host = rawHost
        while host.hasSuffix(".") { host.removeLast() }
        guard let method = bioMethod, let ssl = SSL_new(context.pointer) else {
            throw TLSFailure(code: "TLSError", reason: "cannot start TLS: \(TLSErrors.drainQueue())")
        }
        let session = TLSSession(ssl: ssl, context: context, host: host)
        guard let bio = hsmb_tls_bio_new(method, fd) else {
            throw TLSFailure(code: "TLSError", reason: "cannot start TLS: \(TLSErrors.drainQueue())")
        }
        SSL_set_bio(ssl, bio, bio)
        if isIPLiteral(host) {
            guard X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host) == 1 else {
                throw TLSFailure(code: "TLSError", reason: "cannot check certificates for the address \(host): \(TLSErrors.drainQueue())")
            }
        } else {
            SSL_set_hostflags(ssl, UInt32(X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS))
            guard SSL_set1_host(ssl, host) == 1, hsmb_tls_set_sni(ssl, host) == 1 else {
                throw TLSFailure(code: "TLSError", reason: "cannot check certificates for the name \(host): \(TLSErrors.drainQueue())")
            }
        }
        return session
    }

    /// An IPv4 or IPv6 address in text (no brackets).
    static func isIPLiteral(_ host: String) -> Bool {
        var v4 = in_addr()
        var v6 = in6_addr()
        return inet_pton(AF_INET, host, &v4) == 1 || inet_pton(AF_INET6, host, &v6) == 1
    }

    func handshake() -> TLSOutcome {
        ERR_clear_error()
        let r = SSL_connect(ssl)
        let err = errno
        if r == 1 { established = true; return .done(0) }
        return outcome(r, errno: err, handshake: true)
    }

    func read(_ p: UnsafeMutableRawPointer, _ n: Int) -> TLSOutcome { transfer { SSL_read_ex(ssl, p, n, &$0) } }

    func peek(_ p: UnsafeMutableRawPointer, _ n: Int) -> TLSOutcome { transfer { SSL_peek_ex(ssl, p, n, &$0) } }

    func write(_ p: UnsafeRawPointer, _ n: Int) -> TLSOutcome { transfer { SSL_write_ex(ssl, p, n, &$0) } }

    /// One SSL_*_ex call on a clear error queue; errno is read right after it (a syscall failure
    /// is reported through it).
    private func transfer(_ call: (inout Int) -> Int32) -> TLSOutcome {
        ERR_clear_error()
        var count = 0
        let r = call(&count)
        let err = errno
        if r == 1 { return .done(count) }
        return outcome(r, errno: err, handshake: false)
    }

    /// Decrypted bytes not yet read, or received records not yet processed.
    var hasBufferedInput: Bool { SSL_pending(ssl) > 0 || SSL_has_pending(ssl) == 1 }

    /// Decrypted application bytes not yet read.
    var hasPendingData: Bool { SSL_pending(ssl) > 0 }

    /// Sends close_notify once, without waiting for the server's (the socket is closed next).
    /// Nothing after a fatal error or before the handshake completed.
    func shutdown() {
        guard established, !broken, !shutDown else { return }
        shutDown = true
        ERR_clear_error()
        _ = SSL_shutdown(ssl)
        ERR_clear_error()
    }

    private func outcome(_ result: Int32, errno err: Int32, handshake: Bool) -> TLSOutcome {
        let e = SSL_get_error(ssl, result)
        switch e {
        case SSL_ERROR_WANT_READ:
            return .wantRead
        case SSL_ERROR_WANT_WRITE:
            return .wantWrite
        case SSL_ERROR_ZERO_RETURN:
            return .closed(notify: true)
        default:
            broken = true
            if let f = TLSErrors.failure(ssl: ssl, sslError: e, errno: err, handshake: handshake, host: host, trust: context.trust) {
                return .failed(f)
            }
            return .closed(notify: false)
        }
    }
}

/// OpenSSL's error queue and verify result as the transport's codes and reasons.
enum TLSErrors {
    /// Every reason in this thread's error queue, oldest first, which it empties.
    static func drainQueue() -> String {
        var reasons: [String] = []
        while true {
            let e = ERR_get_error()
            if e == 0 { break }
            reasons.append(reason(e))
        }
        return reasons.isEmpty ? "no reason given" : reasons.joined(separator: "; ")
    }

    private static func reason(_ e: UInt) -> String {
        if let r = ERR_reason_error_string(e) { return String(cString: r) }
        var buf = [CChar](repeating: 0, count: 256)
        ERR_error_string_n(e, &buf, buf.count)
        return buf.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    /// The failure behind a libssl call that returned `sslError` (SSL_get_error) with `errno`
    /// as it was, from the verify result and the error queue (emptied); nil when the peer closed
    /// the connection without close_notify (not a failure in itself: the caller decides).
    static func failure(ssl: OpaquePointer, sslError: Int32, errno err: Int32, handshake: Bool, host: String, trust: TLSTrust) -> TLSFailure? {
        let first = ERR_peek_error()
        let during = handshake ? "TLS handshake" : "TLS"
        if sslError == SSL_ERROR_SYSCALL && first == 0 {
            if err == 0 {
                ERR_clear_error()
                if handshake { return TLSFailure(code: "ConnectionClosed", reason: "the server closed the connection during the TLS handshake") }
                return nil
            }
            ERR_clear_error()
            return TLSFailure(code: "TransportError", reason: "\(during): \(String(cString: strerror(err)))")
        }
        if ERR_GET_LIB(first) == ERR_LIB_SSL && ERR_GET_REASON(first) == SSL_R_UNEXPECTED_EOF_WHILE_READING {
            ERR_clear_error()
            if handshake { return TLSFailure(code: "ConnectionClosed", reason: "the server closed the connection during the TLS handshake") }
            return nil
        }
        let verify = SSL_get_verify_result(ssl)
        if handshake && verify != X509_V_OK {
            ERR_clear_error()
            var why = String(cString: X509_verify_cert_error_string(verify))
            if verify == X509_V_ERR_HOSTNAME_MISMATCH || verify == X509_V_ERR_IP_ADDRESS_MISMATCH {
                why += " (the certificate is not for \(host))"
            }
            return TLSFailure(code: "CertificateVerifyFailed",
                              reason: "the server's certificate was refused: \(why) (X509 verify error \(verify); checked against \(trust))")
        }
        let reasonCode = ERR_GET_LIB(first) == ERR_LIB_SSL ? ERR_GET_REASON(first) : 0
        let queue = drainQueue()
        if handshake {
            var hint = ""
            switch reasonCode {
            case SSL_R_UNSUPPORTED_PROTOCOL, SSL_R_TLSV1_ALERT_PROTOCOL_VERSION, SSL_R_NO_PROTOCOLS_AVAILABLE:
                hint = " (hsmbackup requires TLS 1.2 or later)"
            case SSL_R_WRONG_VERSION_NUMBER, SSL_R_PACKET_LENGTH_TOO_LONG:
                hint = " (not a TLS server: is the endpoint plain http://?)"
            default: break
            }
            return TLSFailure(code: "TLSHandshakeFailed", reason: "TLS handshake failed: \(queue)\(hint)")
        }
        if sslError == SSL_ERROR_SYSCALL && err != 0 {
            return TLSFailure(code: "TransportError", reason: "\(during): \(String(cString: strerror(err)))")
        }
        return TLSFailure(code: "TLSError", reason: "TLS: \(queue)")
    }
}
