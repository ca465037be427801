import BackupCrypto
import ByteCoding
import Envelope
import Foundation
import XCTest

/// Loads the vendored SDK vectors (see Vectors/README.md).
struct Vector {
    let name: String
    let message: [UInt8]
    let sidecar: [String: Any]
    let expected: [String: Any]

    static let names: [String] = {
        let dir = Bundle.module.resourceURL!.appendingPathComponent("Vectors")
        let files = (try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []
        return files.filter { $0.hasSuffix(".bin") }.map { String($0.dropLast(4)) }.sorted()
    }()

    init(_ name: String) throws {
        let dir = Bundle.module.resourceURL!.appendingPathComponent("Vectors")
        self.name = name
        message = [UInt8](try Data(contentsOf: dir.appendingPathComponent(name + ".bin")))
        sidecar = try JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent(name + ".json"))) as! [String: Any]
        expected = try JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent(name + ".expected.json"))) as! [String: Any]
    }

    var plaintext: [UInt8] { Hex.decode(sidecar["plaintext_hex"] as! String)! }
    var frameLength: UInt32 { UInt32(sidecar["frame_length"] as! Int) }
    var suiteID: UInt16 { UInt16((sidecar["algorithm_suite_id"] as! String).dropFirst(2), radix: 16)! }
    var isV1: Bool { name.hasPrefix("v1_") }
    var dataKey: DataKey { try! DataKey(bytes: Hex.decode(expected["plaintext_data_key_hex"] as! String)!) }
    var messageID: [UInt8] { Hex.decode(expected["message_id_hex"] as! String)! }

    /// Caller context as ordered string pairs (JSON object order is lost, but the encoder sorts).
    var context: EncryptionContext { try! EncryptionContext(sidecar["encryption_context"] as! [String: String]) }

    var keyrings: [Keyring] {
        (sidecar["keyrings"] as! [[String: Any]]).map { k in
            if (k["type"] as! String) == "raw-aes" {
                return try! RawAESKeyring(namespace: k["key_namespace"] as! String, name: k["key_name"] as! String,
                                          wrappingKey: WrappingKey(bytes: Hex.decode(k["wrapping_key_hex"] as! String)!))
            }
            let stub = sidecar["kms_stub"] as! [String: Any]
            return StaticKeyring(providerID: "aws-kms", dataKey: try! DataKey(bytes: Hex.decode(stub["plaintext_data_key_hex"] as! String)!))
        }
    }

    /// The raw AES keyrings and the IVs they used, in EDK order.
    var recordedEDKIVs: [GCMNonce] {
        (expected["edks"] as! [[String: Any]]).map { try! GCMNonce(Hex.decode($0["provider_info_hex"] as! String)!.suffix(12)) }
    }
}

/// A test keyring that "opens" any EDK of one provider with a fixed data key (for the vector
/// whose AWS KMS call was stubbed).
struct StaticKeyring: Keyring {
    let providerID: String
    let dataKey: DataKey
    var keyDescription: String { "static \(providerID)" }
    func wrap(_ dataKey: DataKey, context: EncryptionContext) throws -> EncryptedDataKey {
        EncryptedDataKey(providerID: providerID, providerInfo: [], ciphertext: [1])
    }
    func unwrap(_ edk: EncryptedDataKey, context: EncryptionContext) throws -> UnwrapOutcome {
        edk.providerID == providerID ? .opened(dataKey) : .notMine
    }
}

func testKeyring(_ name: String = "test-key", byte: UInt8 = 7, namespace: String = "hsm-backup") -> RawAESKeyring {
    try! RawAESKeyring(namespace: namespace, name: name, wrappingKey: WrappingKey(bytes: [UInt8](repeating: byte, count: 32)))
}

/// Asserts that `body` throws an EnvelopeError with `code` (and returns it).
@discardableResult
func assertEnvelopeError<T>(_ code: EnvelopeError.Code, _ message: String = "", file: StaticString = #filePath, line: UInt = #line,
                            _ body: () throws -> T) -> EnvelopeError? {
    do {
        _ = try body()
        XCTFail("expected \(code.rawValue), got success. \(message)", file: file, line: line)
    } catch let e as EnvelopeError {
        XCTAssertEqual(e.code, code, "\(message): \(e)", file: file, line: line)
        return e
    } catch {
        XCTFail("expected EnvelopeError \(code.rawValue), got \(error). \(message)", file: file, line: line)
    }
    return nil
}

/// A deterministic plaintext of `n` bytes.
func pattern(_ n: Int, seed: UInt8 = 1) -> [UInt8] {
    var x = UInt32(seed) &* 2_654_435_761
    return (0..<n).map { _ in x = x &* 1_103_515_245 &+ 12345; return UInt8(truncatingIfNeeded: x >> 16) }
}
