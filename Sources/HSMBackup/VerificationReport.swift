/// What a verification found: every finding with where it is, not only the first. The
/// verifier returns this (it does not throw for bad data); `--json` prints it as is.

/// How deep a verification goes (spec/FORMAT.md, "Verification levels").
public enum VerificationLevel: String, Codable, CaseIterable, Sendable, Comparable {
    /// No keys: every length, count, limit and ordering rule of both layers, the final frame,
    /// the footer framing, the store's per-replica checksums.
    case structure
    /// A KMS key: header tag, commitment, every frame tag, the signature, the inner header's
    /// structure and its agreement with the public metadata.
    case envelope
    /// An HSM of the same manufacturer: EBK unwrap, header seal, every chunk, decompression, the
    /// tar, every object's digest against the manifest.
    case full

    private var rank: Int { Self.allCases.firstIndex(of: self)! }
    public static func < (a: Self, b: Self) -> Bool { a.rank < b.rank }
}

/// Where in an archive (or its stored replicas) a finding is.
public struct FindingLocation: Codable, Equatable, Sendable, CustomStringConvertible {
    public var replica: Int?
    public var offset: Int?
    public var frame: Int?
    public var chunk: Int?
    public var object: String?

    public init(replica: Int? = nil, offset: Int? = nil, frame: Int? = nil, chunk: Int? = nil, object: String? = nil) {
        self.replica = replica
        self.offset = offset
        self.frame = frame
        self.chunk = chunk
        self.object = object
    }

    public var description: String {
        var parts: [String] = []
        if let replica { parts.append("replica \(replica)") }
        if let frame { parts.append("frame \(frame)") }
        if let chunk { parts.append("chunk \(chunk)") }
        if let object { parts.append("object \(object)") }
        if let offset { parts.append("offset \(offset)") }
        return parts.isEmpty ? "archive" : parts.joined(separator: ", ")
    }
}

/// One thing the verifier found wrong (or, for `info`, noted).
public struct Finding: Codable, Equatable, Sendable, CustomStringConvertible {
    public enum Layer: String, Codable, Sendable { case store, envelope, inner, payload }
    public enum Severity: String, Codable, Sendable { case error, warning, info }

    public var layer: Layer
    public var severity: Severity
    /// The stable error code of the module that found it (e.g. "frameTagMismatch").
    public var code: String
    public var message: String
    public var location: FindingLocation

    public init(layer: Layer, severity: Severity = .error, code: String, message: String, location: FindingLocation = .init()) {
        self.layer = layer
        self.severity = severity
        self.code = code
        self.message = message
        self.location = location
    }

    public var description: String { "\(severity.rawValue): [\(layer.rawValue)/\(code)] \(location): \(message)" }
}

/// The result of verifying one archive at one level.
public struct VerificationReport: Codable, Sendable {
    public var archive: String
    public var level: VerificationLevel
    /// The levels that actually ran (a level runs only if the ones below it found no error that
    /// makes it meaningless, e.g. a broken header).
    public var levelsChecked: [VerificationLevel]
    public var findings: [Finding]
    public var framesChecked: Int
    public var chunksChecked: Int
    public var objectsChecked: Int
    public var bytesChecked: Int

    public init(archive: String, level: VerificationLevel) {
        self.archive = archive
        self.level = level
        levelsChecked = []
        findings = []
        framesChecked = 0
        chunksChecked = 0
        objectsChecked = 0
        bytesChecked = 0
    }

    public var errors: [Finding] { findings.filter { $0.severity == .error } }
    public var passed: Bool { errors.isEmpty && levelsChecked.contains(level) }
}
