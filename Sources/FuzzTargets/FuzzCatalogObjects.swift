import ObjectStore

/// The catalog's query path, the per-backup metadata objects and the retention policy objects
/// (spec/FORMAT.md section 5.8). Besides "no crash, typed errors only":
/// - catalog queries agree with filtering the fully parsed catalog;
/// - what parses re-encodes to the identical bytes (metadata, policy objects);
/// - what parses is what the catalog's writer could have written (names, ranges);
/// - the lifecycle's time rules agree with exact (overflow-free) arithmetic.
enum FuzzCatalogObjects {
    // MARK: catalog-query

    /// Input byte 0 (mode) % 3: 0 = query script then catalog bytes; 1 = query script then entry
    /// script (a valid catalog is built from it); 2 = the options as text, 0x00-separated:
    /// cluster, states (comma-separated), since, before, limit.
    static func query(_ data: [UInt8]) {
        guard let mode = data.first else { return }
        var input = FuzzInput(Array(data.dropFirst()))
        switch mode % 3 {
        case 0:
            let (q, fixDigest) = queryScript(&input)
            var cat = input.rest()
            if fixDigest { cat = FuzzStore.withDigestFixed(cat) }
            checkQuery(cat, q)
        case 1:
            let (q, _) = queryScript(&input)
            var snap = CatalogSnapshot()
            snap.writeCount = UInt64(input.byte())
            let n = Int(input.byte() % 12)
            for _ in 0..<n { let e = entryFromScript(&input); snap.entries[e.backupId] = e }
            let cat: [UInt8]
            do { cat = try snap.encode() } catch { finding("a catalog of valid entries does not encode: \(error)") }
            check((try? CatalogSnapshot.parse(cat)) == snap, "a built catalog does not parse back to itself")
            checkQuery(cat, q)
        default:
            let fields = input.rest().split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
            func field(_ i: Int) -> String? { i < fields.count && !fields[i].isEmpty ? fields[i] : nil }
            let options = CatalogQueryOptions(cluster: field(0), states: field(1).map { $0.split(separator: ",").map(String.init) } ?? [],
                                              since: field(2), before: field(3), limit: field(4).flatMap { Int($0) })
            let q: CatalogQuery
            do { q = try options.query() } catch { expectTyped(error, "CatalogQueryOptions.query"); return }
            // Canonicity: the query written back as options parses to the same query, and that
            // text is a fixed point (the input text itself is not canonical: time zones).
            let text = CatalogQueryOptions(q)
            let again: CatalogQuery
            do { again = try text.query() } catch { finding("options written from a query do not parse: \(text): \(error)") }
            check(same(q, again), "query → options → query changed it: \(text)")
            check(CatalogQueryOptions(again) == text, "query options are not a fixed point: \(text)")
            checkQuery(sampleCatalog, q)
        }
    }

    /// Flags byte (bit 0 cluster, 1 states, 2 from, 3 before, 4 limit, 5 fix the catalog digest),
    /// then the present fields.
    static func queryScript(_ input: inout FuzzInput) -> (CatalogQuery, Bool) {
        let f = input.byte()
        var q = CatalogQuery()
        if f & 1 != 0 {
            let c = input.byte()
            q.clusterId = c < 0x80 ? "cluster-\(c % 4)" : String(decoding: input.take(Int(c & 7)), as: UTF8.self)
        }
        if f & 2 != 0 {
            let m = input.byte()
            q.states = Set(BackupState.allCases.enumerated().filter { m & (1 << $0.offset) != 0 }.map(\.element))
        }
        if f & 4 != 0 { q.createdFromMillis = u64(&input) }
        if f & 8 != 0 { q.createdBeforeMillis = u64(&input) }
        if f & 16 != 0 { q.limit = Int(Int8(bitPattern: input.byte())) }
        return (q, f & 32 != 0)
    }

    static func u64(_ input: inout FuzzInput) -> UInt64 {
        input.take(8).reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
    }

    /// A valid entry (names the writer accepts) from a few script bytes; times are small so that
    /// ties happen.
    static func entryFromScript(_ input: inout FuzzInput) -> BackupEntry {
        let id = "b" + String(input.byte(), radix: 16)
        let flags = input.byte()
        let state = BackupState.allCases[Int(flags & 3)]
        let cluster = "cluster-\((flags >> 2) & 3)"
        let created = UInt64(input.u16())
        var tags: [String: String] = [:]
        if flags & 0x10 != 0 { tags["t\(input.byte() % 4)"] = String(decoding: input.take(Int(input.byte() % 8)), as: UTF8.self) }
        return BackupEntry(backupId: id, clusterId: cluster, hsmId: "hsm", manufacturer: "acme", state: state,
                           createdMillis: created, updatedMillis: created, size: UInt64(input.byte()), tags: tags,
                           neverExpires: flags & 0x20 != 0, deleteRequestedMillis: flags & 0x40 != 0 ? created : nil,
                           objectKey: "backups/\(id)/archive")
    }

