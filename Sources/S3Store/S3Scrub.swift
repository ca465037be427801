// Scrub, per-replica verification and fsck of an S3 store (spec/FORMAT.md 5.7, 5.11): the same
// semantics as the local store's. A lost bucket is re-created (and re-marked) by a repairing
// scrub, then filled from the other replicas; an object overwritten out of band no longer matches
// its record and is rewritten from a good replica.
import Dispatch
import Foundation
import ObjectStore

extension S3ObjectStore {
    public func verifyReplicas(_ key: String) -> [ReplicaFinding] {
        let set = openRecords(key)
        var bad = set.findings
        if let ref = set.reference {
            let results = Self.parallel(set.good.map(\.replica)) { i in self.verify(i, against: ref.record) }
            bad += results.values.compactMap { $0 }
        }
        return bad.sorted { $0.replica < $1.replica }
    }

    func examine(_ key: String) -> (RecordSet, [ReplicaFinding]) {
        let set = openRecords(key)
        var bad = set.findings
        if let ref = set.reference {
            let results = Self.parallel(set.good.map(\.replica)) { i in self.verify(i, against: ref.record) }
            bad += results.values.compactMap { $0 }
        }
        return (set, bad)
    }

    public func scrub(repair: Bool = false, repairable: ((String) -> Bool)? = nil,
                      progress: ((Int, Int) -> Void)? = nil) throws -> ScrubReport {
        var report = ScrubReport()
        for i in 0..<replicaCount {
            invalidateMarker(i)
            guard let problem = replicaStatus(i) else { continue }
            if repair, problem.detail.contains("does not exist") || problem.detail.contains("no replica marker") {
                do {
                    try Self.createBucketIfMissing(replicas[i], transport: transport)
                    let marker = ReplicaMarker(storeId: configuration.storeId, index: i).encode()
                    try send(i, "PUT", Self.markerName, headers: Self.checksumHeaders(marker) + [("If-None-Match", "*")], body: marker)
                    if replicaStatus(i) == nil { report.recreatedReplicas.append(i); continue }
                } catch {}
            }
            report.unavailableReplicas.append(problem)
        }
        let keys = try list(prefix: "")
        for (n, key) in keys.enumerated() {
            var (set, bad) = examine(key)
            if bad.contains(where: { $0.problem != .replicaUnavailable }) {
                // Seen once: a delete may have been in flight. A second look decides.
                (set, bad) = examine(key)
                if set.good.isEmpty && bad.allSatisfy({ $0.problem == .missing || $0.problem == .replicaUnavailable }) {
                    progress?(n + 1, keys.count)
                    continue
                }
            }
            report.objects += 1
            let badReplicas = Set(bad.map(\.replica))
            set.good.removeAll { badReplicas.contains($0.replica) }
            let checked = (0..<replicaCount).filter { i in !bad.contains { $0.replica == i && $0.problem == .replicaUnavailable } }
            report.replicasChecked += checked.count
            for f in bad.sorted(by: { $0.replica < $1.replica }) {
                if f.problem == .replicaUnavailable { continue }
                report.findings.append(ObjectFinding(key: key, finding: f))
                if f.problem == .missing { report.missing += 1 } else { report.corrupt += 1 }
            }
            if set.good.isEmpty {
                report.unrecoverable += 1
                report.unrecoverableKeys.append(key)
            } else if repair, !(repairable?(key) ?? true) {
                report.notRepaired.append(key)
            } else if repair {
                for target in badReplicas.sorted() where !bad.contains(where: { $0.replica == target && $0.problem == .replicaUnavailable }) {
                    do {
                        if try self.repair(key, target: target) { report.repaired += 1 }
                    } catch {
                        report.repairFailures.append(ObjectFinding(key: key, finding: replicaFinding(target, key, error)))
                    }
                }
            }
            progress?(n + 1, keys.count)
        }
        return report
    }

    static func createBucketIfMissing(_ r: S3StoreConfiguration.Replica, transport: S3Transport) throws {
        try ensureBucket(r, transport: transport)
    }

