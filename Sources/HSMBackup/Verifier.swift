import Envelope
import HSMArchive
import ObjectStore
import SimulatedHSM

/// What a verification may use beyond the archive itself.
public struct VerificationKeys {
    /// KMS keyrings (for the envelope and full levels).
    public var keyrings: [Keyring]
    /// An HSM of the archive's manufacturer (for the full level): the check runs inside it, as a
    /// dry-run restore that changes nothing.
    public var hsm: (any RestoreTarget)?
    /// Or the backup keys themselves (MKBK + AKBK), for a full check with no HSM at hand.
    public var backupKeyring: BackupKeyring?

    public init(keyrings: [Keyring] = [], hsm: (any RestoreTarget)? = nil, backupKeyring: BackupKeyring? = nil) {
        self.keyrings = keyrings
        self.hsm = hsm
        self.backupKeyring = backupKeyring
    }
}

/// Verifies archives at three depths (spec/FORMAT.md "Verification levels") and reports every
/// finding with where it is. Bad data never throws: it becomes a finding. What throws is what
/// makes the level impossible to judge: no key for it (none given, or none that opens the
/// archive), or an HSM whose manufacturer or backup keys are not the archive's.
public enum Verifier {
    /// `expectedBackupID`: the id the archive must carry (a stored archive's catalog id).
    public static func verify(_ source: ByteSource, name: String, level: VerificationLevel,
                              keys: VerificationKeys = VerificationKeys(), expectedBackupID: String? = nil,
                              progress: ((UInt64) -> Void)? = nil) throws -> VerificationReport {
        if level >= .envelope && keys.keyrings.isEmpty {
            throw HSMBackupError(.invalidArgument, "verification at level \(level.rawValue) needs a KMS key")
        }
        if level == .full && keys.hsm == nil && keys.backupKeyring == nil {
            throw HSMBackupError(.invalidArgument, "verification at level full needs an HSM of the archive's manufacturer")
        }
        var report = VerificationReport(archive: name, level: level)
        if level == .structure {
            structurePass(source, expectedBackupID: expectedBackupID, into: &report)
        } else {
            try decryptingPass(source, level: level, keys: keys, expectedBackupID: expectedBackupID, into: &report, progress: progress)
        }
        return report
    }

    /// Level 1: every framing rule of the envelope and its public metadata, with no key.
    static func structurePass(_ source: ByteSource, expectedBackupID: String?, into report: inout VerificationReport) {
        do {
            let s = try EnvelopeStructure.walk(source)
            report.framesChecked = Int(s.frameCount)
            report.bytesChecked = s.messageBytes
            do {
                try ArchiveMetadata(context: s.header.context).check(isBackup: expectedBackupID)
            } catch {
                report.findings.append(finding(error, layer: .envelope))
            }
            report.levelsChecked = [.structure]
        } catch {
            report.findings.append(finding(error, layer: .envelope))
        }
    }

    /// Levels 2 and 3 in one pass: the envelope decrypts frame by frame (every tag, the
    /// commitment, the signature); each verified piece feeds the keyless inner structure check
    /// and, for level 3, the HSM's own verification. A failure in one layer stops that layer only,
    /// so the others still report what they find.
    static func decryptingPass(_ source: ByteSource, level: VerificationLevel, keys: VerificationKeys, expectedBackupID: String?,
                               into report: inout VerificationReport, progress: ((UInt64) -> Void)?) throws {
        let decryptor: EnvelopeDecryptor
        let metadata: ArchiveMetadata
        do {
            decryptor = try EnvelopeDecryptor(source: source, keyrings: keys.keyrings)
            metadata = try ArchiveMetadata(context: decryptor.header.context)
        } catch let e as EnvelopeError where e.code == .noUsableKey || e.code == .keyVersionDisabled {
            throw e // no key for the level asked: nothing was verified, so this is not a finding
        } catch {
            report.findings.append(finding(error, layer: .envelope))
            return
        }
        do { try metadata.check(isBackup: expectedBackupID) } catch { report.findings.append(finding(error, layer: .envelope)) }
        // A full check needs an HSM that could restore this archive: say so, rather than
        // report the archive as bad.
        if level == .full, let hsm = keys.hsm, Array(hsm.metadata.manufacturerId.utf8) != Array(metadata.manufacturer.utf8) {
            throw HSMBackupError(.incompatibleHSM, "the archive is from manufacturer \"\(metadata.manufacturer)\"; HSM \(hsm.metadata.hsmId) is \"\(hsm.metadata.manufacturerId)\": it cannot verify it at level full")
        }
        // The envelope's frames are read, decrypted and run through the keyless structure check
        // on a read-ahead thread (issue 17); each piece arrives here with the structure findings
        // it produced, so the findings keep the order of a single-threaded pass.
        let layers = StructureLayer(metadata: metadata)
        var full: FullCheck?
        var fullFailed = false
        var innerBytes: UInt64 = 0
        if level == .full {
            do {
                if let hsm = keys.hsm {
                    full = .hsm(try hsm.beginRestore(dryRun: true, archiveContext: publicContext(decryptor.header.context)))
                } else if let keyring = keys.backupKeyring {
                    full = .keys(InnerBlobChecker(keyring: keyring))
                }
            } catch {
                report.findings.append(finding(error, layer: .inner))
                fullFailed = true
            }
        }
        var envelopeOK = false
        let ahead = ReadAhead<(piece: [UInt8], findings: [Finding])> {
            guard let piece = try decryptor.nextChunk() else { return nil }
            return (piece, layers.feed(piece))
        }
        defer { ahead.stop() }
        do {
            reading: while true {
                switch ahead.next() {
                case .end: break reading
                case .failed(let error): throw error
                case .item(let item):
                    report.findings += item.findings
                    innerBytes += UInt64(item.piece.count)
                    if let f = full, !fullFailed { try feedFull(f, item.piece, &fullFailed, &report) }
                    progress?(innerBytes)
                }
            }
            envelopeOK = true
        } catch let e as HSMBackupError where e.code == .incompatibleHSM {
            throw e
        } catch {
            report.findings.append(finding(error, layer: .envelope))
        }
        ahead.stop() // it has ended; from here the decryptor and the structure check are this thread's
        report.framesChecked = Int(decryptor.framesRead)
        report.bytesChecked = Int(innerBytes)
        guard envelopeOK else { return }
        if var s = layers.structure {
            do {
                let summary = try s.finish()
                report.chunksChecked = summary.chunkCount
                if !layers.metadataChecked { try metadata.check(against: summary.header) }
            } catch {
                report.findings.append(finding(error, layer: .inner))
            }
        }
        report.levelsChecked = report.errors.isEmpty ? [.structure, .envelope] : []
        guard level == .full, let full, !fullFailed else { return }
        do {
            report.objectsChecked = try full.finish()
            if report.errors.isEmpty { report.levelsChecked.append(.full) }
        } catch {
            report.findings.append(finding(error, layer: layer(of: error)))
        }
    }