    /// A fixed catalog for the options mode: every state, three clusters, ties in time.
    static let sampleCatalog: [UInt8] = {
        var s = CatalogSnapshot()
        for i in 0..<12 {
            let id = "b\(i)"
            s.entries[id] = BackupEntry(backupId: id, clusterId: "cluster-\(i % 3)", hsmId: "hsm", manufacturer: "acme",
                                        state: BackupState.allCases[i % 4], createdMillis: 1_767_225_600_000 + UInt64(i / 2) * 1000,
                                        updatedMillis: 0, objectKey: "backups/\(id)/archive")
        }
        return try! s.encode()
    }()

    static func same(_ a: CatalogQuery, _ b: CatalogQuery) -> Bool {
        a.clusterId == b.clusterId && a.states == b.states && a.createdFromMillis == b.createdFromMillis
            && a.createdBeforeMillis == b.createdBeforeMillis && a.limit == b.limit
    }

    static func matches(_ e: BackupEntry, _ q: CatalogQuery) -> Bool {
        if let c = q.clusterId, e.clusterId != c { return false }
        if let s = q.states, !s.contains(e.state) { return false }
        if let f = q.createdFromMillis, e.createdMillis < f { return false }
        if let b = q.createdBeforeMillis, e.createdMillis >= b { return false }
        return true
    }

    static func ordered(_ a: BackupEntry, _ b: BackupEntry) -> Bool {
        a.createdMillis != b.createdMillis ? a.createdMillis < b.createdMillis : a.backupId.utf8.lexicographicallyPrecedes(b.backupId.utf8)
    }

    /// The query's fast path (index only, decoding just the matches) against the full parse.
    static func checkQuery(_ cat: [UInt8], _ q: CatalogQuery) {
        let result: [BackupEntry]
        do { result = try CatalogSnapshot.query(cat, q) } catch {
            expectTyped(error, "CatalogSnapshot.query")
            if (error as? StoreError)?.code == .invalidArgument {
                check((q.limit ?? 0) < 0, "query refused as invalid: \(error)")
            } else if (try? CatalogSnapshot.parse(cat)) != nil {
                finding("a catalog that parses fails a query: \(error)")
            }
            return
        }
        check((q.limit ?? 0) >= 0, "a negative limit was accepted")
        // Whatever the catalog, what a query returns matches it, in order, within the limit.
        check(result.allSatisfy { matches($0, q) }, "query returned an entry outside its filter")
        check(zip(result, result.dropFirst()).allSatisfy { ordered($0, $1) }, "query result out of order")
        if let l = q.limit { check(result.count <= l, "query returned more than its limit") }
        guard let snap = try? CatalogSnapshot.parse(cat) else { return }
        var expected = snap.entries.values.filter { matches($0, q) }.sorted(by: ordered)
        if let l = q.limit, expected.count > l { expected.removeLast(expected.count - l) }
        check(result == expected, "query disagrees with the parsed catalog")
    }

    // MARK: backup-meta

    /// Input byte 0: even = the rest is a metadata object; odd = an entry is built from a script,
    /// encoded, and altered by a mutation script (the unaltered object must parse to the entry).
    static func meta(_ data: [UInt8]) {
        guard let mode = data.first else { return }
        if mode & 1 == 0 { metaObject(Array(data.dropFirst())); return }
        var input = FuzzInput(Array(data.dropFirst()))
        let e = fullEntryFromScript(&input)
        let bytes: [UInt8]
        do { bytes = try e.encodeMeta() } catch { finding("a valid entry does not encode: \(error)") }
        do {
            check(try BackupEntry.parseMeta(bytes) == e, "metadata object does not parse back to its entry")
        } catch { finding("a freshly encoded metadata object does not parse: \(error)") }
        let altered = mutate(bytes, script: &input, count: Int(input.byte() % 4))
        metaObject(altered)
    }

    static func metaObject(_ bytes: [UInt8]) {
        do {
            let e = try BackupEntry.parseMeta(bytes)
            check(try e.encodeMeta() == bytes, "metadata object does not re-encode to its bytes")
            checkWritable(e)
        } catch { expectTyped(error, "BackupEntry.parseMeta") }
    }

    /// What the catalog's writer (create, copy, update) could have written.
    static func checkWritable(_ e: BackupEntry) {
        func name(_ s: String, _ what: String) { check((try? ObjectKey.validateName(s, what: what)) != nil, "parsed \(what) \(s.debugDescription) is not a valid name") }
        name(e.backupId, "backup id")
        name(e.clusterId, "cluster id")
        for (v, what) in [(e.hsmId, "HSM id"), (e.manufacturer, "manufacturer")] {
            check(!v.isEmpty && v.utf8.count <= BackupEntry.maxNameLength, "parsed \(what) \(v.debugDescription) is out of range")
        }
        check((try? ObjectKey.validate(e.objectKey)) != nil, "parsed object key \(e.objectKey.debugDescription) is not a valid key")
        check(e.tags.keys.allSatisfy { !$0.isEmpty }, "parsed an empty tag key")
        if let c = e.copySource {
            name(c.sourceBackupId, "source backup id")
            name(c.sourceCluster, "source cluster")
            check(!c.sourceStore.isEmpty, "parsed an empty source store")
        }
    }

