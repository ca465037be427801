// The home's store configuration for an S3 store (spec/FORMAT.md section 5.11): a versioned JSON
// file `store.json` in the store directory, written by `hsmbackup store init --s3 ...` and read
// by every command. It names locations only: credentials never appear in it (they come from the
// AWS environment variables or ~/.aws/credentials).
//
//   {
//     "format": "hsmbackup-store", "version": 1, "backend": "s3",
//     "storeId": "<32 hex digits>", "writeQuorum": 2,
//     "replicas": [ { "url": "s3://bucket/prefix", "endpoint": "http://127.0.0.1:9000", "region": "us-east-1" }, ... ],
//     "partSize": 8388608, "singlePutLimit": 8388608
//   }
import Durability
import Foundation
import ObjectStore

/// One replica: a bucket and a key prefix (no leading or trailing `/`; may be empty).
public struct S3Location: Hashable, Sendable, CustomStringConvertible {
    public let bucket: String
    public let prefix: String

    /// Parses `s3://BUCKET[/PREFIX]`.
    public init(url: String) throws {
        guard url.hasPrefix("s3://") else {
            throw StoreError(.invalidArgument, "\(url): an S3 location is s3://BUCKET/PREFIX")
        }
        let rest = url.dropFirst(5)
        let bucket = String(rest.prefix { $0 != "/" })
        var prefix = String(rest.dropFirst(bucket.count))
        while prefix.hasPrefix("/") { prefix.removeFirst() }
        while prefix.hasSuffix("/") { prefix.removeLast() }
        try self.init(bucket: bucket, prefix: prefix)
    }

    public init(bucket: String, prefix: String) throws {
        // S3 bucket naming rules: 3...63 of [a-z0-9.-], starting and ending with a letter or digit.
        let b = Array(bucket.utf8)
        let ok = (3...63).contains(b.count) && b.allSatisfy { ($0 >= 0x61 && $0 <= 0x7a) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2e || $0 == 0x2d }
            && b.first.map { $0 != 0x2e && $0 != 0x2d } == true && b.last.map { $0 != 0x2e && $0 != 0x2d } == true
        guard ok else { throw StoreError(.invalidArgument, "\"\(bucket)\" is not a valid S3 bucket name (3...63 of [a-z0-9.-])") }
        if !prefix.isEmpty { try ObjectKey.validate(prefix) }
        guard prefix.utf8.count <= 512 else { throw StoreError(.invalidArgument, "an S3 prefix has at most 512 bytes") }
        self.bucket = bucket
        self.prefix = prefix
    }

    /// The full S3 key of `name` under this location's prefix.
    public func key(_ name: String) -> String { prefix.isEmpty ? name : prefix + "/" + name }
    /// The S3 key prefix of everything this location holds (`prefix/`, or "").
    public var keyPrefix: String { prefix.isEmpty ? "" : prefix + "/" }

    public var description: String { "s3://\(bucket)" + (prefix.isEmpty ? "" : "/" + prefix) }
}

public struct S3StoreConfiguration: Equatable, Sendable {
    public static let format = "hsmbackup-store"
    public static let version = 1
    public static let fileName = "store.json"
    public static let maxReplicas = StoreConfig.maxReplicas
    /// S3's own limits: parts of 5 MiB...5 GiB, at most 10,000 of them (`maximumParts`). An object
    /// may reach `ObjectRecord.maxObjectSize` (64 GiB), so a part holds at least a 10,000th of it,
    /// rounded up to the 1 MiB record chunk: 7 MiB (5 and 6 MiB parts would run out of part
    /// numbers at 48.8 and 58.6 GiB, after uploading them). We keep parts at most 64 MiB (a part
    /// is held in memory) and a multiple of the record chunk.
    public static let maximumParts = 10_000
    public static let partSizeRange = minimumPartSize...(64 << 20)
    /// What a configuration file may say: stores made before the 7 MiB rule allowed 5 and 6 MiB.
    /// Such a store opens as before; its uploads use `uploadPartSize` (the part size only shapes
    /// new uploads, stored objects read the same).
    public static let acceptedPartSizeRange = (5 << 20)...(64 << 20)
    public static let defaultPartSize = 8 << 20
    static var minimumPartSize: Int {
        let chunk = UInt64(ObjectRecord.defaultChunkSize)
        let least = (ObjectRecord.maxObjectSize + UInt64(maximumParts) - 1) / UInt64(maximumParts)
        return Int((least + chunk - 1) / chunk * chunk)
    }

    public struct Replica: Equatable, Sendable {
        public let location: S3Location
        public let endpoint: S3Endpoint
        public init(location: S3Location, endpoint: S3Endpoint) { self.location = location; self.endpoint = endpoint }
        public var description: String { location.description + (endpoint.url.map { " at \($0)" } ?? " (AWS \(endpoint.region))") }
    }

    public let storeId: [UInt8]
    public let writeQuorum: Int
    public let replicas: [Replica]
    public let partSize: Int
    /// Objects up to this size are written with one PUT; larger ones with multipart.
    public let singlePutLimit: Int

    /// The part size of uploads: `partSize`, raised to the least that reaches the largest object
    /// in `maximumParts` parts for a store whose file predates that rule.
    public var uploadPartSize: Int { max(partSize, Self.minimumPartSize) }

