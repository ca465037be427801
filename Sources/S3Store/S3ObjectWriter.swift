// A put into an S3 store (spec/FORMAT.md section 5.11): the object streams into every usable
// replica at once. Up to the single-PUT limit it is one create-only PUT per replica; above it, a
// multipart upload per replica whose parts (each with its SHA-256 checksum) are uploaded in
// parallel, at most `maxPartsInFlight` parts in memory whatever the object's size, and completed
// create-only. The checksum record follows the object. A replica that fails is dropped (its
// upload aborted); below the write quorum the whole put fails and nothing stays published.
// Every copy carries the writer's random token (`x-amz-meta-hsmbackup-writer`): a PUT or a
// Complete whose answer was lost and whose retry is refused (412, NoSuchUpload, a 5xx) counts as
// written only where the key now holds an object with this writer's token and exactly its bytes
// (`holdsExactly`, `holdsOurs`), never another writer's object, even one with the same bytes.
// When that check cannot be made (it fails itself), or a write ends with no answer or a 5xx, the
// replica fails with an I/O error (never `alreadyExists`: no other writer is known) and is
// remembered as one that may hold our object; a put that fails undoes its copies by HEADing the
// key and deleting it only when it carries this writer's token (`deleteIfOurs`).
import BackupCrypto
import ByteCoding
import Dispatch
import Foundation
import ObjectStore

public final class S3ObjectWriter: ObjectWriting, @unchecked Sendable {
    public let key: String
    let store: S3ObjectStore
    /// Repair mode: writes over whatever the targets hold (no If-None-Match), record included.
    let overwrite: Bool
    let fixedCreatedMillis: UInt64?
    private let partSize: Int
    private let singlePutLimit: Int

    private let lock = NSLock()
    /// Replicas still being written.
    private var live: [Int]
    private var failed: [ReplicaFinding] = []
    private var alreadyExists: StoreError?
    private var uploads: [Int: String] = [:]
    private var parts: [Int: [Int: (etag: String, checksum: String)]] = [:]
    private let group = DispatchGroup()
    private let slots = DispatchSemaphore(value: S3ObjectStore.maxPartsInFlight)
    private let queue = DispatchQueue(label: "s3.parts", attributes: .concurrent)

    /// The part being filled, in the type the transport sends (so it is copied once, here).
    private var buffer = Data()
    private var partCount = 0
    private var size: UInt64 = 0
    /// Every byte is hashed once as it arrives, into the object's digest, the current record
    /// chunk's digest and the current part's checksum (no second pass over a sealed part).
    private let hasher = SHA256Hasher()
    private var chunkHasher = SHA256Hasher()
    private var chunkFill = 0
    private var partHasher = SHA256Hasher()
    private var chunkDigests: [[UInt8]] = []
    private var finished = false
    /// This writer's random token, sent as `writerMetadata` with every copy it creates (the
    /// single PUT, CreateMultipartUpload): what tells its own object from another writer's.
    let writerToken = Hex.encode(SecureRandom.bytes(count: 16))
    static let writerMetadata = "x-amz-meta-hsmbackup-writer"
    private var failure: StoreError?
    /// Replicas whose key may hold this put's object: each whose single PUT or Complete succeeded
    /// (or counted as ours), and each whose outcome is unknown (no answer, a 5xx, a lost answer's
    /// check that could not be made). A put that fails undoes these (`undo`), checking the token.
    private var mayHoldOurs: Set<Int> = []

    /// What a check of the key on one replica found.
    enum Ownership: Equatable {
        /// This writer's object: its token, its size and its content.
        case ours
        /// No object (404), or another writer's: another token or none, another size or content.
        case notOurs
        /// The check itself failed (no answer, a server error, access refused): it may be ours.
        case unknown(String)
    }

