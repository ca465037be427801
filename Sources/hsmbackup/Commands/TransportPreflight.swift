import AWSCore
import Durability
import Foundation
import S3Store

/// Before a command works on an S3 store, what the transport reads from the environment is
/// checked: the proxy variables for each endpoint, and for an `https://` endpoint (or AWS's) the
/// TLS trust (`AWS_CA_BUNDLE`, the profile's `ca_bundle`), which is loaded here (the requests then
/// use it). A malformed or unsupported proxy variable, or a CA bundle that cannot be read, is then a
/// configuration error (exit 64) naming the variable or file, as for a KMS key, instead of every
/// replica reported unreachable (74).
enum TransportPreflight {
    static func check(_ configuration: S3StoreConfiguration) throws {
        var https = false
        for r in configuration.replicas {
            let url = URL(string: r.endpoint.url ?? "https://s3.\(r.endpoint.region).amazonaws.com")
            let scheme = url?.scheme?.lowercased() ?? "https"
            if scheme == "https" { https = true }
            if let host = url?.host { _ = try SocketHTTPTransport.shared.proxies.proxy(scheme: scheme, host: host) }
        }
        if https { try SocketHTTPTransport.shared.prepareTLS() }
    }

    /// The store at `root`, if it is an S3 store whose configuration reads (opening it reports
    /// anything else).
    static func check(storeRoot root: String) throws {
        guard StoreLocator.isS3(root: root) else { return }
        let path = root + "/" + S3StoreConfiguration.fileName
        guard let bytes = try? AtomicFile.read(path, limit: 1 << 20), let config = try? S3StoreConfiguration.parse(bytes, path: path) else { return }
        try check(config)
    }
}
