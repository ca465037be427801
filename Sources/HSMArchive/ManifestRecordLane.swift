import BackupCrypto
import Dispatch

/// The manifest check's per-record hashing, on another core (issue 17). While the manifest
/// streams, the thread that parses it is the critical path: every other thread waits for the
/// objects behind it, and one core stood half idle. A third of that thread's time went to work
/// that needs no order but the records' own: each path at most once (`PathHashSet`), each
/// record's fingerprint, and the running SHA-256 over the records. The parser hands the records
/// here in batches, in order; a serial queue does that work.
///
/// Ownership: between `init` and the `finish` or `drain` call, the set, the fingerprints and
/// `listed` belong to the queue; the parser's thread only adds records. A repeated path is
/// reported exactly as the parser reports it itself (`ManifestParser.duplicatePath`), and, since
/// the lane holds only records that parsed before anything else failed, its error is always the
/// earlier one: the reader asks for it first (`drain`) whenever it fails.
final class ManifestRecordLane: @unchecked Sendable {
    /// About this many bytes of encoded records go over at once; at most `batchesInFlight`
    /// batches wait, so the lane holds a few hundred KiB whatever the manifest's size.
    private static let batchBytes = 64 << 10
    private static let batchesInFlight = 4

    private let queue = DispatchQueue(label: "hsmbackup.manifest-records")
    private let slots = DispatchSemaphore(value: batchesInFlight)
    // The queue's:
    private let listed: SHA256Hasher
    private var seen: PathHashSet
    private var fingerprints: [UInt32] = []
    private var error: ArchiveError?
    // The parser thread's:
    private var batch: [UInt8] = []
    private var pathEnds: [Int] = []

    /// `listed` receives every record's encoded bytes, in order (the caller reads it only after
    /// `finish`); `expectedRecords` sizes the path set once.
    init(expectedRecords: Int, listed: SHA256Hasher) {
        self.listed = listed
        seen = PathHashSet(capacity: expectedRecords)
        fingerprints.reserveCapacity(expectedRecords)
        batch.reserveCapacity(Self.batchBytes + ManifestParser.maximumRecordBytes)
    }

    /// One record (`ManifestRecord.encoded`) and the offset its "listed twice" error names.
    func add(_ encoded: UnsafeRawBufferPointer, pathEnd: Int) {
        batch.append(contentsOf: encoded)
        pathEnds.append(pathEnd)
        if batch.count >= Self.batchBytes { submit() }
    }

    /// Waits for every record added; returns their fingerprints in order, or throws the error
    /// of the first path listed twice.
    func finish() throws -> [UInt32] {
        if let error = drain() { throw error }
        let out = fingerprints
        fingerprints = []
        return out
    }

    /// After `drain`: whether `path` repeats one of the records added.
    func contains(_ path: [UInt8]) -> Bool {
        queue.sync { path.withUnsafeBytes { seen.contains($0) } }
    }

    /// Waits for every record added; the first repeated path's error, if any.
    func drain() -> ArchiveError? {
        submit()
        queue.sync {}
        return error
    }

    private func submit() {
        guard !pathEnds.isEmpty else { return }
        let bytes = batch, ends = pathEnds
        batch.removeAll(keepingCapacity: true)
        pathEnds.removeAll(keepingCapacity: true)
        slots.wait()
        queue.async { [self] in
            defer { slots.signal() }
            check(bytes, ends)
        }
    }

    /// On the queue: the records of one batch, in order. After an error nothing more is done
    /// (the reader fails with it).
    private func check(_ bytes: [UInt8], _ ends: [Int]) {
        guard error == nil else { return }
        bytes.withUnsafeBytes { b in
            var at = 0
            for end in ends {
                let record = UnsafeRawBufferPointer(rebasing: b[at..<(at + ManifestRecord.encodedCount(in: b, at: at))])
                let path = ManifestRecord.encodedPath(record)
                guard seen.insert(path) else {
                    error = ManifestParser.duplicatePath(path, at: end)
                    return
                }
                fingerprints.append(ManifestRecord.fingerprint(record))
                at += record.count
            }
            listed.update(b)
        }
    }
}
