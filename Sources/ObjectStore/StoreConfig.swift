// The store's configuration file and the replica marker (spec/FORMAT.md section 5.1).
//
//   store.conf = "HSMBSTOR" || version u16 (=1) || storeId[16] || writeQuorum u8
//                || replicaCount u8 || replicaPath (u16-prefixed UTF-8) [replicaCount]
//   REPLICA    = "HSMBREPL" || version u16 (=1) || storeId[16] || index u8
import ByteCoding

public struct StoreConfig: Equatable, Sendable {
    public static let magic: [UInt8] = Array("HSMBSTOR".utf8)
    public static let version: UInt16 = 1
    public static let fileName = "store.conf"
    public static let maxReplicas = 16
    public static let maxPathLength = 4096

    public let storeId: [UInt8]
    public let writeQuorum: Int
    /// Replica directories as configured: absolute, or relative to the store root.
    public let replicas: [String]

    public init(storeId: [UInt8], writeQuorum: Int, replicas: [String]) throws {
        guard storeId.count == 16 else { throw StoreError(.invalidArgument, "a store id has 16 bytes") }
        guard (1...Self.maxReplicas).contains(replicas.count) else {
            throw StoreError(.invalidArgument, "a store has 1...\(Self.maxReplicas) replicas, not \(replicas.count)")
        }
        guard (1...replicas.count).contains(writeQuorum) else {
            throw StoreError(.invalidArgument, "the write quorum must be 1...\(replicas.count), not \(writeQuorum)")
        }
        guard Set(replicas).count == replicas.count, replicas.allSatisfy({ !$0.isEmpty }) else {
            throw StoreError(.invalidArgument, "replica paths must be distinct and non-empty")
        }
        self.storeId = storeId
        self.writeQuorum = writeQuorum
        self.replicas = replicas
    }

    public var storeIdHex: String { Hex.encode(storeId) }

    public func encode() throws -> [UInt8] {
        var w = ByteWriter()
        w.writeBytes(Self.magic)
        w.writeUInt16(Self.version)
        w.writeBytes(storeId)
        w.writeUInt8(UInt8(writeQuorum))
        w.writeUInt8(UInt8(replicas.count))
        for p in replicas { try w.writeString16(p, "replica path", limit: Self.maxPathLength) }
        return w.bytes
    }

    public static func parse(_ bytes: [UInt8]) throws -> StoreConfig {
        var r = ByteReader(bytes)
        try r.expect(magic, "store magic")
        let vOffset = r.offset
        let v = try r.readUInt16("store version")
        guard v == version else { throw ByteCodingError(.unexpectedValue, field: "store version", offset: vOffset, "unknown version \(v)") }
        let id = try r.readBytes(16, "store id")
        let quorum = Int(try r.readUInt8("write quorum"))
        let countOffset = r.offset
        let count = Int(try r.readUInt8("replica count"))
        guard (1...maxReplicas).contains(count) else {
            throw ByteCodingError(.limitExceeded, field: "replica count", offset: countOffset, "\(count) replicas is outside 1...\(maxReplicas)")
        }
        var paths: [String] = []
        for i in 0..<count { paths.append(try r.readString16("replica path \(i)", limit: maxPathLength)) }
        try r.expectEnd("store configuration")
        do {
            return try StoreConfig(storeId: id, writeQuorum: quorum, replicas: paths)
        } catch let e as StoreError {
            throw ByteCodingError(.unexpectedValue, field: "store configuration", offset: 0, e.reason)
        }
    }
}

/// The file at the top of every replica directory that says which store and index it belongs to,
/// so a missing mount or a swapped disk is noticed instead of silently filled.
public struct ReplicaMarker: Equatable, Sendable {
    public static let magic: [UInt8] = Array("HSMBREPL".utf8)
    public static let version: UInt16 = 1
    public static let fileName = "REPLICA"

    public let storeId: [UInt8]
    public let index: Int

    public init(storeId: [UInt8], index: Int) {
        self.storeId = storeId
        self.index = index
    }

    public func encode() -> [UInt8] {
        var w = ByteWriter()
        w.writeBytes(Self.magic)
        w.writeUInt16(Self.version)
        w.writeBytes(storeId)
        w.writeUInt8(UInt8(index))
        return w.bytes
    }

    public static func parse(_ bytes: [UInt8]) throws -> ReplicaMarker {
        var r = ByteReader(bytes)
        try r.expect(magic, "replica magic")
        let vOffset = r.offset
        let v = try r.readUInt16("replica version")
        guard v == version else { throw ByteCodingError(.unexpectedValue, field: "replica version", offset: vOffset, "unknown version \(v)") }
        let id = try r.readBytes(16, "store id")
        let index = Int(try r.readUInt8("replica index"))
        try r.expectEnd("replica marker")
        return ReplicaMarker(storeId: id, index: index)
    }
}
