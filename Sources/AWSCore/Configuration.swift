#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// Region and endpoint resolution, following the AWS SDKs' conventions.
///
/// Region: an explicit value, else `AWS_REGION`, else `AWS_DEFAULT_REGION`, else `region` of the
/// profile in the config file.
/// Endpoint for service S (`s3`, `kms`): an explicit URL, else `AWS_ENDPOINT_URL_<S>` (upper
/// case), else `AWS_ENDPOINT_URL`, else the profile's `endpoint_url` in the config file, else the
/// AWS default `https://<s>.<region>.amazonaws.com` (`.amazonaws.com.cn` in `cn-*` regions).
/// `AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true` skips the environment and config file endpoints.
public enum AWSConfiguration {
    public static func region(explicit: String? = nil, _ env: AWSEnvironment = .process) throws -> String? {
        if let explicit, !explicit.isEmpty { return try validRegion(explicit, from: "the command line") }
        if let r = env["AWS_REGION"] { return try validRegion(r, from: "AWS_REGION") }
        if let r = env["AWS_DEFAULT_REGION"] { return try validRegion(r, from: "AWS_DEFAULT_REGION") }
        if let file = try AWSSharedConfigFile.load(env.configFile),
           let r = file.profile(env.profile, isConfigFile: true)?.string("region") {
            return try validRegion(r, from: "\(env.configFile) (profile \(env.profile))")
        }
        return nil
    }

    /// Like `region` but fails with a message naming where a region could be given.
    public static func requireRegion(explicit: String? = nil, _ env: AWSEnvironment = .process, for what: String) throws -> String {
        guard let r = try region(explicit: explicit, env) else {
            throw AWSError.configuration("NoRegion", "no AWS region for \(what): set AWS_REGION (or AWS_DEFAULT_REGION), or region in \(env.configFile)")
        }
        return r
    }

    /// A region is lower-case letters, digits and `-` (`us-east-1`).
    public static func validRegion(_ r: String, from source: String) throws -> String {
        guard !r.isEmpty, r.utf8.count <= 64, r.utf8.allSatisfy({ ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D }) else {
            throw AWSError.configuration("InvalidRegion", "region \"\(r)\" from \(source) is not a region name (like us-east-1)")
        }
        return r
    }

    /// Whether the endpoint was configured (a custom store: use path-style S3 addressing).
    public struct Endpoint: Sendable, Equatable {
        public let url: URL
        public let isCustom: Bool
        public let source: String
    }

    public static func endpoint(service: String, region: String, explicit: String? = nil, _ env: AWSEnvironment = .process) throws -> Endpoint {
        if let explicit, !explicit.isEmpty { return try parse(explicit, source: "the command line") }
        let ignore = env["AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"]?.lowercased() == "true"
        if !ignore {
            let perService = "AWS_ENDPOINT_URL_" + service.uppercased().replacingOccurrences(of: "-", with: "_")
            if let u = env[perService] { return try parse(u, source: perService) }
            if let u = env["AWS_ENDPOINT_URL"] { return try parse(u, source: "AWS_ENDPOINT_URL") }
            if let file = try AWSSharedConfigFile.load(env.configFile),
               let u = file.profile(env.profile, isConfigFile: true)?.string("endpoint_url") {
                return try parse(u, source: "\(env.configFile) (profile \(env.profile))")
            }
        }
        let suffix = region.hasPrefix("cn-") ? "amazonaws.com.cn" : "amazonaws.com"
        return Endpoint(url: URL(string: "https://\(service).\(region).\(suffix)")!, isCustom: false, source: "AWS default")
    }

    /// An endpoint URL: http or https, a host, optionally a port and a base path; no query. The
    /// host must pass `isValidHost`.
    public static func parse(_ s: String, source: String) throws -> Endpoint {
        guard let c = URLComponents(string: s), let scheme = c.scheme?.lowercased(), scheme == "http" || scheme == "https",
              let host = c.host, !host.isEmpty, c.query == nil, c.fragment == nil, c.user == nil, c.password == nil,
              let url = c.url else {
            throw AWSError.configuration("InvalidEndpoint", "endpoint \"\(AWSError.escapingControls(s))\" from \(source) is not an http(s) URL with a host (and no query or credentials)")
        }
        let raw = c.percentEncodedHost ?? host
        guard isValidHost(raw) else {
            throw AWSError.configuration("InvalidEndpoint", "endpoint \"\(AWSError.escapingControls(s))\" from \(source): " + invalidHostReason(raw))
        }
        return Endpoint(url: url, isCustom: true, source: source)
    }

