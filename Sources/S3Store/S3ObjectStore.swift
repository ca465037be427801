// An S3-compatible object store behind ObjectStore's `ReplicatedStorage` protocol (spec/FORMAT.md
// section 5.11): N replica locations (bucket + prefix, each on its own endpoint), a write quorum,
// verified ranged reads with fail-over and read-repair, scrub and repair, the catalog as a
// compare-and-swap object. Per replica location:
//
//   <prefix>/<key>                        the object's bytes, exactly (so `aws s3 cp` fetches an archive)
//   <prefix>/.hsmbackup/records/<key>     its checksum record (spec 5.3, without the footer)
//   <prefix>/.hsmbackup/REPLICA           the replica marker (spec 5.1)
//   <prefix>/.hsmbackup/catalog.bin       the catalog (spec 5.8), replaced with If-Match
//
// Object keys never start a segment with '.', so `.hsmbackup/` cannot collide with an object.
// Objects are create-only (`If-None-Match: *`; a 412 is "already exists", never retried); the
// record is written after the object, so a put killed between the two leaves an object whose
// record is missing, which reads treat as damage and `store fsck` rolls back with its backup.
// Our own SHA-256 records are the authority on content; S3's checksums guard each transfer.
#if canImport(Glibc)
import Glibc
#endif
import AWSCore
import BackupCrypto
import ByteCoding
import Dispatch
import Durability
import Foundation
import ObjectStore

public final class S3ObjectStore: ReplicatedStorage, @unchecked Sendable {
    public static let internalDir = ".hsmbackup"
    public static let recordsDir = ".hsmbackup/records"
    public static let catalogName = ".hsmbackup/catalog.bin"
    public static let markerName = ".hsmbackup/REPLICA"
    /// Ranged reads that go by windows (a reader through a transport that cannot stream, and
    /// every repair) fetch this many record chunks at once: 8 (8 MiB) through a transport that
    /// may hold a response twice in memory, 16 through one that holds it once
    /// (`S3Transport.holdsBodiesOnce`; the built-in transport's readers stream instead,
    /// `S3ChunkStream.swift`). A
    /// server like moto reads the whole object for every ranged GET, so fewer, larger GETs cost
    /// it less: through the socket transport, 16 MiB windows with one ahead verified the bench's
    /// 84 MiB archive in 1.4 s at 57-72 MiB peak RSS, 8 MiB windows in 1.9 s at 50 MiB; the
    /// streamed read in 0.5-0.65 s at 47 MiB. `HSMBACKUP_S3_READ_WINDOW_CHUNKS` overrides both.
    static let readWindowChunksOverride = tunable("HSMBACKUP_S3_READ_WINDOW_CHUNKS", 1...16)

    /// The read window of replica `i`, in record chunks (see `readWindowChunksOverride`).
    func readWindowChunks(_ i: Int) -> Int {
        Self.readWindowChunksOverride ?? (transport.holdsBodiesOnce(replicas[i].endpoint) ? 16 : 8)
    }

    /// Ranged reads in flight per reader, ahead of the window being consumed (each window is
    /// held once, as the transport delivered it, until its last chunk is handed out). One ahead
    /// keeps `verify` under 64 MiB; more did not make it faster against moto.
    static let readsInFlight = tunable("HSMBACKUP_S3_READS_IN_FLIGHT", 1, 0...16)
    /// Parts being sent per writer while the next one fills (each held once in memory, shared by
    /// every replica's upload).
    static let maxPartsInFlight = tunable("HSMBACKUP_S3_PARTS_IN_FLIGHT", 1, 1...16)

    /// A positive integer from the environment (a tuning knob, see README), else `fallback`.
    static func tunable(_ name: String, _ fallback: Int, _ range: ClosedRange<Int>) -> Int {
        tunable(name, range) ?? fallback
    }

    /// A positive integer from the environment, or nil when it is unset or out of `range`.
    static func tunable(_ name: String, _ range: ClosedRange<Int>) -> Int? {
        guard let s = ProcessInfo.processInfo.environment[name], let v = Int(s), range.contains(v) else { return nil }
        return v
    }

    public let configuration: S3StoreConfiguration
    public let configurationPath: String
    public let clock: StoreClock
    let transport: S3Transport
    /// A local directory (in the home) for the catalog's and the backups' writer locks.
    public let localDirectory: String
    /// Repair bad replicas found while reading (on by default).
    public var readRepair = true
    /// A writer checks a CompleteMultipartUpload whose answer was lost by the object's composite
    /// SHA-256 checksum when the server reports one equal to its own (on by default; off, always
    /// by reading the object back: tests).
    var lostCompleteByChecksum = true
    /// `fsck` aborts multipart uploads under the prefix initiated longer ago than this.
    public var staleUploadAgeMillis: UInt64 = 24 * 3_600_000
    /// The largest stale age `store fsck` takes, in seconds (ten years; in milliseconds it stays
    /// far inside UInt64).
    public static let maximumStaleUploadSeconds: UInt64 = 10 * 365 * 86_400

