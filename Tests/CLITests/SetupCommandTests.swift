import Foundation
import XCTest

/// Transcript tests of the setup commands: manufacturer, operator, kms, store, hsm.
final class SetupCommandTests: CLIWorldTestCase {
    func testManufacturerAndOperatorAreCreatedOnceAndNeededByHSMCreate() throws {
        let r = try w.expect(0, ["manufacturer", "create", "newco"])
        XCTAssertTrue(r.stdout.contains("manufacturer newco"), r.description)
        XCTAssertTrue(Files.exists(w.home + "/manufacturers/newco/mkbk.key"))
        try w.expect(64, ["manufacturer", "create", "newco"])          // already exists
        try w.expect(64, ["manufacturer", "create", "bad/name"])       // not a valid name
        try w.expect(64, ["operator", "init"])                         // the world already made it
        try w.expect(66, ["hsm", "create", w.path("h"), "--manufacturer", "nobody", "--model", "M", "--serial", "S", "--cluster", "c"])

        // A home with a manufacturer but no operator key: hsm create says what is missing.
        let bare = try CLI.makeHome()
        defer { try? FileManager.default.removeItem(atPath: bare) }
        XCTAssertEqual(try CLI.run(["manufacturer", "create", "acme"], home: bare).exitCode, 0)
        let noOp = try CLI.run(["hsm", "create", bare + "/h", "--manufacturer", "acme", "--model", "M", "--serial", "S", "--cluster", "c"], home: bare)
        XCTAssertEqual(noOp.exitCode, 66, noOp.description)
        XCTAssertTrue(noOp.stderr.contains("operator"), noOp.description)
        let made = Files.exists(bare + "/h") ? try Files.list(bare + "/h") : []
        XCTAssertEqual(made, [], "no HSM made")
    }

    func testKMSCreateRotateListExport() throws {
        let created = try JSON.object(try w.expect(0, ["kms", "create-key", "setup-key", "--json"]).stdout)
        XCTAssertEqual(created["name"] as? String, "setup-key")
        XCTAssertEqual(created["primaryVersion"] as? Int, 1)
        try w.expect(64, ["kms", "create-key", "setup-key"])

        let rotated = try JSON.object(try w.expect(0, ["kms", "rotate", "setup-key", "--json"]).stdout)
        XCTAssertEqual(rotated["primaryVersion"] as? Int, 2)
        XCTAssertEqual((rotated["versions"] as? [[String: Any]])?.count, 2)
        try w.expect(66, ["kms", "rotate", "no-such-key"])

        let list = try JSON.array(try w.expect(0, ["kms", "list", "--json"]).stdout)
        XCTAssertEqual(Set(list.compactMap { $0["name"] as? String }).isSuperset(of: ["k1", "k2", "setup-key"]), true, "\(list)")
        XCTAssertTrue(try w.expect(0, ["kms", "list"]).stdout.contains("setup-key  primary v2"))

        // export prints the secret on stdout and a warning on stderr.
        let exported = try w.expect(0, ["kms", "export", "setup-key"])
        let hex = exported.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertEqual(hex.count, 64, exported.description)
        XCTAssertTrue(hex.allSatisfy(\.isHexDigit), exported.description)
        XCTAssertTrue(exported.stderr.contains("WARNING"), exported.description)
        let v1 = try JSON.object(try w.expect(0, ["kms", "export", "setup-key", "--version", "1", "--json"]).stdout)
        XCTAssertEqual(v1["version"] as? Int, 1)
        XCTAssertNotEqual(v1["keyHex"] as? String, hex, "v1 and v2 are different keys")
        try w.expect(66, ["kms", "export", "no-such-key"])
    }

    func testStoreInitOnceThenStat() throws {
        try w.expect(64, ["store", "init"])                            // the world already made one
        let stat = try JSON.object(try w.expect(0, ["store", "stat", "--json"]).stdout)
        XCTAssertEqual((stat["replicas"] as? [Any])?.count, 3)
        XCTAssertEqual(stat["writeQuorum"] as? Int, 2)

        let fresh = try CLI.makeHome()
        defer { try? FileManager.default.removeItem(atPath: fresh) }
        XCTAssertEqual(try CLI.run(["backup", "list"], home: fresh).exitCode, 66, "no store yet")
        let r = try CLI.run(["store", "init", "--replicas", "2", "--json"], home: fresh)
        XCTAssertEqual(r.exitCode, 0, r.description)
        XCTAssertEqual((try JSON.object(r.stdout)["replicas"] as? [Any])?.count, 2)
        XCTAssertEqual(try CLI.run(["backup", "list"], home: fresh).stdout, "no backups\n")
    }

    func testHSMCreatePopulateShow() throws {
        let dir = w.path("hsm")
        let created = try w.expect(0, ["hsm", "create", dir, "--manufacturer", "acme", "--model", "M9", "--serial", "SN9", "--cluster", "cl9"])
        XCTAssertTrue(created.stdout.contains("hsm-SN9"), created.description)
        try w.expect(64, ["hsm", "create", dir, "--manufacturer", "acme", "--model", "M9", "--serial", "SN9", "--cluster", "cl9"])

        let populated = try w.expect(0, ["hsm", "populate", dir, "--keys", "20", "--users", "3", "--seed", "5", "--no-rsa"])
        XCTAssertTrue(populated.stdout.contains("3 users, 20 keys"), populated.description)
        try w.expect(64, ["hsm", "populate", dir, "--keys", "-1", "--users", "3", "--seed", "5"])
        try w.expect(64, ["hsm", "populate", dir, "--keys", "100000000", "--users", "3", "--seed", "5"])
        try w.expect(66, ["hsm", "populate", w.path("none"), "--keys", "1", "--users", "1", "--seed", "5"])

        let show = try JSON.object(try w.expect(0, ["hsm", "show", dir, "--json"]).stdout)
        let identity = try XCTUnwrap(show["identity"] as? [String: Any])
        XCTAssertEqual(identity["manufacturerId"] as? String, "acme")
        XCTAssertEqual(identity["clusterId"] as? String, "cl9")
        XCTAssertEqual(identity["hsmId"] as? String, "hsm-SN9")
        XCTAssertEqual((show["keys"] as? [Any])?.count, 20)
        XCTAssertEqual((show["users"] as? [Any])?.count, 3)
        XCTAssertEqual(show["operatorKeyInstalled"] as? Bool, true)

        let text = try w.expect(0, ["hsm", "show", dir])
        XCTAssertTrue(text.stdout.contains("manufacturer acme"), text.description)
        XCTAssertTrue(text.stdout.contains("users: 3  keys: 20"), text.description)
        try w.expect(66, ["hsm", "show", w.path("none")])

        // The same seed gives the same contents (no RSA).
        let again = w.path("hsm")
        try w.expect(0, ["hsm", "create", again, "--manufacturer", "acme", "--model", "M9", "--serial", "SN10", "--cluster", "cl9"])
        try w.expect(0, ["hsm", "populate", again, "--keys", "20", "--users", "3", "--seed", "5", "--no-rsa"])
        XCTAssertEqual(try w.contents(again).keys, try w.contents(dir).keys)
    }
}
