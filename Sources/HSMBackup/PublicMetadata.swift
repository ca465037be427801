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
        innerVersion = "\(h.versionMajor).\(h.versionMinor)"
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

/// Times: seconds since the Unix epoch inside, RFC 3339 UTC (`YYYY-MM-DDTHH:MM:SSZ`) in public
/// metadata and output. Computed directly (civil-from-days), not with a date formatter: listing
/// 100,000 backups formats 100,000 times.
public enum Timestamp {
    public static func rfc3339(_ seconds: UInt64) -> String {
        let days = Int64(seconds / 86_400), secs = Int(seconds % 86_400)
        // Howard Hinnant's civil_from_days, for days since 1970-01-01.
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let day = doy - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        let year = yoe + era * 400 + (month <= 2 ? 1 : 0)
        func two(_ v: Int64) -> String { v < 10 ? "0\(v)" : "\(v)" }
        let y = String(year), ys = String(repeating: "0", count: max(0, 4 - y.count)) + y
        return "\(ys)-\(two(month))-\(two(day))T\(two(Int64(secs / 3600))):\(two(Int64(secs / 60 % 60))):\(two(Int64(secs % 60)))Z"
    }

    /// Milliseconds since the epoch, at second precision.
    public static func rfc3339(millis: UInt64) -> String { rfc3339(millis / 1000) }

    /// Parses `YYYY-MM-DDTHH:MM:SSZ`; nil for anything else (no other offsets, no fractions).
    public static func seconds(rfc3339 s: String) -> UInt64? {
        let b = Array(s.utf8)
        guard b.count == 20, b[4] == 0x2d, b[7] == 0x2d, b[10] == 0x54, b[13] == 0x3a, b[16] == 0x3a, b[19] == 0x5a else { return nil }
        func num(_ r: Range<Int>) -> Int64? {
            var v: Int64 = 0
            for i in r { guard (0x30...0x39).contains(b[i]) else { return nil }; v = v * 10 + Int64(b[i] - 0x30) }
            return v
        }
        guard let y = num(0..<4), let m = num(5..<7), let d = num(8..<10), let hh = num(11..<13), let mm = num(14..<16),
              let ss = num(17..<19), (1...12).contains(m), hh < 24, mm < 60, ss < 60, y >= 1970 else { return nil }
        // days_from_civil
        let yy = m <= 2 ? y - 1 : y
        let era = yy / 400
        let yoe = yy - era * 400
        let doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        let days = era * 146_097 + doe - 719_468
        let monthDays: [Int64] = [31, (y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)) ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
        guard d >= 1, d <= monthDays[Int(m - 1)], days >= 0 else { return nil }
        return UInt64(days * 86_400 + hh * 3600 + mm * 60 + ss)
    }
}
