import XCTest
@testable import Scheduling
final class ScheduleFileTests: XCTestCase { func testNothing() {} }
