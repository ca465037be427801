import BackupCrypto
import ByteCoding
import Durability
import Foundation
import HSMArchive

/// The simulated HSM's contents file (`contents.state`): a fixed prefix, then the payload tar of
/// spec 4.7 exactly as a backup carries it, so a backup streams the file into chunks and a
/// restore streams the checked tar into a new file, neither decoding nor holding the contents.
///
///   prefix = "HSMSTATE" version(u8 = 1) policies(u32) users(u32) keys(u32) payloadBytes(u64)
///
/// The file is the HSM's own storage (inside its boundary); it is written only from contents
/// that passed the content rules, and its size must match the prefix.
public struct ContentsState: Sendable, Equatable {
    public static let magic = Array("HSMSTATE".utf8)
    public static let version: UInt8 = 1
    public static let prefixByteCount = 29

    public let policies: UInt32
    public let users: UInt32
    public let keys: UInt32
    public let payloadBytes: UInt64

    public init(policies: UInt32, users: UInt32, keys: UInt32, payloadBytes: UInt64) {
        self.policies = policies
        self.users = users
        self.keys = keys
        self.payloadBytes = payloadBytes
    }

    var prefix: [UInt8] {
        var w = ByteWriter(capacity: Self.prefixByteCount)
        w.writeBytes(Self.magic)
        w.writeUInt8(Self.version)
        w.writeUInt32(policies)
        w.writeUInt32(users)
        w.writeUInt32(keys)
        w.writeUInt64(payloadBytes)
        return w.bytes
    }

    static func parse(prefix bytes: [UInt8], path: String) throws -> ContentsState {
        var r = ByteReader(bytes[...])
        do {
            guard try r.readBytes(8, "magic") == magic, try r.readUInt8("version") == version else {
                throw HSMError(.invalidState, "not a version-1 contents file", path: path)
            }
            let s = ContentsState(policies: try r.readUInt32("policies"), users: try r.readUInt32("users"),
                                  keys: try r.readUInt32("keys"), payloadBytes: try r.readUInt64("payload size"))
            guard s.payloadBytes >= 1, s.payloadBytes <= InnerFormat.maximumPayloadBytes,
                  max(s.policies, s.users, s.keys) <= InnerFormat.maximumObjectsPerKind else {
                throw HSMError(.invalidState, "counts or payload size outside the format's limits", path: path)
            }
            return s
        } catch is ByteCodingError {
            throw HSMError(.invalidState, "the contents file is shorter than its prefix", path: path)
        }
    }

    /// Reads and checks the prefix, and that the file holds exactly the payload it declares.
    static func read(_ path: String) throws -> ContentsState {
        let file = try ContentsFile(path: path)
        return file.state
    }

    /// Writes checked contents as a new contents file (atomically, owner-only).
    static func write(_ contents: HSMContents, to path: String) throws -> ContentsState {
        let bundle = try contents.payloadBundle()
        var tar = try bundle.tarBytes()
        defer { wipe(&tar) }
        let c = bundle.counts
        let state = ContentsState(policies: UInt32(c.policies), users: UInt32(c.users), keys: UInt32(c.keys),
                                  payloadBytes: UInt64(tar.count))
        let w = try ContentsWriter(path: path)
        try w.append(state.prefix)
        try w.append(tar)
        try w.commit()
        return state
    }

    /// Opens the payload for a backup; the prefix must still be the one `state` was read from.
    static func openPayload(_ path: String, state: ContentsState) throws -> ContentsFile {
        let file = try ContentsFile(path: path)
        guard file.state == state else {
            throw HSMError(.invalidState, "the contents changed since the HSM was opened", path: path)
        }
        return file
    }

    /// Streams the contents file's payload through the payload checks, object by object.
    static func stream(_ path: String, state: ContentsState, onObject: @escaping (PayloadObject) throws -> Void) throws {
        let file = try openPayload(path, state: state)
        let reader = PayloadReader(descriptor: PayloadDescriptor(payloadBytes: state.payloadBytes, userCount: state.users,
                                                                 keyCount: state.keys, policyCount: state.policies),
                                   onObject: onObject)
        do {
            try file.forEachPiece { try reader.feed($0) }
            _ = try reader.finish()
        } catch let e as ArchiveError {
            throw HSMError(.invalidState, "the contents file breaks the payload rules: \(e)", path: path)
        }
    }
}

/// An open contents file: its prefix checked, positioned at the payload.
final class ContentsFile {
    static let pieceBytes = 1 << 20
    let path: String
    let state: ContentsState
    private let fd: Int32

    init(path: String) throws {
        self.path = path
        // A FIFO or device in the contents file's place is refused, never waited on (issue 14).
        let fd: Int32
        do { fd = try AtomicFile.openRegularFile(path) } catch let e as FileError { throw HSMError.file(e) }
        self.fd = fd
        var prefix = [UInt8](repeating: 0, count: ContentsState.prefixByteCount)
        let n = prefix.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
        guard n == prefix.count else {
            close(fd)
            throw HSMError(.invalidState, "the contents file is shorter than its prefix", path: path)
        }
        do { state = try ContentsState.parse(prefix: prefix, path: path) } catch { close(fd); throw error }
        var st = stat()
        guard fstat(fd, &st) == 0, UInt64(st.st_size) == UInt64(ContentsState.prefixByteCount) + state.payloadBytes else {
            close(fd)
            throw HSMError(.invalidState, "the contents file's size differs from its prefix", path: path)
        }
    }

    deinit { close(fd) }

    /// Reads the payload in pieces of up to 1 MiB (one buffer, wiped at the end).
    func forEachPiece(_ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        var buffer = [UInt8](repeating: 0, count: Self.pieceBytes)
        defer { wipe(&buffer) }
        var remaining = state.payloadBytes
        while remaining > 0 {
            let want = Int(min(UInt64(buffer.count), remaining))
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, want) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else {
                throw HSMError(.invalidState, n == 0 ? "the contents file ended early" : "read failed (errno \(errno))", path: path)
            }
            try buffer.withUnsafeBytes { try body(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            remaining -= UInt64(n)
        }
    }
}