    private let state = NSLock()
    private var markerOK: [Bool]
    private var _fsckSkipped: [String] = []
    /// The ETag of each replica's catalog as last read (nil: absent), for compare-and-swap.
    private var catalogETags: [Int: String?] = [:]

    public init(configuration: S3StoreConfiguration, configurationPath: String, localDirectory: String,
                transport: S3Transport, clock: StoreClock = ObjectStore.SystemClock()) {
        self.configuration = configuration
        self.configurationPath = configurationPath
        self.localDirectory = localDirectory
        self.transport = transport
        self.clock = clock
        markerOK = Array(repeating: false, count: configuration.replicas.count)
    }

    /// What the last `fsck` left undone, one line each: uploads it did not abort because their
    /// age is unknown (an `Initiated` date that does not parse: the upload may be live), and
    /// replicas whose uploads could not be listed.
    public var fsckSkipped: [String] {
        state.lock(); defer { state.unlock() }
        return _fsckSkipped
    }

    func setFsckSkipped(_ lines: [String]) { state.lock(); _fsckSkipped = lines; state.unlock() }

    // MARK: creating

    /// Initializes every replica location, all or nothing. First every location is checked
    /// without changing anything: its bucket answers (or does not exist yet) and it holds no
    /// other store's marker. Then the missing buckets are created, the markers written
    /// create-only, and `finish` runs (the caller's last step: writing the configuration). When
    /// any step fails, what this run created is removed again, markers first, then buckets (never
    /// a marker or bucket that was there before), so running init again starts from the same place.
    public static func initialize(_ configuration: S3StoreConfiguration, transport: S3Transport,
                                  finish: () throws -> Void = {}) throws {
        var missingBuckets: [Int] = []
        var alreadyMarked: Set<Int> = []
        for i in configuration.replicas.indices {
            switch try probeLocation(configuration, i, transport: transport) {
            case .noBucket: missingBuckets.append(i)
            case .free: break
            case .ours: alreadyMarked.insert(i)
            }
        }
        var createdBuckets: [Int] = []
        var createdMarkers: [Int] = []
        do {
            for i in missingBuckets {
                let r = configuration.replicas[i]
                // Two locations may share a bucket (different prefixes): it is created once.
                if createdBuckets.contains(where: { Self.sameBucket(configuration.replicas[$0], r) }) { continue }
                // Only a bucket this request created is taken back: BucketAlreadyOwnedByYou may be
                // another init's bucket made since the probe (or our own retried request's, which
                // then stays, empty and harmless: a rerun uses it).
                if try createBucket(r, transport: transport, replica: i) { createdBuckets.append(i) }
            }
            for (i, r) in configuration.replicas.enumerated() where !alreadyMarked.contains(i) {
                let marker = ReplicaMarker(storeId: configuration.storeId, index: i).encode()
                let req = S3Request(method: "PUT", bucket: r.location.bucket, key: r.location.key(markerName),
                                    headers: [("If-None-Match", "*")] + checksumHeaders(marker), body: marker)
                let resp = try sendOrThrow(transport, req, r.endpoint, replica: i)
                if resp.status == 412 {
                    // Written since the check: another init raced this one (or an earlier attempt of ours).
                    // The probe found none and the store id is this run's: our own retried PUT.
                    if try markerOwner(configuration, i, transport: transport) == .ours { createdMarkers.append(i); continue }
                    throw StoreError(.alreadyInitialized, replica: i, path: r.location.description,
                                     "this location already belongs to another hsmbackup store (or another replica index)")
                }
                guard resp.isSuccess else { throw storeError(S3ServiceError(resp, request: req.summary), replica: i, path: r.location.description) }
                createdMarkers.append(i)
            }
            try finish()
        } catch {
            let left = undoInitialization(configuration, markers: createdMarkers, buckets: createdBuckets, transport: transport)
            guard !left.isEmpty else { throw error }
            let note = "; init could not undo what it wrote (remove it before running init again): " + left.joined(separator: "; ")
            if let e = error as? StoreError { throw StoreError(e.code, key: e.key, replica: e.replica, path: e.path, e.reason + note, findings: e.findings) }
            throw StoreError(.ioError, "\(error)" + note)
        }
    }

    enum LocationState: Equatable { case noBucket, free, ours }

