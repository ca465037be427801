#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// The proxies `SocketHTTPTransport` goes through, from the environment as libcurl (and so the
/// URLSession transport before it) and the AWS CLI read it:
/// - `https://` endpoints: `https_proxy`, else `HTTPS_PROXY`; the transport opens a tunnel with
///   `CONNECT host:port` and runs TLS through it to the endpoint (the certificate is checked
///   against the endpoint's name, never the proxy's);
/// - `http://` endpoints: `http_proxy` only, never `HTTP_PROXY` (libcurl ignores it too: under CGI
///   it is set from a request's `Proxy:` header, "httpoxy"); requests go to the proxy in absolute
///   form (`GET http://host:port/path HTTP/1.1`), as libcurl and the AWS CLI send them;
/// - `no_proxy`, else `NO_PROXY`: a comma-separated list of hosts that go direct. `*` as the whole
///   value (spaces aside) matches every host; a `*` entry in a list matches nothing. A name matches
///   itself and every name under it (`example.com` and `.example.com` both match `example.com`
///   and `s3.example.com`, not `badexample.com`); an IP address (IPv6 with or without brackets)
///   matches itself, and `10.0.0.0/8` or `fd00::/8` every address in the block. Names are not
///   resolved: an IP entry matches an endpoint given by that IP only. Case and a trailing dot are
///   ignored.
/// Loopback destinations are never proxied, whatever the variables say: `localhost` and names
/// under it (`*.localhost`), 127.0.0.0/8 and `::1` (IPv4-mapped `::ffff:127.x.x.x` too). A
/// plain-http endpoint there (KMS on `http://localhost:4566`, whose answers carry plaintext data
/// keys; moto; a local MinIO) would otherwise cross the network to the proxy in the clear.
/// A proxy is `http://[user:password@]host[:port]` (or `host:port`; port 1080 when none, as in
/// libcurl). With a user, the transport sends `Proxy-Authorization: Basic …` (percent-decoded
/// from the URL); the credentials never appear in a message or log. `https://` (TLS to the
/// proxy) and SOCKS proxies are not supported: a request that would use one fails with a
/// configuration error (`InvalidProxy`) naming the variable, never silently going direct.
/// `all_proxy` is not read.
public struct ProxySettings: Sendable, CustomStringConvertible {
    public struct Proxy: Sendable, CustomStringConvertible {
        /// The proxy's host (brackets stripped from an IPv6 literal) and port.
        public let host: String
        public let port: UInt16
        /// The variable it came from (`https_proxy`, …).
        public let source: String
        /// `Basic base64(user:password)`, when the URL had a user; never printed.
        let authorization: String?

        public var hasCredentials: Bool { authorization != nil }
        public var hostPort: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
        public var description: String { "http://\(hostPort) (from \(source)\(hasCredentials ? ", with credentials" : ""))" }
    }

    enum Setting: Sendable {
        case direct
        case proxy(Proxy)
        case invalid(AWSError)
    }

    let https: Setting
    let http: Setting
    let noProxy: [NoProxyRule]

    /// No proxy for anything (whatever the environment says).
    public static let direct = ProxySettings(variables: [:])

    /// From `environment` (the process's by default).
    public init(_ environment: AWSEnvironment = .process) {
        func pick(_ names: [String]) -> (String, String)? {
            for n in names { if let v = environment[n] { return (n, v) } }
            return nil
        }
        https = pick(["https_proxy", "HTTPS_PROXY"]).map { Self.parse($0.1, source: $0.0) } ?? .direct
        // Never HTTP_PROXY (httpoxy: a CGI program gets it from the request's `Proxy:` header).
        http = pick(["http_proxy"]).map { Self.parse($0.1, source: $0.0) } ?? .direct
        noProxy = pick(["no_proxy", "NO_PROXY"]).map { Self.rules($0.1) } ?? []
    }

    /// From these variables only (tests, and callers that configure a transport themselves).
    public init(variables: [String: String]) {
        self.init(AWSEnvironment(variables: variables, home: "/nonexistent"))
    }

