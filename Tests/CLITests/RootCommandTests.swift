import XCTest

/// Transcript tests of the root command: help, self-test, global --home, usage errors.
final class RootCommandTests: XCTestCase {
    func testSelfTestPassesEveryPrimitive() throws {
        let r = try CLI.run(["selftest"])
        XCTAssertEqual(r.exitCode, 0, r.description)
        XCTAssertFalse(r.stdout.contains("FAIL"), r.description)
        XCTAssertGreaterThanOrEqual(r.stdout.split(separator: "\n").filter { $0.hasPrefix("ok") }.count, 6)
    }

    func testHelpListsExitCodes() throws {
        let r = try CLI.run(["--help"])
        XCTAssertEqual(r.exitCode, 0)
        XCTAssertTrue(r.stdout.contains("65 verification failed"), r.description)
    }

    func testUnknownCommandIsAUsageError() throws {
        let r = try CLI.run(["no-such-command"])
        XCTAssertEqual(r.exitCode, 64, r.description)
        XCTAssertTrue(r.stderr.contains("Unexpected argument"), r.description)
    }

    func testGlobalHomeOptionIsAccepted() throws {
        let home = try CLI.makeHome()
        let r = try CLI.run(["--home", home, "selftest"])
        XCTAssertEqual(r.exitCode, 0, r.description)
    }
}