    /// What `store init` finds at replica location `i`, without changing it. A bucket that
    /// refuses the listing (access denied, wrong region) or a marker of another store is an error.
    static func probeLocation(_ configuration: S3StoreConfiguration, _ i: Int, transport: S3Transport) throws -> LocationState {
        let r = configuration.replicas[i]
        // A GET, not a HEAD: an error answer to a HEAD has no body, so its code (NoSuchBucket,
        // RequestTimeTooSkewed, AccessDenied) could not be told apart.
        var probe = S3Request(method: "GET", bucket: r.location.bucket, query: [("list-type", "2"), ("max-keys", "1"), ("prefix", r.location.keyPrefix)])
        probe.maximumResponseBytes = maximumListingBytes
        let resp = try sendOrThrow(transport, probe, r.endpoint, replica: i)
        if !resp.isSuccess {
            let e = S3ServiceError(resp, request: probe.summary)
            if e.isNoSuchBucket { return .noBucket }
            throw storeError(e, replica: i, path: r.location.description)
        }
        switch try markerOwner(configuration, i, transport: transport) {
        case .none: return .free
        case .ours: return .ours
        case .other:
            throw StoreError(.alreadyInitialized, replica: i, path: r.location.description,
                             "this location already belongs to another hsmbackup store (or another replica index)")
        }
    }

    enum MarkerOwner: Equatable { case none, ours, other }

    /// Whose replica marker location `i` holds: none, this store's for index `i`, or another's
    /// (another store, another index, or bytes that are no marker).
    static func markerOwner(_ configuration: S3StoreConfiguration, _ i: Int, transport: S3Transport) throws -> MarkerOwner {
        let r = configuration.replicas[i]
        var get = S3Request(method: "GET", bucket: r.location.bucket, key: r.location.key(markerName))
        get.maximumResponseBytes = maximumMarkerBytes
        let resp = try sendOrThrow(transport, get, r.endpoint, replica: i)
        guard resp.isSuccess else {
            let e = S3ServiceError(resp, request: get.summary)
            if e.isNotFound { return .none }
            throw storeError(e, replica: i, path: r.location.description)
        }
        guard let m = try? ReplicaMarker.parse(resp.body), m.storeId == configuration.storeId, m.index == i else { return .other }
        return .ours
    }

    /// Removes the markers and buckets a failed init created; returns what it could not remove.
    /// A marker is deleted only while it still is this store's (create-only writes mean nobody
    /// else can have replaced it, but the check costs one GET); a bucket only if it is empty.
    static func undoInitialization(_ configuration: S3StoreConfiguration, markers: [Int], buckets: [Int], transport: S3Transport) -> [String] {
        var left: [String] = []
        for i in markers {
            let r = configuration.replicas[i]
            let name = "s3://\(r.location.bucket)/\(r.location.key(markerName))"
            do {
                guard try markerOwner(configuration, i, transport: transport) == .ours else { continue }
                let req = S3Request(method: "DELETE", bucket: r.location.bucket, key: r.location.key(markerName))
                let resp = try sendOrThrow(transport, req, r.endpoint, replica: i)
                if !resp.isSuccess && resp.status != 404 { left.append("\(name): \(S3ServiceError(resp, request: req.summary))") }
            } catch {
                left.append("\(name): \(error)")
            }
        }
        for i in buckets {
            let r = configuration.replicas[i]
            let req = S3Request(method: "DELETE", bucket: r.location.bucket)
            do {
                let resp = try sendOrThrow(transport, req, r.endpoint, replica: i)
                if !resp.isSuccess && resp.status != 404 { left.append("bucket \(r.location.bucket) (created by this init): \(S3ServiceError(resp, request: req.summary))") }
            } catch {
                left.append("bucket \(r.location.bucket) (created by this init): \(error)")
            }
        }
        return left
    }

    static func sameBucket(_ a: S3StoreConfiguration.Replica, _ b: S3StoreConfiguration.Replica) -> Bool {
        a.location.bucket == b.location.bucket && a.endpoint == b.endpoint
    }

    static func ensureBucket(_ r: S3StoreConfiguration.Replica, transport: S3Transport) throws {
        // A GET, not a HEAD: an error answer to a HEAD has no body, so its code (NoSuchBucket,
        // RequestTimeTooSkewed, AccessDenied) could not be told apart.
        let probe = S3Request(method: "GET", bucket: r.location.bucket, query: [("list-type", "2"), ("max-keys", "1"), ("prefix", r.location.keyPrefix)])
        let resp = try sendOrThrow(transport, probe, r.endpoint, replica: nil)
        if resp.isSuccess { return }
        let e = S3ServiceError(resp, request: probe.summary)
        guard e.isNoSuchBucket else { throw storeError(e, replica: nil, path: r.location.description) }
        try createBucket(r, transport: transport)
    }