    public init(storeId: [UInt8], writeQuorum: Int, replicas: [Replica], partSize: Int = defaultPartSize,
                singlePutLimit: Int? = nil) throws {
        try self.init(storeId: storeId, writeQuorum: writeQuorum, replicas: replicas, partSize: partSize,
                      singlePutLimit: singlePutLimit, accepting: Self.partSizeRange)
    }

    init(storeId: [UInt8], writeQuorum: Int, replicas: [Replica], partSize: Int, singlePutLimit: Int?,
         accepting sizes: ClosedRange<Int>) throws {
        guard storeId.count == 16 else { throw StoreError(.invalidArgument, "a store id has 16 bytes") }
        guard (1...Self.maxReplicas).contains(replicas.count) else {
            throw StoreError(.invalidArgument, "a store has 1...\(Self.maxReplicas) replicas, not \(replicas.count)")
        }
        guard (1...replicas.count).contains(writeQuorum) else {
            throw StoreError(.invalidArgument, "the write quorum must be 1...\(replicas.count), not \(writeQuorum)")
        }
        let places = replicas.map { "\($0.endpoint.url ?? $0.endpoint.region)|\($0.location.bucket)|\($0.location.prefix)" }
        guard Set(places).count == places.count else { throw StoreError(.invalidArgument, "replica locations must be distinct") }
        guard sizes.contains(partSize), partSize % ObjectRecord.defaultChunkSize == 0 else {
            throw StoreError(.invalidArgument, "the part size must be a multiple of 1 MiB in \(Self.partSizeRange.lowerBound >> 20)..."
                             + "\(Self.partSizeRange.upperBound >> 20) MiB, not \(partSize) bytes (\(Self.maximumParts) parts, "
                             + "S3's limit, must hold the largest object, \(ObjectRecord.maxObjectSize >> 30) GiB)")
        }
        let limit = singlePutLimit ?? partSize
        guard (0...partSize).contains(limit) else {
            throw StoreError(.invalidArgument, "the single-PUT limit must be 0...partSize, not \(limit)")
        }
        self.storeId = storeId
        self.writeQuorum = writeQuorum
        self.replicas = replicas
        self.partSize = partSize
        self.singlePutLimit = limit
    }

    public var storeIdHex: String { storeId.map { String(format: "%02x", $0) }.joined() }

    // MARK: JSON

    private struct File: Codable {
        struct R: Codable { let url: String; let endpoint: String?; let region: String }
        let format: String
        let version: Int
        let backend: String
        let storeId: String
        let writeQuorum: Int
        let replicas: [R]
        let partSize: Int?
        let singlePutLimit: Int?
    }

    public func encode() throws -> [UInt8] {
        let f = File(format: Self.format, version: Self.version, backend: "s3", storeId: storeIdHex, writeQuorum: writeQuorum,
                     replicas: replicas.map { .init(url: $0.location.description, endpoint: $0.endpoint.url, region: $0.endpoint.region) },
                     partSize: partSize, singlePutLimit: singlePutLimit)
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return Array(try enc.encode(f)) + [0x0a]
    }

    public static func parse(_ bytes: [UInt8], path: String) throws -> S3StoreConfiguration {
        func bad(_ why: String) -> StoreError { StoreError(.badFormat, path: path, "store configuration: \(why)") }
        // The version is read before anything else, so a newer file is refused by name.
        struct Head: Codable { let format: String?; let version: Int? }
        guard let head = try? JSONDecoder().decode(Head.self, from: Data(bytes)) else { throw bad("not a JSON object") }
        guard head.format == format else { throw bad("format is \(head.format.map { "\"\($0)\"" } ?? "missing"), not \"\(format)\"") }
        guard head.version == version else { throw bad("unknown version \(head.version.map(String.init) ?? "none") (this program reads \(version))") }
        let f: File
        do { f = try JSONDecoder().decode(File.self, from: Data(bytes)) } catch { throw bad("\(error)") }
        guard f.backend == "s3" else { throw bad("unknown backend \"\(f.backend)\"") }
        guard f.storeId.utf8.count == 32, let id = hexDecode(f.storeId) else { throw bad("storeId is not 32 hex digits") }
        do {
            let replicas = try f.replicas.map { r -> Replica in
                if let e = r.endpoint { try Self.validateEndpoint(e) }
                return Replica(location: try S3Location(url: r.url), endpoint: S3Endpoint(url: r.endpoint, region: r.region))
            }
            return try S3StoreConfiguration(storeId: id, writeQuorum: f.writeQuorum, replicas: replicas,
                                            partSize: f.partSize ?? defaultPartSize, singlePutLimit: f.singlePutLimit,
                                            accepting: acceptedPartSizeRange)
        } catch let e as StoreError { throw bad(e.reason) }
    }

    public static func validateEndpoint(_ url: String) throws {
        guard let u = URL(string: url), let scheme = u.scheme, ["http", "https"].contains(scheme), u.host != nil,
              u.path.isEmpty || u.path == "/", u.query == nil, u.user == nil else {
            throw StoreError(.invalidArgument, "\(url): an endpoint is http(s)://HOST[:PORT] with no path or credentials")
        }
    }

    static func hexDecode(_ s: String) -> [UInt8]? {
        var out: [UInt8] = []
        var it = s.utf8.makeIterator()
        while let a = it.next() {
            guard let b = it.next(), let hi = hexValue(a), let lo = hexValue(b) else { return nil }
            out.append(hi << 4 | lo)
        }
        return out
    }

    static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: return c - 0x30
        case 0x61...0x66: return c - 0x61 + 10
        default: return nil
        }
    }
}
