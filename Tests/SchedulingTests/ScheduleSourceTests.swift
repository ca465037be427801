import BackupCrypto
import Foundation
import XCTest
@testable import Scheduling

/// The PKCS#11 source kind in the schedule file, the PIN sources of an unattended run, and the
/// credential line of the service unit.
final class ScheduleSourceTests: XCTestCase {
    func decode(_ json: String) throws -> ScheduleSource { try JSONDecoder().decode(ScheduleSource.self, from: Data(json.utf8)) }

    func testThePKCS11KindRoundTripsAndOldFilesStillRead() throws {
        let s = ScheduleSource.pkcs11(module: "/usr/lib/softhsm/libsofthsm2.so", tokenLabel: "prod token", allowPartial: true)
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let json = String(decoding: try enc.encode(s), as: UTF8.self)
        XCTAssertEqual(json, #"{"allowPartial":true,"kind":"pkcs11","module":"/usr/lib/softhsm/libsofthsm2.so","token":"prod token"}"#)
        XCTAssertEqual(try decode(json), s)
        XCTAssertEqual(s.kind, "pkcs11")
        // allowPartial may be absent (false); the simulated kind is unchanged (version 1 files read as before).
        XCTAssertEqual(try decode(#"{"kind":"pkcs11","module":"/m.so","token":"t"}"#), .pkcs11(module: "/m.so", tokenLabel: "t", allowPartial: false))
        XCTAssertEqual(try decode(#"{"kind":"simulated-hsm","directory":"/h"}"#), .simulatedHSM(directory: "/h"))
        XCTAssertEqual(String(decoding: try enc.encode(ScheduleSource.simulatedHSM(directory: "/h")), as: UTF8.self), #"{"directory":"/h","kind":"simulated-hsm"}"#)
        // A PKCS#11 source without its token, or a kind this version does not know: refused, named.
        XCTAssertThrowsError(try decode(#"{"kind":"pkcs11","module":"/m.so"}"#))
        XCTAssertThrowsError(try decode(#"{"kind":"cloudhsm","cluster":"x"}"#)) { XCTAssertTrue("\($0)".contains("cloudhsm"), "\($0)") }
    }

    func testAScheduleFileWithAPKCS11ScheduleLoadsThroughTheHome() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sched-src-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let home = ScheduleHome(home: dir)
        var file = ScheduleFile()
        file.schedules = [Schedule(name: "tok", source: .pkcs11(module: "/m.so", tokenLabel: "T", allowPartial: false), cluster: "c",
                                   kmsKeys: ["arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"],
                                   every: try Interval.parse("24h"), verify: .full, tags: [:], added: "2026-01-01T00:00:00Z")]
        try home.saveSchedules(file)
        XCTAssertEqual(try home.loadSchedules(), file)
        let text = try String(contentsOfFile: home.scheduleFile, encoding: .utf8)
        XCTAssertTrue(text.contains("\"version\" : 1"), text)
    }

    func withEnvironment(_ vars: [String: String?], _ body: () throws -> Void) rethrows {
        let names = ["HSMBACKUP_PKCS11_PIN", "HSMBACKUP_PKCS11_PIN_FILE", "CREDENTIALS_DIRECTORY"]
        let saved = names.map { ($0, getenv($0).map { String(cString: $0) }) }
        for n in names { unsetenv(n) }
        for (k, v) in vars { if let v { setenv(k, v, 1) } }
        defer { for (k, v) in saved { if let v { setenv(k, v, 1) } else { unsetenv(k) } } }
        try body()
    }

    func text(_ s: SecureBytes) -> String { s.withUnsafeBytes { String(decoding: $0, as: UTF8.self) } }

    func testThePINComesFromTheEnvironmentOnceThenACredentialThenAFile() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("pin-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "general-pin\n".write(toFile: dir + "/hsmbackup-pkcs11-pin", atomically: true, encoding: .utf8)
        try "own-pin\r\n".write(toFile: dir + "/hsmbackup-pkcs11-pin-nightly", atomically: true, encoding: .utf8)
        try "file-pin".write(toFile: dir + "/pinfile", atomically: true, encoding: .utf8)

        // The environment wins, is read once, and is gone from the environment afterwards.
        try withEnvironment(["HSMBACKUP_PKCS11_PIN": "env-pin", "CREDENTIALS_DIRECTORY": dir]) {
            let pins = PKCS11PINSource()
            XCTAssertEqual(text(try pins.pin(schedule: "nightly", token: "T")), "env-pin")
            XCTAssertNil(getenv("HSMBACKUP_PKCS11_PIN"), "nothing the run starts inherits it")
            XCTAssertEqual(text(try pins.pin(schedule: "other", token: "U")), "env-pin", "every schedule of the run")
        }
        // systemd credentials: the schedule's own, then the general one (one trailing newline dropped).
        try withEnvironment(["CREDENTIALS_DIRECTORY": dir, "HSMBACKUP_PKCS11_PIN_FILE": dir + "/pinfile"]) {
            let pins = PKCS11PINSource()
            XCTAssertEqual(text(try pins.pin(schedule: "nightly", token: "T")), "own-pin")
            XCTAssertEqual(text(try pins.pin(schedule: "weekly", token: "T")), "general-pin")
        }
        try withEnvironment(["HSMBACKUP_PKCS11_PIN_FILE": dir + "/pinfile"]) {
            XCTAssertEqual(text(try PKCS11PINSource().pin(schedule: "nightly", token: "T")), "file-pin")
        }
        // None: a clear error naming every way to give one.
        try withEnvironment([:]) {
            XCTAssertThrowsError(try PKCS11PINSource().pin(schedule: "nightly", token: "T")) { e in
                let err = e as? SchedulingError
                XCTAssertEqual(err?.code, .credentialMissing)
                for part in ["no user PIN for PKCS#11 token \"T\"", "HSMBACKUP_PKCS11_PIN", "LoadCredential=", "hsmbackup-pkcs11-pin-nightly", "HSMBACKUP_PKCS11_PIN_FILE"] {
                    XCTAssertTrue(err?.reason.contains(part) == true, "\(part) in \(e)")
                }
            }
        }
        // Bad files: empty, too long, a directory, missing.
        try "\n".write(toFile: dir + "/empty", atomically: true, encoding: .utf8)
        try String(repeating: "9", count: 300).write(toFile: dir + "/long", atomically: true, encoding: .utf8)
        for (path, why) in [(dir + "/empty", "empty"), (dir + "/long", "longer than 256"), (dir, "cannot read"), (dir + "/none", "cannot read")] {
            try withEnvironment(["HSMBACKUP_PKCS11_PIN_FILE": path]) {
                XCTAssertThrowsError(try PKCS11PINSource().pin(schedule: "s", token: "T")) { e in
                    XCTAssertEqual((e as? SchedulingError)?.code, .credentialMissing)
                    XCTAssertTrue("\(e)".contains(why), "\(why) in \(e)")
                    XCTAssertFalse("\(e)".contains(String(repeating: "9", count: 20)), "the PIN is never in an error")
                }
            }
        }
    }

    func testTheServiceLoadsThePINAsACredentialOnlyWhenAsked() throws {
        var o = UnitOptions(binary: "/usr/local/bin/hsmbackup", home: "/var/lib/hsmbackup")
        XCTAssertTrue(Units.service(o).contains("\n#LoadCredential=hsmbackup-pkcs11-pin:/etc/hsmbackup/pkcs11-pin\n"))
        o.pkcs11PINFile = "/etc/credstore/pin"
        try o.validate()
        XCTAssertTrue(Units.service(o).contains("\nLoadCredential=hsmbackup-pkcs11-pin:/etc/credstore/pin\n"))
        o.pkcs11PINFile = "/etc/pin with space"
        XCTAssertThrowsError(try o.validate())
    }
}