    /// Creates the bucket of `r`; says whether this call created it (false: it was ours already).
    @discardableResult
    static func createBucket(_ r: S3StoreConfiguration.Replica, transport: S3Transport, replica: Int? = nil) throws -> Bool {
        var body: [UInt8] = []
        if r.endpoint.region != "us-east-1" {
            body = Array("<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><LocationConstraint>\(r.endpoint.region)</LocationConstraint></CreateBucketConfiguration>".utf8)
        }
        let req = S3Request(method: "PUT", bucket: r.location.bucket, body: body)
        let resp = try sendOrThrow(transport, req, r.endpoint, replica: replica)
        let e = resp.isSuccess ? nil : S3ServiceError(resp, request: req.summary)
        if let e, e.code != "BucketAlreadyOwnedByYou" {
            throw storeError(e, replica: replica, path: r.location.description)
        }
        return e == nil
    }

    // MARK: requests

    var replicas: [S3StoreConfiguration.Replica] { configuration.replicas }

    static func sendOrThrow(_ transport: S3Transport, _ req: S3Request, _ endpoint: S3Endpoint, replica: Int?) throws -> S3Response {
        do { return try transport.send(req, endpoint: endpoint) } catch let e as S3TransportError {
            throw StoreError(.ioError, replica: replica, path: endpoint.url ?? endpoint.region, "\(e)")
        } catch let e as StoreError { throw e } catch {
            throw StoreError(.ioError, replica: replica, path: endpoint.url ?? endpoint.region, "\(req.summary): \(error)")
        }
    }

    /// Bounds on the bodies of the small GETs (`S3Request.maximumResponseBytes`): a replica
    /// marker is a few hundred bytes; a listing page of 1,000 keys well under 2 MiB.
    static let maximumMarkerBytes = 64 << 10
    static let maximumListingBytes = 16 << 20

    /// Sends one request to replica `i`; a non-2xx answer is thrown as `S3ServiceError`.
    /// `maximumBytes`: the largest 2xx body expected when it is not streamed.
    @discardableResult
    func send(_ i: Int, _ method: String, _ name: String, query: [(String, String)] = [], headers: [(String, String)] = [],
              body: [UInt8] = [], payload: Data? = nil, accept: Set<Int> = [], sink: HTTPBodySink? = nil,
              maximumBytes: Int? = nil) throws -> S3Response {
        let r = replicas[i]
        var req = S3Request(method: method, bucket: r.location.bucket, key: name.isEmpty ? "" : r.location.key(name),
                            query: query, headers: headers, payload: payload ?? Data(body))
        req.responseSink = sink
        req.maximumResponseBytes = maximumBytes
        let resp = try transport.send(req, endpoint: r.endpoint)
        guard resp.isSuccess || accept.contains(resp.status) else { throw S3ServiceError(resp, request: req.summary) }
        return resp
    }

    static func checksumHeaders(_ body: [UInt8]) -> [(String, String)] {
        checksumHeaders(digest: SHA256Hasher.hash(body))
    }

    static func checksumHeaders(digest: [UInt8]) -> [(String, String)] {
        return [("x-amz-checksum-sha256", Data(digest).base64EncodedString()), ("x-amz-content-sha256", Hex.encode(digest))]
    }

    /// Maps an S3 failure to the store's error: what, where and the service's code and message.
    static func storeError(_ e: Error, key: String? = nil, replica: Int?, path: String?) -> StoreError {
        if let e = e as? StoreError { return e }
        guard let s = e as? S3ServiceError else { return StoreError(.ioError, key: key, replica: replica, path: path, "\(e)") }
        let code: StoreError.Code
        if s.isAuthFailure { code = .accessDenied } else if s.isNoSuchBucket || s.isNotFound { code = .notFound } else if s.isPreconditionFailed { code = .alreadyExists } else { code = .ioError }
        return StoreError(code, key: key, replica: replica, path: path, s.description)
    }

    /// What a failed request says about replica `i` of `key`.
    func replicaFinding(_ i: Int, _ name: String, _ e: Error) -> ReplicaFinding {
        let path = replicaLocation(i) + "/" + name
        if let s = e as? S3ServiceError {
            if s.isNoSuchBucket {
                invalidateMarker(i)
                return ReplicaFinding(replica: i, path: path, problem: .replicaUnavailable, detail: "bucket \(replicas[i].location.bucket) does not exist: \(s)")
            }
            if s.isNotFound { return ReplicaFinding(replica: i, path: path, problem: .missing, detail: "no such object") }
            if s.isAuthFailure {
                return ReplicaFinding(replica: i, path: path, problem: .replicaUnavailable, detail: "access denied: \(s)")
            }
            return ReplicaFinding(replica: i, path: path, problem: .ioError, detail: "\(s)", osError: s.code)
        }
        if let f = e as? ReplicaFindingError { return f.finding }
        return ReplicaFinding(replica: i, path: path, problem: .ioError, detail: "\(e)")
    }

    // MARK: replicas

    public var storeIdHex: String { configuration.storeIdHex }
    public var writeQuorum: Int { configuration.writeQuorum }
    public var replicaCount: Int { replicas.count }
    public var location: String { configurationPath }
    public func replicaLocation(_ i: Int) -> String { replicas[i].location.description }

