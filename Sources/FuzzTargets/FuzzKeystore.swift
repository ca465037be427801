import Envelope
import Foundation

enum FuzzKeystore {
    /// Local KMS keystore files. Input byte 0: even = the rest is a `key.json` of key
    /// "fuzz-key"; odd = the rest is a `vN.key`. JSON has no single encoding, so canonicity here
    /// is: what parses encodes (as the keystore writes it) and parses back to the same value,
    /// and that encoding is a fixed point.
    static func run(_ data: [UInt8]) {
        guard let mode = data.first else { return }
        let bytes = Array(data.dropFirst())
        if mode & 1 != 0 {
            do {
                _ = try LocalKMS.parseKeyFile(bytes, path: "v1.key")
                check(bytes.count == 32, "a key file of \(bytes.count) bytes parsed")
            } catch { expectTyped(error, "LocalKMS.parseKeyFile") }
            return
        }
        do {
            let info = try LocalKMS.parseKeyInfo(bytes, name: "fuzz-key", path: "key.json")
            check(info.name == "fuzz-key", "key.json of another key accepted")
            let enc = JSONEncoder()
            enc.outputFormatting = [.prettyPrinted, .sortedKeys]
            let once = [UInt8](try enc.encode(info))
            let back = try LocalKMS.parseKeyInfo(once, name: "fuzz-key", path: "key.json")
            check(back == info, "key.json does not round-trip")
            check([UInt8](try enc.encode(back)) == once, "key.json encoding is not a fixed point")
            _ = info.primaryVersion
        } catch { expectTyped(error, "LocalKMS.parseKeyInfo") }
    }
}
