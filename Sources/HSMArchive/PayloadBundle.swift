import BackupCrypto
import ByteCoding
import Foundation
import PayloadCodec

// Implements spec/FORMAT.md section 4.7 (the payload): a pax tar whose first entry is
// `manifest.json`, followed by exactly the objects the manifest lists, in its order.

public enum ObjectKind: String, Codable, Sendable, CaseIterable {
    case policy, user, key

    /// The directory every object of the kind lives in.
    public var directory: String {
        switch self {
        case .policy: return "policies/"
        case .user: return "users/"
        case .key: return "keys/"
        }
    }

    /// Policies, users, keys: the order of the manifest and the tar.
    var payloadOrder: Int {
        switch self {
        case .policy: return 0
        case .user: return 1
        case .key: return 2
        }
    }

    /// The kind whose directory `path` is in, if any (compared as bytes: a restore asks once
    /// per object).
    public static func of(path: String) -> ObjectKind? {
        var path = path
        return path.withUTF8 { b in
            func starts(_ prefix: StaticString) -> Bool {
                let n = prefix.utf8CodeUnitCount
                return b.count >= n && memcmp(b.baseAddress!, prefix.utf8Start, n) == 0
            }
            if starts("keys/") { return .key }
            if starts("users/") { return .user }
            if starts("policies/") { return .policy }
            return nil
        }
    }
}

public struct PayloadObject: Sendable, Equatable {
    public let kind: ObjectKind
    public let path: String
    public let contents: [UInt8]

    public init(kind: ObjectKind, path: String, contents: [UInt8]) {
        self.kind = kind
        self.path = path
        self.contents = contents
    }
}

/// The manifest: one record per object, with its SHA-256. Canonical JSON (sorted keys, no
/// whitespace, `/` unescaped); a manifest in any other encoding is refused.
public struct PayloadManifest: Codable, Sendable, Equatable {
    public static let formatName = "hsmbackup-payload"
    public static let path = "manifest.json"

    public struct Record: Codable, Sendable, Equatable {
        public let kind: ObjectKind
        public let path: String
        public let sha256: String
        public let size: Int

        public init(kind: ObjectKind, path: String, sha256: String, size: Int) {
            self.kind = kind; self.path = path; self.sha256 = sha256; self.size = size
        }
    }

    public init(format: String = PayloadManifest.formatName, version: Int = 1, objects: [Record]) {
        self.format = format; self.version = version; self.objects = objects
    }

    public let format: String
    public let version: Int
    public let objects: [Record]

    public func canonicalBytes() throws -> [UInt8] {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return Array(try e.encode(self))
    }
}

public struct PayloadBundle: Sendable, Equatable {
    /// Objects in manifest order: policies, then users, then keys.
    public let objects: [PayloadObject]

    /// Object paths are plain ASCII, so the canonical JSON of the manifest is unambiguous.
    public static let pathCharacters = Set(Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._/-".utf8))
    public static let maximumPathBytes = 1024
    /// The tar holds the manifest and at most `maximumObjectsPerKind` objects of each kind.
    public static let tarLimits = TarLimits(maximumEntries: 3 * InnerFormat.maximumObjectsPerKind + 1,
                                            maximumEntryBytes: 64 << 20, maximumPathBytes: maximumPathBytes)

    public init(objects: [PayloadObject]) throws {
        let order: [ObjectKind: Int] = [.policy: 0, .user: 1, .key: 2]
        for (i, o) in objects.enumerated() {
            guard o.path.hasPrefix(o.kind.directory), o.path.hasSuffix(".json"), o.path.utf8.count <= Self.maximumPathBytes,
                  o.path.utf8.allSatisfy({ Self.pathCharacters.contains($0) }) else {
                throw ArchiveError(.invalidArgument, "object path must be \(o.kind.directory)<name>.json in [A-Za-z0-9._/-]", field: o.path)
            }
            if i > 0, order[objects[i - 1].kind]! > order[o.kind]! {
                throw ArchiveError(.invalidArgument, "objects must be ordered policies, users, keys", field: o.path)
            }
        }
        self.objects = objects
    }

    public var counts: (policies: Int, users: Int, keys: Int) {
        (objects.filter { $0.kind == .policy }.count, objects.filter { $0.kind == .user }.count,
         objects.filter { $0.kind == .key }.count)
    }

    public func objects(of kind: ObjectKind) -> [PayloadObject] { objects.filter { $0.kind == kind } }

    public var manifest: PayloadManifest {
        PayloadManifest(format: PayloadManifest.formatName, version: 1, objects: objects.map {
            .init(kind: $0.kind, path: $0.path, sha256: Hex.encode(SHA256Hasher.hash($0.contents)), size: $0.contents.count)
        })
    }

    public func tarBytes() throws -> [UInt8] {
        var entries = [TarEntry(path: PayloadManifest.path, contents: try manifest.canonicalBytes())]
        entries += objects.map { TarEntry(path: $0.path, contents: $0.contents) }
        do { return try PaxTar.write(entries, limits: Self.tarLimits) } catch let e as PayloadCodecError {
            throw ArchiveError(.invalidArgument, e.reason, field: e.entryPath)
        }
    }

    /// Parses and checks a whole payload tar against the header's descriptor (through the
    /// streaming `PayloadReader`): manifest first and canonical, tar entries exactly the
    /// manifest's list in order, every size and SHA-256, and the object counts.
    public static func parse(tar: [UInt8], descriptor: PayloadDescriptor) throws -> PayloadBundle {
        var objects: [PayloadObject] = []
        let reader = PayloadReader(descriptor: descriptor) { objects.append($0) }
        try reader.feed(tar)
        _ = try reader.finish()
        do { return try PayloadBundle(objects: objects) } catch let e as ArchiveError {
            throw ArchiveError(.manifestMalformed, e.reason, field: e.field)
        }
    }
}