    func invalidateMarker(_ i: Int) { state.lock(); markerOK[i] = false; state.unlock() }

    public func replicaStatus(_ i: Int) -> ReplicaFinding? {
        state.lock()
        let ok = markerOK[i]
        state.unlock()
        if ok { return nil }
        func unavailable(_ why: String) -> ReplicaFinding {
            ReplicaFinding(replica: i, path: replicaLocation(i), problem: .replicaUnavailable, detail: why)
        }
        let resp: S3Response
        do { resp = try send(i, "GET", Self.markerName, maximumBytes: Self.maximumMarkerBytes) } catch let e as S3ServiceError {
            if e.isNoSuchBucket { return unavailable("bucket \(replicas[i].location.bucket) does not exist (\(e.code))") }
            if e.isNotFound { return unavailable("no replica marker at \(replicas[i].location.key(Self.markerName))") }
            if e.isAuthFailure { return unavailable("access denied: \(e)") }
            return unavailable("replica marker unreadable: \(e)")
        } catch {
            return unavailable("replica marker unreadable: \(error)")
        }
        guard let m = try? ReplicaMarker.parse(resp.body) else { return unavailable("replica marker does not parse") }
        guard m.storeId == configuration.storeId, m.index == i else {
            return unavailable("replica marker belongs to store \(Hex.encode(m.storeId)) index \(m.index)")
        }
        state.lock(); markerOK[i] = true; state.unlock()
        return nil
    }

    /// Checks every replica once. When none is usable because every one refused our
    /// credentials, says so (a clear error instead of "no store").
    public func checkAccess() throws {
        let problems = (0..<replicaCount).compactMap { replicaStatus($0) }
        guard problems.count == replicaCount else { return }
        if problems.allSatisfy({ $0.detail.hasPrefix("access denied") }) {
            throw StoreError(.accessDenied, path: configurationPath, "every replica refused the credentials (check AWS_ACCESS_KEY_ID, "
                             + "AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE)", findings: problems)
        }
    }

    var availableReplicas: [Int] { (0..<replicaCount).filter { replicaStatus($0) == nil } }

    /// Runs `body` for each index at once (one thread each; replicas are few).
    static func parallel<T>(_ indices: [Int], _ body: @escaping (Int) -> T) -> [Int: T] {
        let results = LockedBox<[Int: T]>([:])
        let work = UncheckedBox(body)
        DispatchQueue.concurrentPerform(iterations: indices.count) { n in
            let v = work.value(indices[n])
            results.mutate { $0[indices[n]] = v }
        }
        return results.value
    }

    // MARK: records

    func recordName(_ key: String) -> String { Self.recordsDir + "/" + key }

    struct Loaded {
        let replica: Int
        let record: ObjectRecord
        let bytes: [UInt8]
    }

    struct RecordSet {
        var good: [Loaded] = []
        var findings: [ReplicaFinding] = []
        var reference: Loaded? { good.first }
    }

    /// Every replica's record of `key`; the reference record is the one most replicas hold
    /// (ties: the lowest index). Disagreeing records are conflicts.
    func openRecords(_ key: String) -> RecordSet {
        var set = RecordSet()
        let available = (0..<replicaCount).filter { i in
            if let p = replicaStatus(i) { set.findings.append(p); return false }
            return true
        }
        let results = Self.parallel(available) { i -> Result<Loaded, ReplicaFindingError> in
            do {
                // One byte over the bound still arrives, to be named a record too long below.
                let resp = try self.send(i, "GET", self.recordName(key), maximumBytes: ObjectRecord.maxRecordLength + 1)
                guard resp.body.count <= ObjectRecord.maxRecordLength else {
                    return .failure(ReplicaFindingError(ReplicaFinding(replica: i, path: self.replicaLocation(i) + "/" + key, problem: .badRecord, detail: "record too long")))
                }
                let r = try ObjectRecord.parse(resp.body)
                guard r.key == key else {
                    return .failure(ReplicaFindingError(ReplicaFinding(replica: i, path: self.replicaLocation(i) + "/" + key, problem: .conflict, detail: "the record belongs to key \(r.key)")))
                }
                return .success(Loaded(replica: i, record: r, bytes: resp.body))
            } catch let e as S3ServiceError where e.isNotFound {
                // No record: no object either (missing), or an object whose put was killed (bad record).
                if (try? self.send(i, "HEAD", key)) != nil {
                    return .failure(ReplicaFindingError(ReplicaFinding(replica: i, path: self.replicaLocation(i) + "/" + key, problem: .badRecord, detail: "the object has no checksum record")))
                }
                return .failure(ReplicaFindingError(self.replicaFinding(i, key, e)))
            } catch let e as ByteCodingError {
                return .failure(ReplicaFindingError(ReplicaFinding(replica: i, path: self.replicaLocation(i) + "/" + key, problem: .badRecord, detail: "record does not parse: \(e)")))
            } catch {
                return .failure(ReplicaFindingError(self.replicaFinding(i, key, error)))
            }
        }
        var opened: [Loaded] = []
        for i in available {
            switch results[i]! {
            case .success(let l): opened.append(l)
            case .failure(let f): set.findings.append(f.finding)
            }
        }
        let vote = RecordVote.split(opened, recordBytes: { $0.bytes }, replica: { $0.replica })
        set.good = vote.agreeing
        for l in vote.disagreeing {
            set.findings.append(ReplicaFinding(replica: l.replica, path: replicaLocation(l.replica) + "/" + key, problem: .conflict,
                                               detail: "its record (digest \(Hex.encode(l.record.objectDigest))) disagrees with the other replicas"))
        }
        set.good.sort { $0.replica < $1.replica }
        set.findings.sort { $0.replica < $1.replica }
        return set
    }

