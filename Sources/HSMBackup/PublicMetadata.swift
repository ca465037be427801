import Envelope
import Foundation
import HSMArchive

/// The bridge between the two layers' views of one backup: the envelope's public metadata
/// (spec §3.8) is derived from the inner header (spec §4) when an archive is written, and checked
/// against it when one is opened.
extension ArchiveMetadata {
    /// The public metadata an archive carries for this inner header.
    public init(innerHeader h: InnerHeader) {
        self.init(backupID: BackupID.string(h.backupId), clusterID: h.metadata.clusterId, hsmID: h.metadata.hsmId,
                  manufacturer: h.metadata.manufacturerId, model: h.metadata.model,
                  firmware: h.metadata.firmwareVersion, created: Timestamp.rfc3339(h.createdAt))
        payloadBytes = h.payload.payloadBytes
        userCount = UInt64(h.payload.userCount)
        keyCount = UInt64(h.payload.keyCount)
        objectCount = UInt64(h.payload.userCount) + UInt64(h.payload.keyCount) + UInt64(h.payload.policyCount)
    }

    /// Throws `metadataMismatch` naming the first field where the envelope and the inner header
    /// disagree.
    public func check(against h: InnerHeader) throws {
        do {
            try checkAgrees(with: ArchiveMetadata(innerHeader: h))
        } catch let e as EnvelopeError where e.code == .archiveMetadataMismatch {
            throw HSMBackupError(.metadataMismatch, e.reason)
        }
    }
}

extension ArchiveMetadata {
    /// A stored archive must be the one its catalog entry names: otherwise whoever can write the
    /// store could swap two valid archives (say, an old backup for a new one).
    func check(isBackup expected: String?) throws {
        if let expected, Array(backupID.utf8) != Array(expected.utf8) {
            throw HSMBackupError(.metadataMismatch, "the archive stored as backup \(expected) is backup \(backupID)")
        }
    }
}

/// Backup ids: the inner header's 16 random bytes, shown as 32 lowercase hex digits.
public enum BackupID {
    public static func string(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

    public static func isValid(_ s: String) -> Bool {
        s.utf8.count == 32 && s.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
    }
}

/// Times: seconds since the Unix epoch inside, RFC 3339 UTC in public metadata and output.
public enum Timestamp {
    public static func rfc3339(_ seconds: UInt64) -> String {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "UTC")
        f.dateFormat = "yyyy-MM-dd'T'HH:mm:ss'Z'"
        return f.string(from: Date(timeIntervalSince1970: TimeInterval(seconds)))
    }

    public static func seconds(rfc3339 s: String) -> UInt64? {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "UTC")
        f.dateFormat = "yyyy-MM-dd'T'HH:mm:ss'Z'"
        guard let d = f.date(from: s), d.timeIntervalSince1970 >= 0 else { return nil }
        return UInt64(d.timeIntervalSince1970)
    }
}
