import Foundation
import XCTest

/// Issue 13 item 8 (and issue 14 item 17's `hsm create`): one set of identity rules (spec
/// §4.3.2), checked when the HSM is created, so the longest and oddest identity that can be
/// created goes through backup, store, list, verify and restore; anything else is refused before
/// an HSM exists.
final class IdentityLimitsTests: CLIWorldTestCase {
    /// `s` repeated up to exactly `bytes` bytes of UTF-8 (s's UTF-8 length must divide it).
    private func fill(_ s: String, _ bytes: Int) -> String {
        precondition(bytes % s.utf8.count == 0)
        return String(repeating: s, count: bytes / s.utf8.count)
    }

    func testTheLongestAndOddestIdentityGoesThroughEveryCommand() throws {
        let manufacturer = fill("Ωμέγα", 120) + "-systems"                      // 128 bytes, non-ASCII
        XCTAssertEqual(manufacturer.utf8.count, 128)
        let model = fill("🔐", 128) + fill("é", 128)                              // 256 bytes
        let firmware = fill("v", 255) + "\u{7E}"                                 // 256 bytes, ends in '~'
        let serial = fill("序", 255)                                              // 255 bytes of CJK
        let hsmId = "hsm " + fill("ü", 124)                                      // 128 bytes with a space
        let cluster = "-_." + fill("Zz9", 123) + "-x"                            // 128 bytes, starts with '-'
        XCTAssertEqual([model.utf8.count, firmware.utf8.count, hsmId.utf8.count, cluster.utf8.count], [256, 256, 128, 128])

        try w.expect(0, ["manufacturer", "create", manufacturer])
        let source = w.path("hsm-odd-source"), target = w.path("hsm-odd-target")
        for (dir, s) in [(source, serial), (target, "T" + serial.prefix(10))] {
            try w.expect(0, ["hsm", "create", dir, "--manufacturer", manufacturer, "--model", model, "--firmware", firmware,
                             "--serial", String(s), "--hsm-id", dir == source ? hsmId : "hsm-target-odd",
                             "--cluster=" + cluster])   // "=": the value starts with a dash
        }
        try w.expect(0, ["hsm", "populate", source, "--keys", "5", "--users", "2", "--seed", "3", "--no-rsa"])

        let created = try JSON.object(try w.expect(0, ["backup", "create", "--hsm", source, "--kms-key", "k1", "--json"]).stdout)
        let id = try XCTUnwrap(created["backupId"] as? String)
        let listed = try JSON.array(try w.expect(0, ["backup", "list", "--cluster=" + cluster, "--json"]).stdout)
        XCTAssertEqual(listed.compactMap { ($0 as? [String: Any])?["backupId"] as? String }, [id])
        let text = try w.expect(0, ["backup", "list", "--cluster=" + cluster]).stdout
        XCTAssertTrue(text.contains(cluster), text)
        let info = try JSON.object(try w.expect(0, ["inspect", id, "--json"]).stdout)
        let metadata = try XCTUnwrap(info["metadata"] as? [String: Any])
        XCTAssertEqual(metadata["hsmID"] as? String, hsmId)
        XCTAssertEqual(metadata["clusterID"] as? String, cluster)
        XCTAssertEqual(metadata["manufacturer"] as? String, manufacturer)
        XCTAssertEqual(metadata["model"] as? String, model)
        XCTAssertEqual(metadata["firmware"] as? String, firmware)
        try w.expect(0, ["verify", id, "--level", "full", "--hsm", target])
        try w.expect(0, ["restore", id, "--hsm", target])
        XCTAssertEqual(try w.contents(target).keys, try w.contents(source).keys)
        XCTAssertEqual(try w.contents(target).users, try w.contents(source).users)
    }

    func testAnIdentityThatCouldNeverBeBackedUpIsRefusedAtCreation() throws {
        let base = ["--manufacturer", "acme", "--model", "M1", "--serial", "S9", "--cluster", "c1"]
        func with(_ option: String, _ value: String) -> [String] {
            var args = base
            if let i = args.firstIndex(of: option) { args[i + 1] = value } else { args += [option, value] }
            return args
        }
        let refused: [(String, String)] = [
            ("--cluster", "café"), ("--cluster", String(repeating: "c", count: 129)), ("--cluster", "../../x"),
            ("--cluster", ""), ("--cluster", String(repeating: "c", count: 300)), ("--cluster", ".hidden"), ("--cluster", "a b"),
            ("--model", ""), ("--model", String(repeating: "m", count: 257)), ("--model", "M\u{1}"),
            ("--firmware", ""), ("--hsm-id", ""), ("--hsm-id", String(repeating: "h", count: 129)), ("--hsm-id", "a\nb"),
            ("--serial", String(repeating: "s", count: 257)), ("--serial", "S\u{7F}"),
        ]
        for (option, value) in refused {
            let dir = w.path("hsm-refused")
            let r = try w.run(["hsm", "create", dir] + with(option, value))
            XCTAssertEqual(r.exitCode, 64, "\(option) \(value.debugDescription): \(r.description)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: dir), "no HSM directory for \(option) \(value.debugDescription)")
        }
        let r = try w.run(["manufacturer", "create", "acme\u{85}corp"])
        XCTAssertEqual(r.exitCode, 64, r.description)
    }
}