    func noGoodReplica(_ key: String, _ findings: [ReplicaFinding]) -> StoreError {
        let allAbsent = findings.allSatisfy { $0.problem == .missing || $0.problem == .replicaUnavailable }
        if allAbsent, findings.contains(where: { $0.problem == .missing }) {
            return StoreError(.notFound, key: key, "no such object", findings: findings)
        }
        if findings.count == replicaCount, findings.allSatisfy({ $0.detail.hasPrefix("access denied") }) {
            return StoreError(.accessDenied, key: key, "every replica refused the credentials", findings: findings)
        }
        return StoreError(.unrecoverable, key: key, "no replica holds a good copy", findings: findings)
    }

    func info(_ record: ObjectRecord, replicas: [Int]) -> ObjectInfo {
        ObjectInfo(key: record.key, size: record.size, sha256: Hex.encode(record.objectDigest),
                   createdMillis: record.createdMillis, replicas: replicas.sorted())
    }

    // MARK: ObjectStorage

    public func makeWriter(_ key: String) throws -> ObjectWriting { try S3ObjectWriter(store: self, key: key) }

    public func get(_ key: String) throws -> ObjectReading { try get(key, readRepair: true) }

    public func get(_ key: String, readRepair: Bool) throws -> ObjectReading {
        try ObjectKey.validate(key)
        return try S3ObjectReader(store: self, key: key, readRepair: readRepair && self.readRepair)
    }

    public func stat(_ key: String) throws -> ObjectInfo {
        try ObjectKey.validate(key)
        let set = openRecords(key)
        guard let ref = set.reference else { throw noGoodReplica(key, set.findings) }
        return info(ref.record, replicas: set.good.map(\.replica))
    }

    public func list(prefix: String = "") throws -> [String] {
        var keys = Set<String>()
        var failures: [ReplicaFinding] = []
        let available = availableReplicas
        for i in available {
            do { keys.formUnion(try listKeys(i, prefix: prefix)) } catch { failures.append(replicaFinding(i, prefix, error)) }
        }
        if available.isEmpty || failures.count == available.count {
            throw StoreError(.ioError, "no replica could be listed", findings: failures + unavailableReplicas())
        }
        return keys.sorted()
    }

    /// The object keys under `prefix` in replica `i` (paginated ListObjectsV2), internal names excluded.
    func listKeys(_ i: Int, prefix: String, stopAt: ((String) -> Bool)? = nil) throws -> [String] {
        let keyPrefix = replicas[i].location.keyPrefix
        let fullPrefix = keyPrefix + prefix
        return try listRaw(i, prefix: fullPrefix).compactMap { full in
            // A server that ignores `prefix` lists other stores' keys too: only ours, compared as
            // bytes (String.hasPrefix matches canonically equivalent, different keys).
            guard full.key.utf8.starts(with: fullPrefix.utf8), let key = String(full.key.utf8.dropFirst(keyPrefix.utf8.count)) else { return nil }
            guard (try? ObjectKey.validate(key)) != nil else { return nil }
            return key
        }
    }

    struct Listed { let key: String; let size: UInt64; let etag: String }

    /// Every S3 key under `fullPrefix` in replica `i`, page by page. A truncated page without a
    /// continuation token, or with one already followed, is an I/O error: stopping there would
    /// return part of the listing as all of it (reindex would forget backups), following it would
    /// never end.
    func listRaw(_ i: Int, prefix fullPrefix: String) throws -> [Listed] {
        var out: [Listed] = []
        var token: String?
        var followed: Set<String> = []
        repeat {
            var q = [("list-type", "2"), ("prefix", fullPrefix), ("max-keys", "1000")]
            if let token { q.append(("continuation-token", token)) }
            let resp = try send(i, "GET", "", query: q, maximumBytes: Self.maximumListingBytes)
            let xml = XMLScan(resp.body)
            for c in xml.blocks("Contents") {
                guard let k = c.first("Key") else { continue }
                out.append(Listed(key: k, size: UInt64(c.first("Size") ?? "") ?? 0, etag: c.first("ETag") ?? ""))
            }
            guard xml.first("IsTruncated") == "true" else { break }
            guard let next = xml.first("NextContinuationToken"), !next.isEmpty else {
                throw listingError(i, fullPrefix, "a truncated ListObjectsV2 page has no NextContinuationToken (after \(out.count) keys)")
            }
            guard followed.insert(next).inserted else {
                throw listingError(i, fullPrefix, "ListObjectsV2 repeated the continuation token \"\(next)\" (after \(out.count) keys)")
            }
            token = next
        } while true
        return out
    }