    init(store: S3ObjectStore, key: String, targets: [Int]? = nil, overwrite: Bool = false, createdMillis: UInt64? = nil) throws {
        try ObjectKey.validate(key)
        self.store = store
        self.key = key
        self.overwrite = overwrite
        self.fixedCreatedMillis = createdMillis
        partSize = store.configuration.uploadPartSize
        singlePutLimit = store.configuration.singlePutLimit
        var live: [Int] = []
        for i in targets ?? Array(0..<store.replicaCount) {
            if let p = store.replicaStatus(i) { failed.append(p) } else { live.append(i) }
        }
        self.live = live
        if !overwrite {
            // No rewriting: a key that any replica holds is refused before anything is sent.
            let holders = S3ObjectStore.parallel(live) { i in (try? store.send(i, "HEAD", key)) != nil }
            if let i = live.first(where: { holders[$0] == true }) {
                throw StoreError(.alreadyExists, key: key, replica: i, path: store.replicaLocation(i) + "/" + key, "the key already holds an object")
            }
        }
        buffer.reserveCapacity(partSize)
        try checkQuorum("create")
    }

    deinit { abort() }

    private var quorum: Int { overwrite ? 1 : store.writeQuorum }

    private func checkQuorum(_ stage: String) throws {
        lock.lock()
        let n = live.count, f = failed, exists = alreadyExists
        lock.unlock()
        if let exists { fail(exists); throw exists }
        guard n >= quorum else {
            let e = StoreError(.quorumNotReached, key: key,
                               "\(stage): \(n) of \(store.replicaCount) replicas writable, the write quorum is \(quorum)",
                               findings: f.sorted { $0.replica < $1.replica })
            fail(e)
            throw e
        }
    }

    private func fail(_ e: StoreError) {
        if failure == nil { failure = e }
        abort()
    }

    private func drop(_ i: Int, _ error: Error) {
        lock.lock()
        defer { lock.unlock() }
        guard let at = live.firstIndex(of: i) else { return }
        live.remove(at: at)
        if let s = error as? S3ServiceError, s.isPreconditionFailed, !overwrite {
            alreadyExists = StoreError(.alreadyExists, key: key, replica: i, path: store.replicaLocation(i) + "/" + key,
                                       "the key already holds an object (\(s.code))")
        }
        failed.append(store.replicaFinding(i, key, error))
    }

    private func checkOpen() throws {
        if let failure { throw failure }
        guard !finished else { throw StoreError(.invalidState, key: key, "the writer was already committed or aborted") }
    }

    public func write(_ bytes: [UInt8]) throws {
        try checkOpen()
        size += UInt64(bytes.count)
        guard size <= ObjectRecord.maxObjectSize else {
            let e = StoreError(.limitExceeded, key: key, "object larger than \(ObjectRecord.maxObjectSize) bytes")
            fail(e)
            throw e
        }
        try bytes.withUnsafeBytes { all in
            var at = 0
            while at < all.count {
                // Up to the end of the part and of the record chunk (the part size is a whole
                // number of chunks), hashed and buffered in one go.
                let n = min(partSize - buffer.count, ObjectRecord.defaultChunkSize - chunkFill, all.count - at)
                let piece = UnsafeRawBufferPointer(rebasing: all[at..<at + n])
                hasher.update(piece)
                chunkHasher.update(piece)
                partHasher.update(piece)
                buffer.append(piece.baseAddress!.assumingMemoryBound(to: UInt8.self), count: n)
                chunkFill += n
                at += n
                if chunkFill == ObjectRecord.defaultChunkSize { sealChunk() }
                if buffer.count == partSize { try sealPart(last: false) }
            }
        }
    }

    private func sealChunk() {
        chunkDigests.append(chunkHasher.finalize())
        chunkHasher = SHA256Hasher()
        chunkFill = 0
    }

    /// Hands the buffered part (already hashed) to upload.
    private func sealPart(last: Bool) throws {
        if last && chunkFill > 0 { sealChunk() }
        let part = buffer
        let digest = partHasher.finalize()
        partHasher = SHA256Hasher()
        buffer = Data()
        if !last { buffer.reserveCapacity(partSize) }
        if partCount == 0 && last && part.count <= singlePutLimit { return try singlePut(part, digest: digest) }
        if partCount == 0 { try initiate() }
        partCount += 1
        try upload(part, digest: digest, number: partCount)
    }

