import Envelope
import HSMArchive
import SimulatedHSM

/// Restores an archive onto an HSM of the same manufacturer, replacing everything it holds.
public enum Restorer {
    /// Streams the archive through the envelope into the HSM's restore session. Nothing on the
    /// HSM changes until the last frame, the signature, the seal, every chunk and every object
    /// have verified; then all contents are replaced in one atomic step (or, for a dry run, not
    /// at all). Another manufacturer is refused from the public metadata, before any decryption.
    /// `expectedBackupID`: the id the archive must carry (a stored archive's catalog id).
    public static func restore(_ source: ByteSource, onto hsm: any RestoreTarget, keyrings: [Keyring], dryRun: Bool,
                               expectedBackupID: String? = nil, progress: ((UInt64) -> Void)? = nil) throws -> RestoreSummary {
        let decryptor = try EnvelopeDecryptor(source: source, keyrings: keyrings)
        let metadata = try ArchiveMetadata(context: decryptor.header.context)
        try metadata.check(isBackup: expectedBackupID)
        guard Array(metadata.manufacturer.utf8) == Array(hsm.metadata.manufacturerId.utf8) else {
            throw HSMBackupError(.incompatibleHSM,
                                 "the archive is from manufacturer \"\(metadata.manufacturer)\"; this HSM is \"\(hsm.metadata.manufacturerId)\": restore refused, nothing changed")
        }
        let session = try hsm.beginRestore(dryRun: dryRun, archiveContext: publicContext(decryptor.header.context))
        var metadataChecked = false
        var done: UInt64 = 0
        // The store read and the envelope's decryption run ahead on their own thread (issue 17).
        let ahead = ReadAhead<[UInt8]> { try decryptor.nextChunk() }
        defer { ahead.stop() }
        reading: while true {
            let piece: [UInt8]
            switch ahead.next() {
            case .end: break reading
            case .failed(let error): throw error
            case .item(let p): piece = p
            }
            try session.feed(piece)
            if !metadataChecked, let header = session.header {
                try metadata.check(against: header)
                metadataChecked = true
            }
            done += UInt64(piece.count)
            progress?(done)
        }
        return try session.finish()
    }
}

/// The envelope's encryption context as strings (authenticated, public): what a restore target
/// may read before the inner blob (a PKCS#11 token's PBK check values, spec 9.3).
func publicContext(_ context: EncryptionContext) -> [String: String] {
    var out: [String: String] = [:]
    for p in context.pairs { out[p.keyString] = p.valueString }
    return out
}