    /// A listing of replica `i` that cannot be complete: where (bucket and prefix) and why.
    func listingError(_ i: Int, _ fullPrefix: String, _ why: String) -> StoreError {
        StoreError(.ioError, replica: i, path: "s3://\(replicas[i].location.bucket)/\(fullPrefix)",
                   "the listing is incomplete: \(why)")
    }

    public func delete(_ key: String) throws -> DeleteReport {
        try ObjectKey.validate(key)
        enum Outcome { case removed, absent, failed(ReplicaFinding) }
        var failed: [ReplicaFinding] = []
        let available = (0..<replicaCount).filter { i in
            if let p = replicaStatus(i) { failed.append(p); return false }
            return true
        }
        let outcomes = Self.parallel(available) { i -> Outcome in
            do {
                let existed = (try? self.send(i, "HEAD", key)) != nil
                let recordExisted = (try? self.send(i, "HEAD", self.recordName(key))) != nil
                try self.send(i, "DELETE", key)
                try self.send(i, "DELETE", self.recordName(key))
                return existed || recordExisted ? .removed : .absent
            } catch {
                return .failed(self.replicaFinding(i, key, error))
            }
        }
        var removed: [Int] = []
        for i in available {
            switch outcomes[i]! {
            case .removed: removed.append(i)
            case .absent: break
            case .failed(let f): failed.append(f)
            }
        }
        failed.sort { $0.replica < $1.replica }
        if removed.isEmpty && failed.allSatisfy({ $0.problem == .replicaUnavailable }) && !available.isEmpty {
            throw StoreError(.notFound, key: key, "no such object")
        }
        if removed.isEmpty && available.isEmpty { throw StoreError(.ioError, key: key, "no replica is available", findings: failed) }
        return DeleteReport(key: key, removed: removed, failed: failed)
    }

    /// An object on some location and a checksum record on none is what a put left that died
    /// (or missed its quorum) between the object and its record: it was never written (§5.11).
    /// Every location must answer: a record on one that cannot be reached would make it a put
    /// that finished there.
    public func removeUnfinishedPut(_ key: String) throws -> Bool {
        try ObjectKey.validate(key)
        guard unavailableReplicas().isEmpty else { return false }
        func exists(_ i: Int, _ name: String) throws -> Bool {
            do { _ = try send(i, "HEAD", name); return true } catch let e as S3ServiceError where e.isNotFound { return false }
        }
        var holders: [Int] = []
        for i in 0..<replicaCount {
            if try exists(i, recordName(key)) { return false }
            if try exists(i, key) { holders.append(i) }
        }
        guard !holders.isEmpty else { return false }
        for i in holders {
            do { _ = try send(i, "DELETE", key) } catch {
                throw StoreError(.ioError, key: key, replica: i, "removing what an unfinished put left: \(error)")
            }
        }
        return true
    }

    public func anyReplicaHolds(_ key: String) -> Bool {
        availableReplicas.contains { (try? send($0, "HEAD", key)) != nil }
    }

    /// One paginated listing per usable replica instead of a HEAD per key (`backup list`).
    public func existingKeys(prefix: String) -> Set<String>? {
        var keys = Set<String>()
        for i in availableReplicas {
            guard let k = try? listKeys(i, prefix: prefix) else { return nil }
            keys.formUnion(k)
        }
        return keys
    }

    public func hasObject(where match: (String) -> Bool) -> Bool {
        for i in availableReplicas {
            if let keys = try? listKeys(i, prefix: ""), keys.contains(where: match) { return true }
        }
        return false
    }

    // MARK: catalog (a compare-and-swap object in every replica)

    public var catalogLocation: String { replicas.map { $0.location.key(Self.catalogName) }.first.map { "s3://\(replicas[0].location.bucket)/\($0)" } ?? "" }
    public var lockDirectory: String { localDirectory + "/locks" }
    public var catalogLockPath: String { lockDirectory + "/catalog.lock" }

    public func prepareCatalog() throws {
        do { try AtomicFile.makeDirectory(localDirectory); try AtomicFile.makeDirectory(lockDirectory) } catch let e as FileError {
            throw StoreError(.ioError, path: e.path, "\(e.operation): \(e.reason)")
        }
    }

