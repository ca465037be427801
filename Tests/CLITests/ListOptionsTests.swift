import XCTest

/// The listing options (`store ls`, `backup list`) go through the library's
/// `CatalogQueryOptions`; bad ones are usage errors, never a crash (fuzz finding, catalog-query:
/// a negative limit trapped the listing).
final class ListOptionsTests: XCTestCase {
    func testBadListingOptionsAreUsageErrors() throws {
        let home = try CLI.makeHome()
        XCTAssertEqual(try CLI.run(["store", "init"], home: home).exitCode, 0)
        for args in [["store", "ls", "--limit=-1"], ["backup", "list", "--limit=-1"], ["store", "ls", "--state", "NOPE"],
                     ["backup", "list", "--state", "NOPE"], ["store", "ls", "--since", "yesterday"]] {
            let r = try CLI.run(args, home: home)
            XCTAssertEqual(r.exitCode, 64, r.description)
            XCTAssertTrue(r.stderr.contains("Error:") || r.stderr.contains("error:"), r.description)
        }
        for args in [["store", "ls", "--limit=0"], ["store", "ls", "--since", "2026-01-01T00:00:00Z", "--state", "READY"],
                     ["backup", "list", "--limit", "3", "--json"]] {
            let r = try CLI.run(args, home: home)
            XCTAssertEqual(r.exitCode, 0, r.description)
        }
    }
}
