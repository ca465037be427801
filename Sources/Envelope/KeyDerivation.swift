import BackupCrypto
import ByteCoding

/// Key derivation and the fixed AAD layouts (spec/FORMAT.md §3.3; ESDK digest §3, §4).
enum KeyDerivation {
    static let deriveKeyLabel = Array("DERIVEKEY".utf8)
    static let commitKeyLabel = Array("COMMITKEY".utf8)

    struct Keys {
        let contentKey: ContentKey
        /// v2 only: the 32-byte commitment key.
        let commitKey: [UInt8]
    }

    static func derive(suite: AlgorithmSuite, dataKey: DataKey, messageID: [UInt8]) throws -> Keys {
        let suiteID = [UInt8(suite.id >> 8), UInt8(suite.id & 0xff)]
        do {
            switch suite.kdf {
            case .hkdfSHA512Commit:
                let ck: ContentKey = try HKDFSHA512.deriveKey(from: dataKey, salt: messageID, info: suiteID + deriveKeyLabel, byteCount: 32)
                let commit = try dataKey.withUnsafeBytes {
                    try HKDFSHA512.derive(ikm: $0, salt: messageID, info: commitKeyLabel, outputBytes: 32)
                }
                return Keys(contentKey: ck, commitKey: commit.unsafeCopy())
            case .identity:
                return Keys(contentKey: try ContentKey(secret: dataKey.secret), commitKey: [])
            case .hkdfSHA256, .hkdfSHA384:
                let hash: HMACHash = suite.kdf == .hkdfSHA256 ? .sha256 : .sha384
                let okm = try dataKey.withUnsafeBytes {
                    try HKDF.derive(hash, ikm: $0, salt: [], info: suiteID + messageID, outputBytes: suite.dataKeyByteCount)
                }
                return Keys(contentKey: try ContentKey(secret: okm), commitKey: [])
            }
        } catch let e as EnvelopeError {
            throw e
        } catch {
            throw EnvelopeError(.invalidArgument, "key derivation failed: \(error)")
        }
    }

    /// Header authentication: GCM over the empty plaintext with AAD = header body.
    static func headerTag(body: [UInt8], key: ContentKey, iv: [UInt8]) throws -> [UInt8] {
        try AESGCM.seal([], key: key, nonce: try GCMNonce(iv), aad: body).tag
    }

    static let frameLabel = Array("AWSKMSEncryptionClient Frame".utf8)
    static let finalFrameLabel = Array("AWSKMSEncryptionClient Final Frame".utf8)
    static let singleBlockLabel = Array("AWSKMSEncryptionClient Single Block".utf8)
    static let finalFrameMarker: UInt32 = 0xFFFF_FFFF

    /// Body AAD: message ID ‖ label ‖ u32 sequence number ‖ u64 plaintext length.
    static func bodyAAD(messageID: [UInt8], label: [UInt8], sequence: UInt32, length: UInt64) -> [UInt8] {
        var w = ByteWriter(capacity: messageID.count + label.count + 12)
        w.writeBytes(messageID)
        w.writeBytes(label)
        w.writeUInt32(sequence)
        w.writeUInt64(length)
        return w.bytes
    }

    /// The IV every SDK writes: 8 zero bytes ‖ u32 sequence number.
    static func frameIV(_ sequence: UInt32) -> [UInt8] {
        [0, 0, 0, 0, 0, 0, 0, 0, UInt8(sequence >> 24), UInt8((sequence >> 16) & 0xff), UInt8((sequence >> 8) & 0xff), UInt8(sequence & 0xff)]
    }
}