    private func initiate() throws {
        let targets = live
        let results = S3ObjectStore.parallel(targets) { i -> Result<String, Error> in
            do {
                let resp = try self.store.send(i, "POST", self.key, query: [("uploads", "")],
                                               headers: [("x-amz-checksum-algorithm", "SHA256"), (Self.writerMetadata, self.writerToken)])
                guard let id = XMLScan(resp.body).first("UploadId"), !id.isEmpty else {
                    throw StoreError(.ioError, key: self.key, replica: i, "CreateMultipartUpload answered without an UploadId")
                }
                return .success(id)
            } catch { return .failure(error) }
        }
        for i in targets {
            switch results[i]! {
            case .success(let id): lock.lock(); uploads[i] = id; parts[i] = [:]; lock.unlock()
            case .failure(let e): drop(i, e)
            }
        }
        try checkQuorum("initiate multipart upload")
    }

    /// Uploads one part to every live replica, in the background; waits while
    /// `maxPartsInFlight` parts are already in flight (so memory stays bounded).
    private func upload(_ part: Data, digest: [UInt8], number: Int) throws {
        slots.wait()
        try checkQuorum("upload part \(number)")
        lock.lock()
        let targets = live.compactMap { i in uploads[i].map { (i, $0) } }
        lock.unlock()
        let checksum = S3ObjectStore.checksumHeaders(digest: digest)
        let remaining = LockedBox(targets.count)
        for (i, uploadId) in targets {
            queue.async(group: group) {
                do {
                    let resp = try self.store.send(i, "PUT", self.key, query: [("partNumber", String(number)), ("uploadId", uploadId)],
                                                   headers: checksum, payload: part)
                    let etag = resp.header("etag") ?? ""
                    self.lock.lock(); self.parts[i]?[number] = (etag, checksum[0].1); self.lock.unlock()
                } catch {
                    self.drop(i, error)
                    self.abortUpload(i)
                }
                if remaining.mutate({ $0 -= 1; return $0 }) == 0 { self.slots.signal() }
            }
        }
        if targets.isEmpty { slots.signal() }
    }

    private func singlePut(_ body: Data, digest: [UInt8]) throws {
        var headers = S3ObjectStore.checksumHeaders(digest: digest)
        headers.append((Self.writerMetadata, writerToken))
        if !overwrite { headers.append(("If-None-Match", "*")) }
        let targets = live
        let results = S3ObjectStore.parallel(targets) { i -> Error? in
            do { try self.store.send(i, "PUT", self.key, headers: headers, payload: body); return nil } catch {
                // A 412 to a PUT that was retried (a lost answer, a reused connection that died)
                // can be our own first attempt, applied: the key then holds exactly our bytes.
                if let s = error as? S3ServiceError, s.isPreconditionFailed, !self.overwrite {
                    return self.settle(i, error, self.holdsExactly(i, byteCount: body.count, digest: digest))
                }
                if Self.outcomeUnknown(error) { self.mayHold(i) }
                return error
            }
        }
        for i in targets { if let e = results[i]! { drop(i, e) } else { mayHold(i) } }
    }

    private func mayHold(_ i: Int) {
        lock.lock()
        mayHoldOurs.insert(i)
        lock.unlock()
    }

    /// Whether a failed write may still have been applied: no answer came (an earlier attempt's
    /// may have been lost), or a 5xx (which can follow an applied attempt whose answer was lost).
    static func outcomeUnknown(_ error: Error) -> Bool {
        guard let s = error as? S3ServiceError else { return true }
        return s.status >= 500
    }