    /// The proxy a request to `host` (brackets optional) over `scheme` goes through; nil: direct
    /// (always for a loopback host). Throws the configuration error of a malformed or unsupported
    /// proxy variable that this request would use.
    public func proxy(scheme: String, host: String) throws -> Proxy? {
        if Self.isLoopback(host) { return nil }
        let setting = scheme.lowercased() == "https" ? https : http
        switch setting {
        case .direct: return nil
        case .invalid(let e):
            if Self.bypasses(host, noProxy) { return nil }
            throw e
        case .proxy(let p):
            return Self.bypasses(host, noProxy) ? nil : p
        }
    }

    public var description: String {
        func text(_ s: Setting) -> String {
            switch s {
            case .direct: return "direct"
            case .proxy(let p): return p.description
            case .invalid(let e): return "invalid (\(e.message))"
            }
        }
        return "ProxySettings(https: \(text(https)), http: \(text(http)), no_proxy: \(noProxy.count) entries)"
    }

    // MARK: parsing

    /// `http://[user[:password]@]host[:port][/]`, or the same without `http://`.
    static func parse(_ raw: String, source: String) -> Setting {
        func invalid(_ why: String) -> Setting {
            // The value is not repeated: it may hold a password.
            .invalid(AWSError.configuration("InvalidProxy", "\(source): \(why)", service: "http"))
        }
        var rest = Substring(raw.trimmingCharacters(in: .whitespaces))
        if let r = rest.range(of: "://") {
            let scheme = rest[..<r.lowerBound].lowercased()
            guard scheme == "http" else {
                return invalid("a \(scheme):// proxy is not supported (only http:// proxies, which carry https through CONNECT)")
            }
            rest = rest[r.upperBound...]
        }
        var userinfo: Substring?
        if let at = rest.lastIndex(of: "@") {
            userinfo = rest[..<at]
            rest = rest[rest.index(after: at)...]
        }
        if let slash = rest.firstIndex(where: { $0 == "/" || $0 == "?" || $0 == "#" }) {
            guard rest[slash...].allSatisfy({ $0 == "/" }) else { return invalid("a proxy URL has no path or query") }
            rest = rest[..<slash]
        }
        var host: Substring
        var portText: Substring?
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { return invalid("an IPv6 proxy address without its closing bracket") }
            host = rest[rest.index(after: rest.startIndex)..<close]
            let after = rest[rest.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { return invalid("text after the proxy's IPv6 address") }
                portText = after.dropFirst()
            }
        } else if let colon = rest.lastIndex(of: ":") {
            host = rest[..<colon]
            portText = rest[rest.index(after: colon)...]
        } else {
            host = rest
        }
        guard !host.isEmpty, !host.contains(where: { $0 == " " || $0 == "\t" || $0 == "@" }) else { return invalid("no proxy host") }
        var port: UInt16 = 1080
        if let portText {
            guard !portText.isEmpty, portText.allSatisfy({ ("0"..."9").contains($0) }), let p = UInt16(portText), p > 0 else {
                return invalid("the proxy's port is not a number from 1 to 65535")
            }
            port = p
        }
        var authorization: String?
        if let userinfo {
            let parts = userinfo.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
            guard let user = String(parts[0]).removingPercentEncoding,
                  let password = (parts.count > 1 ? String(parts[1]) : "").removingPercentEncoding else {
                return invalid("the proxy's user or password is not validly percent-encoded")
            }
            authorization = "Basic " + Data((user + ":" + password).utf8).base64EncodedString()
        }
        return .proxy(Proxy(host: String(host), port: port, source: source, authorization: authorization))
    }

    // MARK: no_proxy

    enum NoProxyRule: Sendable, Equatable {
        case all
        /// A name and everything under it.
        case domain(String)
        /// An address block (4 or 16 bytes, prefix length in bits).
        case network([UInt8], Int)
    }

    static func rules(_ list: String) -> [NoProxyRule] {
        // `*` turns proxies off only as the whole value (libcurl's rule); in a list it is no name.
        if list.trimmingCharacters(in: .whitespaces) == "*" { return [.all] }
        return list.split(separator: ",").compactMap { raw in
            var entry = raw.trimmingCharacters(in: .whitespaces).lowercased()
            if entry.isEmpty || entry == "*" { return nil }
            var bits: Int?
            if let slash = entry.lastIndex(of: "/") {
                bits = Int(entry[entry.index(after: slash)...])
                entry = String(entry[..<slash])
            }
            if entry.hasPrefix("[") && entry.hasSuffix("]") { entry = String(entry.dropFirst().dropLast()) }
            if let address = ipBytes(entry) {
                let full = address.count * 8
                guard let b = bits ?? Optional(full), (0...full).contains(b) else { return nil }
                return .network(address, b)
            }
            guard bits == nil else { return nil }
            while entry.hasPrefix(".") { entry.removeFirst() }
            while entry.hasSuffix(".") { entry.removeLast() }
            return entry.isEmpty ? nil : .domain(entry)
        }
    }

    /// Whether `host` (a name or an IP literal, brackets optional) goes direct under `rules`.
    static func bypasses(_ host: String, _ rules: [NoProxyRule]) -> Bool {
        var h = host.lowercased()
        if h.hasPrefix("[") && h.hasSuffix("]") { h = String(h.dropFirst().dropLast()) }
        while h.hasSuffix(".") { h.removeLast() }
        let address = ipBytes(h)
        for rule in rules {
            switch rule {
            case .all: return true
            case .domain(let d):
                if address == nil, h == d || h.hasSuffix("." + d) { return true }
            case .network(let net, let bits):
                if let a = address, a.count == net.count, prefixMatches(a, net, bits) { return true }
            }
        }
        return false
    }

    /// Whether `host` (a name or an IP literal, brackets optional) is this machine's loopback:
    /// `localhost` or a name under it (a trailing dot and case ignored), an address in
    /// 127.0.0.0/8, `::1`, or an IPv4-mapped `::ffff:127.x.x.x`. An IPv4 address is read as the
    /// resolver reads it (inet_aton, which getaddrinfo uses): `127.1`, `0x7f.0.0.1`, `2130706433`,
    /// `0177.0.0.1` and `127.000.000.001` are loopback too (`AWSConfiguration.isValidHost` refuses
    /// those forms before a request gets here; this agrees with the resolver all the same). Names
    /// are not resolved.
    public static func isLoopback(_ host: String) -> Bool {
        var h = host.lowercased()
        if h.hasPrefix("[") && h.hasSuffix("]") { h = String(h.dropFirst().dropLast()) }
        if h.hasSuffix(".") { h.removeLast() }
        if h == "localhost" || h.hasSuffix(".localhost") { return true }
        if let a = ipBytes(h) {
            if a.count == 4 { return a[0] == 127 }
            if a == [UInt8](repeating: 0, count: 15) + [1] { return true }
            return a[0..<10].allSatisfy { $0 == 0 } && a[10] == 0xFF && a[11] == 0xFF && a[12] == 127
        }
        // The forms inet_pton refuses but the resolver takes (shorthand, hex, octal, leading
        // zeros); inet_aton also takes anything after a space, which no host has.
        guard !h.isEmpty, !h.contains(where: { $0.isWhitespace }) else { return false }
        var v4 = in_addr()
        guard inet_aton(h, &v4) != 0 else { return false }
        return withUnsafeBytes(of: &v4) { $0[0] } == 127
    }

    static func ipBytes(_ s: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, s, &v4) == 1 { return withUnsafeBytes(of: &v4) { Array($0) } }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, s, &v6) == 1 { return withUnsafeBytes(of: &v6) { Array($0) } }
        return nil
    }

    private static func prefixMatches(_ a: [UInt8], _ b: [UInt8], _ bits: Int) -> Bool {
        var left = bits
        for i in 0..<a.count where left > 0 {
            let n = min(8, left)
            let mask = UInt8(truncatingIfNeeded: 0xFF << (8 - n))
            if a[i] & mask != b[i] & mask { return false }
            left -= n
        }
        return true
    }
}
