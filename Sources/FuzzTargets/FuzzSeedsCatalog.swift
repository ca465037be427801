import ObjectStore

/// Seeds of the `catalog-query`, `backup-meta` and `retention-policy` targets: valid objects
/// as the catalog writes them, and damaged variants (truncated, trailing byte, unknown version,
/// reserved bits, out-of-range values, digest-fixed flips).
extension FuzzSeeds {
    static func catalogObjectSeeds() throws -> [FuzzTarget: [String: [UInt8]]] {
        func be64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (56 - 8 * UInt64($0))) } }
        let t0: UInt64 = 1_767_225_600_000  // 2026-01-01T00:00:00Z

        // catalog-query. Script: flags (cluster, states, from, before, limit, fix digest), fields.
        var query: [String: [UInt8]] = [:]
        let cat = FuzzCatalogObjects.sampleCatalog
        let allFields: [UInt8] = [0x1F, 0x01, 0x06] + be64(t0) + be64(t0 + 4000) + [3]
        query["sample-all-filters"] = [0] + allFields + cat
        query["sample-no-filter"] = [0, 0x00] + cat
        query["sample-limit-0"] = [0, 0x10, 0] + cat
        query["sample-unknown-cluster"] = [0, 0x01, 0x83] + Array("nope".utf8).prefix(3) + cat
        var flipped = cat
        flipped[cat.count / 2] ^= 0x01
        query["damaged-entry-fixdigest"] = [0, 0x3F, 0x02, 0x02] + be64(0) + be64(UInt64.max) + [100] + flipped
        query["damaged-digest"] = [0, 0x00] + flipped
        query["truncated-fixdigest"] = [0, 0x20] + cat.prefix(cat.count - 40)
        query["trailing-fixdigest"] = [0, 0x20] + cat.dropLast(32) + [0] + cat.suffix(32)
        query["script-entries"] = [1, 0x1B, 0x02, 0x0F] + be64(2) + be64(0x300)
            + [7, 6] + (0..<6).flatMap { i -> [UInt8] in [UInt8(i * 3), UInt8(i * 0x15), 0x01, UInt8(i % 3), 5] }
        query["script-entries-tags"] = [1, 0x12, 0xFF, 2, 1, 4] + [0x10, 0x11, 0, 9, 1, 2, 0x61, 0x62, 7]
            + [0x20, 0x32, 0, 9, 3] + [0x21, 0x11, 0, 8, 4]
        func text(_ fields: [String]) -> [UInt8] { [2] + Array(fields.joined(separator: "\u{0}").utf8) }
        query["options-all"] = text(["cluster-1", "READY,DELETED", "2026-01-01T00:00:00Z", "2026-01-01T00:00:05+01:00", "5"])
        query["options-empty"] = text(["", "", "", "", ""])
        query["options-pre-1970"] = text(["", "PENDING_DELETION", "1969-12-31T23:59:59Z", "", ""])
        query["options-bad-state"] = text(["", "READY,NOPE"])
        query["options-bad-time"] = text(["", "", "yesterday"])

        // backup-meta: objects as the catalog writes them, damaged ones, and scripts.
        var meta: [String: [UInt8]] = [:]
        let plain = BackupEntry(backupId: "backup-0123456789abcdef", clusterId: "cluster-a", hsmId: "hsm-1", manufacturer: "acme",
                                state: .ready, createdMillis: t0, updatedMillis: t0 + 5, size: 4096, objectKey: "backups/backup-0123456789abcdef/archive",
                                generation: 2)
        var full = plain
        full.tags = ["env": "prod", "owner": "ops team", "ü": ""]
        full.neverExpires = true
        full.state = .pendingDeletion
        full.deleteRequestedMillis = t0 + 86_400_000
        full.copySource = CopySource(sourceStore: String(repeating: "0f", count: 16), sourceBackupId: "backup-x", sourceCluster: "cluster-b",
                                     copiedMillis: t0 + 1)
        for (name, e) in [("plain", plain), ("full", full)] {
            let m = try e.encodeMeta()
            meta[name] = [0] + m
            meta[name + "-truncated"] = [0] + m.dropLast(3)
            meta[name + "-trailing"] = [0] + m + [0]
            var v2 = m
            v2[9] = 2
            meta[name + "-version-2"] = [0] + v2
        }
        var reserved = try plain.encodeMeta()
        let flagsAt = 10 + 5 * 2 + plain.backupId.utf8.count + plain.clusterId.utf8.count + plain.hsmId.utf8.count
            + plain.manufacturer.utf8.count + plain.objectKey.utf8.count + 1
        reserved[flagsAt] = 0x08
        meta["reserved-flag"] = [0] + reserved
        meta["script-plain"] = [1, 0x2a, 0x05, 0, 7] + be64(t0) + be64(t0 + 1) + be64(1) + [0x00, 0]
        meta["script-all-parts"] = [1, 0x2b, 0x31, 0, 9, 1, 2, 0x61, 0x62] + be64(t0) + be64(t0 + 1) + be64(3) + [0x23]
            + be64(t0 + 2) + [4, 5] + be64(t0 + 3) + [0x10, 3, 0x61, 0x62, 0x63, 0x11, 0] + [2, 0x00, 0x00, 0x0c, 0x40, 0x00, 0x30]

        // retention-policy: objects and lifecycle scripts (times around 2026).
        var policy: [String: [UInt8]] = [:]
        for (name, days) in [("7-days", 7), ("379-days", 379), ("removed", 0)] {
            let p = try RetentionPolicy(clusterId: "cluster-0", days: days, generation: 3).encodeObject()
            policy[name] = [0] + p
        }
        let p30 = try RetentionPolicy(clusterId: "cluster-0", days: 30, generation: 1).encodeObject()
        policy["truncated"] = [0] + p30.dropLast(1)
        policy["trailing"] = [0] + p30 + [0]
        var d6 = p30
        d6[d6.count - 9] = 6
        policy["days-6"] = [0] + d6
        var d380 = p30
        d380[d380.count - 10] = 1
        d380[d380.count - 9] = 124
        policy["days-380"] = [0] + d380
        var pv2 = p30
        pv2[9] = 2
        policy["version-2"] = [0] + pv2
        // Script: now, window days, count, (flags, created, requested)×count, days byte, policy.
        let now = t0 + 40 * 86_400_000
        var script: [UInt8] = [1] + be64(now) + [7, 5]
        for (i, flags) in [0x01, 0x01, 0x05, 0x03 | 0x08, 0x41].enumerated() {
            script += [UInt8(flags)] + be64(t0 + UInt64(i) * 86_400_000) + be64(now - UInt64(i) * 2 * 86_400_000)
        }
        policy["script-30-days"] = script + [0] + p30
        policy["script-from-days-byte"] = Array(script.prefix(script.count)) + [23]
        return [.catalogQuery: query, .backupMeta: meta, .retentionPolicy: policy]
    }
}
