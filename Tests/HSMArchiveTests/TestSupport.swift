import BackupCrypto
import Foundation
import HSMArchive
import SimulatedHSM
import XCTest

/// Shared fixtures: fixed keys, temp HSM directories, and a byte-exact snapshot of a state
/// directory (to prove a failed restore changed nothing).
enum Fixture {
    static let manufacturer = "acme-hsm"
    static let mkbk = try! ManufacturerBackupKey(bytes: [UInt8](repeating: 0x11, count: 32))
    static let akbk = try! OperatorBackupKey(bytes: [UInt8](repeating: 0x22, count: 32))
    static let otherAKBK = try! OperatorBackupKey(bytes: [UInt8](repeating: 0x33, count: 32))

    static func identity(_ n: Int = 1, manufacturer: String = manufacturer) -> HSMIdentity {
        HSMIdentity(manufacturerId: manufacturer, model: "SIM-9000", firmwareVersion: "3.1.4",
                    serialNumber: "SN-\(n)", hsmId: "hsm-\(n)", clusterId: "cluster-a")
    }

    static func tempDir(_ name: String = "hsm") -> String {
        let d = NSTemporaryDirectory() + "hsmtest-\(UUID().uuidString)/\(name)"
        return d
    }

    static func makeHSM(_ n: Int = 1, manufacturer: String = manufacturer, mkbk: ManufacturerBackupKey = mkbk,
                        akbk: OperatorBackupKey? = akbk) throws -> SimulatedHSM {
        try SimulatedHSM.create(at: tempDir(), identity: identity(n, manufacturer: manufacturer), mkbk: mkbk, akbk: akbk)
    }

    /// Every file in the directory with its bytes and mode.
    static func snapshot(_ dir: String) -> [String: [UInt8]] {
        var out: [String: [UInt8]] = [:]
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        for n in names {
            let p = dir + "/" + n
            let attrs = try? FileManager.default.attributesOfItem(atPath: p)
            let mode = (attrs?[.posixPermissions] as? Int) ?? -1
            out[n] = Array((try? Data(contentsOf: URL(fileURLWithPath: p))) ?? Data()) + Array("|mode=\(mode)".utf8)
        }
        return out
    }

    static var keyring: BackupKeyring { BackupKeyring(manufacturerId: manufacturer, mkbk: mkbk, akbk: akbk) }
}

/// Asserts `body` throws an error whose stable code is one of `codes`.
func assertCode<T>(_ codes: Set<String>, _ message: @autoclosure () -> String = "", file: StaticString = #filePath, line: UInt = #line,
                   _ body: () throws -> T) {
    do {
        _ = try body()
        XCTFail("expected one of \(codes.sorted()), got success. \(message())", file: file, line: line)
    } catch {
        let code = errorCode(error)
        XCTAssertTrue(codes.contains(code), "expected one of \(codes.sorted()), got \(code): \(error). \(message())", file: file, line: line)
    }
}

func errorCode(_ error: Error) -> String {
    switch error {
    case let e as ArchiveError: return e.code.rawValue
    case let e as HSMError: return e.code.rawValue
    default: return "\(type(of: error))"
    }
}