    /// The keyless structure check and the header's metadata check, fed on the read-ahead
    /// thread; read on the caller's thread only once the read-ahead has ended.
    final class StructureLayer {
        let metadata: ArchiveMetadata
        var structure: InnerStructureChecker? = InnerStructureChecker()
        var metadataChecked = false

        init(metadata: ArchiveMetadata) { self.metadata = metadata }

        /// The findings this piece produced (the first failure stops the structure check).
        func feed(_ piece: [UInt8]) -> [Finding] {
            guard structure != nil else { return [] }
            var out: [Finding] = []
            do {
                try structure!.feed(piece)
                if !metadataChecked, let header = structure!.header {
                    metadataChecked = true
                    do { try metadata.check(against: header) } catch {
                        out.append(Verifier.finding(error, layer: .inner))
                    }
                }
            } catch {
                out.append(Verifier.finding(error, layer: .inner))
                structure = nil
            }
            return out
        }
    }

    /// One piece into the level-3 check; its failure is a finding and stops that layer.
    private static func feedFull(_ f: FullCheck, _ piece: [UInt8], _ fullFailed: inout Bool, _ report: inout VerificationReport) throws {
        do { try f.feed(piece) } catch let e as ArchiveError where e.code == .pbkMismatch && report.errors.isEmpty {
            // The HSM's backup keys are not the archive's (another operator key):
            // the HSM cannot judge it. (The manufacturer was compared before any
            // decryption, so a wrongManufacturer here is an inner header that
            // disagrees with the envelope: a finding, like any other damage.)
            throw HSMBackupError(.incompatibleHSM, "HSM cannot verify this archive at level full: \(e.reason)")
        } catch {
            report.findings.append(finding(error, layer: layer(of: error)))
            fullFailed = true
        }
    }

    /// The level-3 check: inside an HSM (dry-run restore) or with the backup keys.
    enum FullCheck {
        case hsm(any HSMRestoreSession)
        case keys(InnerBlobChecker)

        func feed(_ bytes: [UInt8]) throws {
            switch self {
            case .hsm(let s): try s.feed(bytes)
            case .keys(let o): try o.feed(bytes)
            }
        }

        /// Returns the number of objects checked.
        func finish() throws -> Int {
            switch self {
            case .hsm(let s):
                let r = try s.finish()
                return r.users + r.keys + r.policies
            case .keys(let o):
                let r = try o.finish()
                return r.users + r.keys + r.policies
            }
        }
    }

    static func layer(of error: Error) -> Finding.Layer {
        guard let e = error as? ArchiveError else { return .inner }
        switch e.code {
        case .payloadMalformed, .tarMalformed, .manifestMalformed, .objectDigestMismatch, .objectCountMismatch: return .payload
        default: return .inner
        }
    }

    /// A typed error of any layer as a finding with its location.
    static func finding(_ error: Error, layer: Finding.Layer) -> Finding {
        switch error {
        case let e as EnvelopeError:
            return Finding(layer: layer, code: e.code.rawValue, message: e.reason,
                           location: FindingLocation(offset: e.offset, frame: e.frame.map(Int.init)))
        case let e as ArchiveError:
            return Finding(layer: layer, code: e.code.rawValue, message: e.reason,
                           location: FindingLocation(offset: e.offset, chunk: e.chunk))
        case let e as HSMError:
            return Finding(layer: layer, code: e.code.rawValue, message: e.reason)
        case let e as HSMBackupError:
            return Finding(layer: layer, code: e.code.rawValue, message: e.reason)
        case let e as StoreError:
            // A read that no replica could serve: the store's finding, whatever layer was reading.
            return Finding(layer: .store, code: e.code.rawValue, message: e.description)
        default:
            return Finding(layer: layer, code: "error", message: "\(error)")
        }
    }
}