    /// A failed write of replica `i` (`error`) settled by a check of what the key holds: ours is
    /// written (nil); not ours is the failure itself (a 412: another writer's object); a check
    /// that could not be made is an I/O error, and the replica may hold our object.
    private func settle(_ i: Int, _ error: Error, _ check: Ownership) -> Error? {
        switch check {
        case .ours: return nil
        case .notOurs: return error
        case .unknown(let why):
            mayHold(i)
            return StoreError(.ioError, key: key, replica: i, path: store.replicaLocation(i) + "/" + key,
                              "the write failed (\(error)) after a retry, and whether the key holds this writer's object "
                                  + "(an earlier attempt, applied, its answer lost) could not be checked: \(why)")
        }
    }

    /// What a failed check request says: no object is not ours; anything else leaves it unknown.
    static func ownership(afterFailed error: Error) -> Ownership {
        if let s = error as? S3ServiceError, s.isNotFound { return .notOurs }
        return .unknown("\(error)")
    }

    /// Whether replica `i` holds this writer's object under the key: a HEAD must show its token
    /// and `byteCount` bytes (another writer's object, of any size, is told apart without reading
    /// it); then one GET, bounded (only single-PUT objects are checked this way), must bring
    /// `byteCount` bytes with SHA-256 `digest`.
    private func holdsExactly(_ i: Int, byteCount: Int, digest: [UInt8]) -> Ownership {
        let head: S3Response
        do { head = try store.send(i, "HEAD", key) } catch { return Self.ownership(afterFailed: error) }
        guard head.header(Self.writerMetadata) == writerToken else { return .notOurs }
        if let length = head.header("content-length"), Int(length) != byteCount { return .notOurs }
        let resp: S3Response
        do { resp = try store.send(i, "GET", key, maximumBytes: byteCount + 1) } catch { return Self.ownership(afterFailed: error) }
        guard resp.header(Self.writerMetadata) == writerToken else { return .notOurs }
        let bytes = resp.body
        return bytes.count == byteCount && SHA256Hasher.hash(bytes) == digest ? .ours : .notOurs
    }

    /// Whether a failed CompleteMultipartUpload may be our own, applied by an earlier attempt
    /// whose answer was lost (the client retried it): the retry then meets NoSuchUpload (the
    /// upload is gone, completed), a 412 (create-only: the key now holds the object that attempt
    /// published), or a 5xx where a server fails on the upload it no longer has.
    static func mayBeLostComplete(_ error: Error, overwrite: Bool) -> Bool {
        guard let s = error as? S3ServiceError else { return false }
        return s.code == "NoSuchUpload" || (s.isPreconditionFailed && !overwrite) || s.status >= 500
    }

    /// Whether replica `i` holds, under the key, the object this writer's multipart upload
    /// made: a HEAD must show this writer's token (no other writer has it: another's object,
    /// even with the same bytes, is never ours) and the size of `record`; then its content must
    /// be ours, by the composite SHA-256 checksum S3 reports (`x-amz-checksum-mode: ENABLED`:
    /// the SHA-256 of the parts' SHA-256 digests, `-<parts>` on AWS, bare on moto) when it
    /// equals the one of `partChecksums`, else by reading it all back, chunk by chunk against
    /// `record` as a verify does (bounded memory: streamed, or ranged windows).
    /// A check that fails itself (the HEAD, or the read-back with an I/O error) is `unknown`.
    private func holdsOurs(_ i: Int, record: ObjectRecord, partChecksums: [String]) -> Ownership {
        let head: S3Response
        do { head = try store.send(i, "HEAD", key, headers: [("x-amz-checksum-mode", "ENABLED")]) } catch {
            return Self.ownership(afterFailed: error)
        }
        guard head.header(Self.writerMetadata) == writerToken else { return .notOurs }
        if let length = head.header("content-length"), UInt64(length) != record.size { return .notOurs }
        if store.lostCompleteByChecksum, let reported = head.header("x-amz-checksum-sha256"),
           let composite = Self.compositeChecksum(partChecksums),
           reported == composite || reported == composite + "-\(partChecksums.count)" {
            return .ours
        }
        guard let finding = store.verify(i, against: record) else { return .ours }
        switch finding.problem {
        case .ioError, .replicaUnavailable: return .unknown(finding.detail)
        default: return .notOurs // missing, or other content (size, chunk, digest)
        }
    }