    /// Aborts multipart uploads under every replica's prefix that were initiated longer ago than
    /// `staleUploadAgeMillis` (a writer killed mid-way leaves its parts there, invisible but
    /// billed), and reports unusable replicas. An upload whose age is unknown is left alone and
    /// named in `fsckSkipped`, as is a replica whose uploads cannot be listed.
    public func fsck() -> StoreFsckReport {
        var report = StoreFsckReport()
        var skipped: [String] = []
        let now = clock.nowMillis()
        for i in 0..<replicaCount {
            if let p = replicaStatus(i) { report.unavailableReplicas.append(p); continue }
            let r = replicas[i]
            let uploads: [PendingUpload]
            do { uploads = try listUploads(i) } catch {
                skipped.append("replica \(i) (\(r.location)): multipart uploads not listed: \(error)")
                continue
            }
            for u in uploads {
                let name = "s3://\(r.location.bucket)/\(u.key) (multipart upload \(u.uploadId))"
                guard let initiated = u.initiatedMillis else {
                    skipped.append("\(name): its Initiated date \"\(u.initiated)\" does not parse, so its age is unknown (it may be live)")
                    continue
                }
                guard now >= initiated && now - initiated >= staleUploadAgeMillis else { continue }
                let req = S3Request(method: "DELETE", bucket: r.location.bucket, key: u.key, query: [("uploadId", u.uploadId)])
                if let resp = try? transport.send(req, endpoint: r.endpoint), resp.isSuccess || resp.status == 404 {
                    report.tempsRemoved.append(name)
                }
            }
        }
        report.tempsRemoved.sort()
        setFsckSkipped(skipped)
        return report
    }

    public struct PendingUpload: Sendable {
        public let key: String
        public let uploadId: String
        /// The `Initiated` date as the server wrote it.
        public let initiated: String
        /// `initiated` in milliseconds since 1970, nil when it does not parse.
        public let initiatedMillis: UInt64?
    }

    /// Multipart uploads in progress under replica `i`'s prefix (ListMultipartUploads, paginated).
    /// As with `listRaw`, a truncated page without markers, or with markers already followed, is
    /// an I/O error; uploads outside the prefix (a server that ignores it) are not listed.
    public func listUploads(_ i: Int) throws -> [PendingUpload] {
        var out: [PendingUpload] = []
        let keyPrefix = replicas[i].location.keyPrefix
        var marker: (String, String)?
        var followed: Set<[String]> = []
        repeat {
            var q = [("uploads", ""), ("prefix", keyPrefix)]
            if let marker { q += [("key-marker", marker.0), ("upload-id-marker", marker.1)] }
            let resp = try send(i, "GET", "", query: q, maximumBytes: Self.maximumListingBytes)
            let xml = XMLScan(resp.body)
            for u in xml.blocks("Upload") {
                guard let k = u.first("Key"), let id = u.first("UploadId"), k.utf8.starts(with: keyPrefix.utf8) else { continue }
                let initiated = u.first("Initiated") ?? ""
                out.append(PendingUpload(key: k, uploadId: id, initiated: initiated, initiatedMillis: Self.parseISO8601Millis(initiated)))
            }
            guard xml.first("IsTruncated") == "true" else { break }
            guard let k = xml.first("NextKeyMarker"), !k.isEmpty, let u = xml.first("NextUploadIdMarker") else {
                throw listingError(i, keyPrefix, "a truncated ListMultipartUploads page has no NextKeyMarker and NextUploadIdMarker (after \(out.count) uploads)")
            }
            guard followed.insert([k, u]).inserted else {
                throw listingError(i, keyPrefix, "ListMultipartUploads repeated the markers \"\(k)\", \"\(u)\" (after \(out.count) uploads)")
            }
            marker = (k, u)
        } while true
        return out
    }

    static func parseISO8601Millis(_ s: String) -> UInt64? {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let d = f.date(from: s) { return UInt64(max(0, d.timeIntervalSince1970 * 1000)) }
        f.formatOptions = [.withInternetDateTime]
        return f.date(from: s).map { UInt64(max(0, $0.timeIntervalSince1970 * 1000)) }
    }
}
