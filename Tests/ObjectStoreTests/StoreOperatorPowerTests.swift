import Foundation
import XCTest
import ByteCoding
@testable import ObjectStore

/// Issue 13 item 18 (spec §7): the store's metadata, catalog and `store.conf` carry unkeyed
/// SHA-256 only, so whoever can write the store can steer the lifecycle. This pins the power as
/// the spec states it, and what the operator of the tool sees when it is used: a forged metadata
/// generation that marks a backup for deletion long ago is adopted by recovery (reported as
/// `adoptedMetadata` naming the backup) and purge then deletes the archive, as a plain `rm` of the
/// archive's files could have. No key is involved, and no archive is made to verify.
final class StoreOperatorPowerTests: XCTestCase {
    func testForgedMetadataSteersPurgeAndRecoveryNamesIt() throws {
        let s = Scratch()
        let clock = ManualClock()
        try LocalObjectStore.create(at: s.path + "/store")
        let c = try BackupCatalog(store: try LocalObjectStore(root: s.path + "/store", clock: clock))
        let victim = try c.add(NewBackup(backupId: "b1", clusterId: "cluster-a", hsmId: "hsm-1", manufacturer: "sim", neverExpires: true),
                               archive: BytesSource(pattern(4000, seed: 1))).entry
        try c.add(NewBackup(backupId: "b2", clusterId: "cluster-a", hsmId: "hsm-1", manufacturer: "sim"),
                  archive: BytesSource(pattern(4000, seed: 2)))
        clock.advance(days: 30)

        // The forgery: a next generation with never-expires cleared and a deletion requested at
        // time 0, written straight into the store's files (a valid checksum record, no key).
        var forged = victim
        forged.generation += 1
        forged.neverExpires = false
        forged.state = .pendingDeletion
        forged.deleteRequestedMillis = 0
        _ = try c.store.put(BackupCatalog.metaKey("b1", forged.generation), bytes: try forged.encodeMeta())

        // What the operator sees: fsck's recovery adopts it and names the backup.
        let actions = try c.recover()
        XCTAssertEqual(actions.map(\.backupId), ["b1"])
        XCTAssertEqual(actions.map(\.action), [.adoptedMetadata])
        XCTAssertEqual(try c.entry("b1").state, .pendingDeletion)
        // And purge follows the metadata: the archive is gone, the tombstone says DELETED.
        XCTAssertEqual(try c.purge().purged, ["b1"])
        XCTAssertEqual(try c.entry("b1").state, .deleted)
        XCTAssertThrowsError(try c.store.getAll(victim.objectKey))
        XCTAssertEqual(try c.entry("b2").state, .ready, "the other backup is untouched")
    }
}