    /// The base64 SHA-256 of the concatenated part digests (S3's composite checksum), or nil
    /// when a part's checksum does not decode.
    static func compositeChecksum(_ partChecksums: [String]) -> String? {
        var all: [UInt8] = []
        for c in partChecksums {
            guard let d = Data(base64Encoded: c), d.count == 32 else { return nil }
            all += d
        }
        return Data(SHA256Hasher.hash(all)).base64EncodedString()
    }

    /// Completes every live replica's upload. `record` is the object's (what a lost answer's
    /// check compares against).
    private func complete(_ record: ObjectRecord) throws {
        group.wait()
        try checkQuorum("upload parts")
        lock.lock()
        let targets = live.compactMap { i in uploads[i].map { (i, $0, parts[i] ?? [:]) } }
        lock.unlock()
        let n = partCount
        let results = S3ObjectStore.parallel(targets.map(\.0)) { i -> Error? in
            let (_, uploadId, done) = targets.first { $0.0 == i }!
            guard done.count == n else {
                return StoreError(.ioError, key: self.key, replica: i, "\(done.count) of \(n) parts uploaded")
            }
            var xml = "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">"
            for p in 1...n {
                xml += "<Part><PartNumber>\(p)</PartNumber><ETag>\(XMLScan.escape(done[p]!.etag))</ETag><ChecksumSHA256>\(done[p]!.checksum)</ChecksumSHA256></Part>"
            }
            xml += "</CompleteMultipartUpload>"
            var headers: [(String, String)] = [("Content-Type", "application/xml")]
            if !self.overwrite { headers.append(("If-None-Match", "*")) }
            do {
                let resp = try self.store.send(i, "POST", self.key, query: [("uploadId", uploadId)], headers: headers, body: Array(xml.utf8))
                // A 200 can carry an <Error> body.
                if XMLScan(resp.body).first("Code") != nil, XMLScan(resp.body).blocks("Error").count > 0 {
                    throw S3ServiceError(status: 500, code: XMLScan(resp.body).first("Code")!, message: XMLScan(resp.body).first("Message") ?? "",
                                         request: "POST \(self.key)?uploadId")
                }
                return nil
            } catch {
                // An earlier attempt may have completed it, its answer lost: the replica is
                // written if the key holds exactly our object (never another writer's).
                if Self.mayBeLostComplete(error, overwrite: self.overwrite) {
                    return self.settle(i, error, self.holdsOurs(i, record: record, partChecksums: (1...n).map { done[$0]!.checksum }))
                }
                // No answer at all: an attempt may have completed it all the same.
                if Self.outcomeUnknown(error) { self.mayHold(i) }
                return error
            }
        }
        for (i, _, _) in targets {
            if let e = results[i]! { drop(i, e); abortUpload(i) } else { lock.lock(); uploads[i] = nil; mayHoldOurs.insert(i); lock.unlock() }
        }
    }

    private func abortUpload(_ i: Int) {
        lock.lock()
        let id = uploads.removeValue(forKey: i)
        lock.unlock()
        if let id { _ = try? store.send(i, "DELETE", key, query: [("uploadId", id)]) }
    }

    /// Undoes a failed create-only put where it published, or may have (`mayHoldOurs`): the key
    /// is deleted only where it holds this writer's object (`deleteIfOurs`), never another
    /// writer's. `records`: the replicas whose record this put wrote, deleted where the object
    /// was ours or is absent (never under another writer's object). Once: the set is emptied.
    private func undo(records: [Int] = []) {
        lock.lock()
        let objects = mayHoldOurs
        mayHoldOurs = []
        lock.unlock()
        guard !overwrite else { return }
        let all = Array(objects.union(records)).sorted()
        guard !all.isEmpty else { return }
        _ = S3ObjectStore.parallel(all) { i in
            let gone = self.deleteIfOurs(i)
            if gone, records.contains(i) { _ = try? self.store.send(i, "DELETE", self.store.recordName(self.key)) }
        }
    }