    /// An entry with every optional part, from a script.
    static func fullEntryFromScript(_ input: inout FuzzInput) -> BackupEntry {
        var e = entryFromScript(&input)
        e.createdMillis = u64(&input)
        e.updatedMillis = u64(&input)
        e.generation = u64(&input)
        let f = input.byte()
        if f & 1 != 0 { e.deleteRequestedMillis = u64(&input) }
        if f & 2 != 0 {
            e.copySource = CopySource(sourceStore: String(repeating: "ab", count: 16), sourceBackupId: "src-\(input.byte())",
                                      sourceCluster: "c\(input.byte())", copiedMillis: u64(&input))
        }
        for _ in 0..<Int(f >> 4) {
            e.tags["k" + String(input.byte(), radix: 16)] = String(decoding: input.take(Int(input.byte() % 16)), as: UTF8.self)
        }
        return e
    }

    // MARK: retention-policy

    /// Input byte 0: even = the rest is a policy object; odd = a lifecycle script: now u64,
    /// window days u8, entry count, entries (state, flags, created u64, requested u64), then a
    /// policy object for cluster-0 (one from the script if it does not parse).
    static func policy(_ data: [UInt8]) {
        guard let mode = data.first else { return }
        if mode & 1 == 0 { policyObject(Array(data.dropFirst())); return }
        var input = FuzzInput(Array(data.dropFirst()))
        let now = u64(&input)
        let window = UInt64(input.byte()) * Millis.day
        var entries: [BackupEntry] = []
        for i in 0..<Int(input.byte() % 10) {
            let flags = input.byte()
            let created = u64(&input)
            let requested = u64(&input)
            entries.append(BackupEntry(backupId: "b\(i)", clusterId: "cluster-\(flags >> 6 & 1)", hsmId: "hsm", manufacturer: "acme",
                                       state: BackupState.allCases[Int(flags & 3)], createdMillis: created, updatedMillis: created,
                                       neverExpires: flags & 4 != 0, deleteRequestedMillis: flags & 8 != 0 ? requested : nil,
                                       objectKey: "backups/b\(i)/archive"))
        }
        let daysByte = input.byte()
        let rest = input.rest()
        let policy = (try? RetentionPolicy.parseObject(rest))
            ?? RetentionPolicy(clusterId: "cluster-0", days: daysByte == 0 ? 0 : 7 + Int(daysByte) % 373, generation: 1)
        policyObject(rest)

        // Retention against exact arithmetic.
        let expired = RetentionRules.expired(entries, policy: policy, nowMillis: now)
        let ready = entries.filter { $0.clusterId == policy.clusterId && $0.state == .ready }
        let newest = ready.max { ordered($0, $1) }
        let expected = ready.filter { e in
            guard e.backupId != newest?.backupId, !e.neverExpires, policy.days > 0 else { return false }
            let (end, overflow) = e.createdMillis.addingReportingOverflow(UInt64(policy.days) * Millis.day)
            return !overflow && end <= now
        }.map(\.backupId).sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) }
        check(expired == expected, "retention expired \(expired), exact arithmetic says \(expected)")
        check(RetentionRules.expired(entries.reversed(), policy: policy, nowMillis: now) == expired, "retention depends on entry order")
        for e in entries {
            let end = e.deleteRequestedMillis.map { $0.addingReportingOverflow(window) }
            let due = e.state == .pendingDeletion && end.map { !$0.overflow && $0.partialValue <= now } == true
            let restorable = e.state == .pendingDeletion && end.map { $0.overflow || now < $0.partialValue } == true
            check(RetentionRules.purgeDue(e, nowMillis: now, windowMillis: window) == due, "purgeDue disagrees for \(e)")
            check(RetentionRules.restorable(e, nowMillis: now, windowMillis: window) == restorable, "restorable disagrees for \(e)")
            check(!(due && restorable), "a backup both purgeable and restorable")
        }
    }

    static func policyObject(_ bytes: [UInt8]) {
        do {
            let p = try RetentionPolicy.parseObject(bytes)
            check(try p.encodeObject() == bytes, "policy object does not re-encode to its bytes")
            check(p.days == 0 || RetentionPolicy.allowedDays.contains(p.days), "policy days \(p.days) out of range")
            check((try? ObjectKey.validateName(p.clusterId, what: "cluster id")) != nil, "parsed policy cluster id \(p.clusterId.debugDescription) is not a valid name")
        } catch { expectTyped(error, "RetentionPolicy.parseObject") }
    }
}