    /// Whether `host`, as written in a URL (percent-encoded form; an IPv6 literal in brackets), is
    /// one the transport sends: a DNS name of letters, digits and hyphens in dot-separated labels
    /// (1 to 63 characters, no hyphen first or last, at most 253 in all, one trailing dot allowed),
    /// an IPv4 address, or an IPv6 address in brackets (no zone). So no percent-encoding (a host
    /// decoded from `%0D%0A` would split the request head, one from `%00` be cut short where C
    /// reads it), no spaces, controls or underscores.
    public static func isValidHost(_ host: String) -> Bool {
        if host.hasPrefix("[") {
            guard host.hasSuffix("]"), host.count > 2 else { return false }
            let inner = String(host.dropFirst().dropLast())
            var a = in6_addr()
            return inner.utf8.allSatisfy { ($0 >= 0x30 && $0 <= 0x3A) || ($0 >= 0x41 && $0 <= 0x46) || ($0 >= 0x61 && $0 <= 0x66) || $0 == 0x2E }
                && inet_pton(AF_INET6, inner, &a) == 1
        }
        var name = Substring(host)
        if name.hasSuffix(".") { name = name.dropLast() }
        guard !name.isEmpty, name.utf8.count <= 253 else { return false }
        // The resolver (getaddrinfo, through inet_aton) reads `127.1`, `0x7f.0.0.1`, `2130706433`,
        // `0177.0.0.1` or `127.000.000.001` as an IPv4 address; such a host looks like a name to
        // everything else here (the loopback and no_proxy rules, the certificate check), so it is
        // refused: an IPv4 address is written as four decimal numbers.
        if isShorthandIPv4(String(name)) { return false }
        for label in name.utf8.split(separator: 0x2E, omittingEmptySubsequences: false) {
            guard (1...63).contains(label.count), label.first != 0x2D, label.last != 0x2D,
                  label.allSatisfy({ ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D }) else {
                return false
            }
        }
        return true
    }

    /// Whether the resolver takes `s` as an IPv4 address (inet_aton, as getaddrinfo does) that is
    /// not in the strict dotted-quad form inet_pton takes: a shorthand (`127.1`, `2130706433`), a
    /// hex or octal part (`0x7f.0.0.1`, `0177.0.0.1`), leading zeros (`127.000.000.001`).
    public static func isShorthandIPv4(_ s: String) -> Bool {
        guard !s.isEmpty, !s.contains(where: { $0.isWhitespace }) else { return false }
        var a = in_addr()
        return inet_aton(s, &a) != 0 && inet_pton(AF_INET, s, &a) != 1
    }

    /// Why `host` (percent-encoded form) was refused, with it escaped.
    public static func invalidHostReason(_ host: String) -> String {
        "host \"\(AWSError.escapingControls(host))\" is not a DNS name or an IP address (a name is letters, digits and hyphens in "
            + "dot-separated labels; no percent-encoding, underscores, spaces or control characters; an IPv4 address is four "
            + "decimal numbers such as 127.0.0.1, not a shorthand, hex or octal form such as 127.1 or 0x7f.0.0.1)"
    }

    /// The retry policy: `AWS_MAX_ATTEMPTS` (1...20, the AWS SDKs' variable) or the default of 8
    /// attempts; full-jitter backoff from 100 ms, capped at 20 s.
    public static func retryPolicy(_ env: AWSEnvironment = .process) throws -> RetryPolicy {
        guard let s = env["AWS_MAX_ATTEMPTS"] else { return .default }
        guard let n = Int(s), (1...20).contains(n) else {
            throw AWSError.configuration("InvalidMaxAttempts", "AWS_MAX_ATTEMPTS=\(s) is not a number of attempts from 1 to 20")
        }
        return RetryPolicy(maximumAttempts: n)
    }
}