    /// Deletes the key on replica `i` if it holds this writer's object: a HEAD must show its
    /// token, and the DELETE carries `If-Match: <that HEAD's ETag>`, so an object put by another
    /// writer between the two is not deleted (on a server that honours If-Match on DELETE, as AWS
    /// S3 and moto do; one that ignores it leaves that window open, and only a delete of our
    /// object by someone else first could put another there, create-only). True when the key
    /// holds no object of anyone's (ours deleted, or none); false when it holds another writer's
    /// or what it holds could not be told (the HEAD or the DELETE failed: ours may stay).
    @discardableResult
    func deleteIfOurs(_ i: Int) -> Bool {
        let head: S3Response
        do { head = try store.send(i, "HEAD", key) } catch let s as S3ServiceError where s.isNotFound { return true } catch { return false }
        guard head.header(Self.writerMetadata) == writerToken else { return false }
        var headers: [(String, String)] = []
        if let etag = head.header("etag"), !etag.isEmpty { headers.append(("If-Match", etag)) }
        do { try store.send(i, "DELETE", key, headers: headers); return true } catch let s as S3ServiceError where s.isNotFound {
            return true // deleted by an attempt whose answer was lost, or by someone else
        } catch {
            return false
        }
    }

    public func commit() throws -> PutReport {
        try checkOpen()
        if partCount == 0 || !buffer.isEmpty { try sealPart(last: true) }
        let record = ObjectRecord(key: key, size: size, createdMillis: fixedCreatedMillis ?? store.clock.nowMillis(),
                                  chunkSize: ObjectRecord.defaultChunkSize, chunkDigests: chunkDigests, objectDigest: hasher.finalize())
        if partCount > 0 { try complete(record) }
        // Another writer's object on some location (alreadyExists), or below the quorum with the
        // object already published on some locations: checkQuorum fails the writer, and its
        // abort undoes what this put published, or may have (ours only, by the token).
        try checkQuorum("write")
        let recordBytes = try record.encode()
        let headers = S3ObjectStore.checksumHeaders(recordBytes)
        let targets = live
        let results = S3ObjectStore.parallel(targets) { i -> Error? in
            do { try self.store.send(i, "PUT", self.store.recordName(self.key), headers: headers, body: recordBytes); return nil } catch { return error }
        }
        var published: [Int] = []
        for i in targets { if let e = results[i]! { drop(i, e) } else { published.append(i) } }
        guard published.count >= quorum else {
            // Undo: a failed put leaves no object of ours behind, nor its records.
            undo(records: targets)
            let e = StoreError(.quorumNotReached, key: key,
                               "publish: \(published.count) of \(store.replicaCount) replicas durable, the write quorum is \(quorum)",
                               findings: failed.sorted { $0.replica < $1.replica })
            fail(e)
            throw e
        }
        lock.lock()
        mayHoldOurs = [] // published: nothing to undo (a location that failed keeps what it got)
        lock.unlock()
        finished = true
        return PutReport(info: store.info(record, replicas: published), written: published.sorted(),
                         failed: failed.sorted { $0.replica < $1.replica })
    }

    /// Aborts every multipart upload in progress; nothing is published. Safe to call more than once.
    /// A create-only put that published on some locations (or may have) before it failed is
    /// undone here (`undo`: this writer's object only, by its token).
    public func abort() {
        lock.lock()
        let idle = finished && uploads.isEmpty && mayHoldOurs.isEmpty
        lock.unlock()
        if idle { return }
        group.wait()
        lock.lock()
        let open = Array(uploads.keys)
        lock.unlock()
        for i in open { abortUpload(i) }
        undo()
        finished = true
    }
}
