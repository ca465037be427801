import Foundation
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// A directory in a replica file's place (review finding 1): a bad replica that `scrub --repair`
/// replaces (the directory goes aside into the replica's tmp/, which the next open removes), as
/// `testAFIFOInAReplicasPlaceIsABadReplicaNotAHang` does for a FIFO.
final class DirectoryReplicaTests: CLIWorldTestCase {
    func testADirectoryInAReplicasPlaceIsRepairedNotReportedForever() throws {
        let id = try w.createStoredBackup()
        let replica = try w.replicaFile(replica: 0, key: "backups/\(id)/archive")
        try FileManager.default.removeItem(atPath: replica)
        try FileManager.default.createDirectory(atPath: replica + "/sub", withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: replica + "/sub/f", contents: Data([1]))
        let scrub = try w.run(["store", "scrub"])
        XCTAssertEqual(scrub.exitCode, 65, scrub.description)
        XCTAssertTrue(scrub.stdout.contains("replica 0") && scrub.stdout.contains("directory"), scrub.description)
        try w.expect(0, ["store", "scrub", "--repair"])
        var st = stat()
        XCTAssertEqual(lstat(replica, &st), 0)
        XCTAssertEqual(st.st_mode & S_IFMT, S_IFREG)
        try w.expect(0, ["store", "scrub"])
        try w.expect(0, ["store", "fsck"])
        XCTAssertEqual(try Files.list(w.home + "/store/replica-0/tmp"), [], "the tree moved aside is removed")
        try w.expect(0, ["verify", id, "--level", "structure"])
    }
}