    public func catalogExists() -> Bool {
        for i in availableReplicas {
            do { try send(i, "HEAD", Self.catalogName); return true } catch let e as S3ServiceError where e.isNotFound { continue } catch {
                return true // unknown: treat as existing, so it is never replaced blindly
            }
        }
        return false
    }

    /// Reads every available replica's catalog and returns the newest valid one (the highest
    /// write count whose digest matches); remembers each replica's ETag for the next write.
    public func readCatalog(limit: Int) throws -> [UInt8]? {
        let available = availableReplicas
        guard !available.isEmpty else { throw StoreError(.ioError, path: catalogLocation, "no replica is available", findings: unavailableReplicas()) }
        var best: (count: UInt64, bytes: [UInt8])?
        var anyDamaged: [UInt8]?
        var etags: [Int: String?] = [:]
        var failures: [ReplicaFinding] = []
        for i in available {
            do {
                let resp = try send(i, "GET", Self.catalogName, maximumBytes: limit + 1)
                guard resp.body.count <= limit else { throw StoreError(.limitExceeded, path: catalogLocation, "catalog larger than \(limit) bytes") }
                etags[i] = resp.header("etag")
                if let count = Self.catalogWriteCount(resp.body) {
                    if best == nil || count > best!.count { best = (count, resp.body) }
                } else {
                    anyDamaged = resp.body
                }
            } catch let e as S3ServiceError where e.isNotFound {
                etags[i] = .some(nil)
            } catch let e as StoreError {
                throw e
            } catch {
                failures.append(replicaFinding(i, Self.catalogName, error))
            }
        }
        state.lock(); catalogETags = etags; state.unlock()
        if let best { return best.bytes }
        if let anyDamaged { return anyDamaged } // parse fails above: badCatalog, reindex rebuilds it
        if !failures.isEmpty { throw StoreError(.ioError, path: catalogLocation, "the catalog could not be read", findings: failures) }
        return nil
    }

    /// The write count of a catalog whose trailing digest matches, else nil (spec 5.8 layout).
    static func catalogWriteCount(_ b: [UInt8]) -> UInt64? {
        guard b.count >= 50, SHA256Hasher.hash(b[0..<(b.count - 32)]) == Array(b[(b.count - 32)...]) else { return nil }
        return b[10..<18].reduce(0) { $0 << 8 | UInt64($1) }
    }

    public func writeCatalog(_ bytes: [UInt8]) throws {
        state.lock()
        let etags = catalogETags
        state.unlock()
        var failures: [ReplicaFinding] = []
        var conflict: String?
        let available = availableReplicas
        let results = Self.parallel(available) { i -> Result<String?, Error> in
            var headers = Self.checksumHeaders(bytes)
            if let seen = etags[i] {
                headers.append(seen.map { ("If-Match", $0) } ?? ("If-None-Match", "*"))
            }
            do { return .success(try self.send(i, "PUT", Self.catalogName, headers: headers, body: bytes).header("etag")) } catch {
                // A 412 or 409 to a PUT that was retried (its answer lost) can be our own first
                // attempt, applied: the location then holds exactly these bytes, as written.
                if let s = error as? S3ServiceError, s.isPreconditionFailed || s.status == 409,
                   let now = try? self.send(i, "GET", Self.catalogName, maximumBytes: bytes.count + 1), now.body == bytes {
                    return .success(now.header("etag"))
                }
                return .failure(error)
            }
        }
        var written: [Int: String?] = [:]
        for i in available {
            switch results[i]! {
            case .success(let etag): written[i] = etag
            case .failure(let e):
                if let s = e as? S3ServiceError, s.isPreconditionFailed || s.status == 409 { conflict = "replica \(i): \(s)" }
                failures.append(replicaFinding(i, Self.catalogName, e))
            }
        }
        state.lock(); for (i, e) in written { catalogETags[i] = e }; state.unlock()
        if let conflict {
            throw StoreError(.invalidState, path: catalogLocation, "the catalog was changed by another writer since it was read; run the command again (\(conflict))")
        }
        guard written.count >= writeQuorum else {
            throw StoreError(.quorumNotReached, path: catalogLocation,
                             "catalog: \(written.count) of \(replicaCount) replicas written, the write quorum is \(writeQuorum)",
                             findings: failures + unavailableReplicas())
        }
    }

    public func removeCatalogTemps() throws -> [String] { [] }
}

/// A replica finding carried as an error inside this module.
struct ReplicaFindingError: Error {
    let finding: ReplicaFinding
    init(_ f: ReplicaFinding) { finding = f }
}

final class LockedBox<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var v: T
    init(_ v: T) { self.v = v }
    var value: T { lock.lock(); defer { lock.unlock() }; return v }
    func mutate<R>(_ body: (inout T) -> R) -> R { lock.lock(); defer { lock.unlock() }; return body(&v) }
}

struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
