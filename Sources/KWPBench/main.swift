// KWPBench: payload key wrapping throughput, one thread, 64 KiB chunks.
// OpenSSL's EVP id-aes256-wrap-pad one chunk at a time (AESKeyWrap) against AESKeyWrapLanes with
// 1/8/16/32/64 lanes, and 16 lanes of differing lengths as compressed chunks have. Each row runs the two alternately on the same input, several times, and
// reports medians and the ratio. Build and run in release:
//   swift build -c release --product KWPBench && .build/release/KWPBench [repetitions]
import BackupCrypto
import Foundation

let chunkBytes = 65536 + 37            // a payload chunk: 37-byte binding + 64 KiB of data
let key = try EphemeralBackupKey.random()

// `KWPBench profile <lanes> <batches>`: only the lane path (wrap then unwrap), for a profiler.
if CommandLine.arguments.count > 1, CommandLine.arguments[1] == "profile" {
    let lanes = CommandLine.arguments.count > 2 ? Int(CommandLine.arguments[2]) ?? 16 : 16
    let batches = CommandLine.arguments.count > 3 ? Int(CommandLine.arguments[3]) ?? 20 : 20
    let chunks = (0..<lanes).map { _ in SecureRandom.bytes(count: chunkBytes) }
    let t = DispatchTime.now().uptimeNanoseconds
    for _ in 0..<batches {
        let c = try AESKeyWrapLanes.wrapPadded(chunks, key: key)
        _ = AESKeyWrapLanes.unwrapPadded(c, key: key)
    }
    let ns = DispatchTime.now().uptimeNanoseconds - t
    print(String(format: "%d lanes: %.1f MB/s (wrap + unwrap)", lanes, Double(2 * batches * lanes * chunkBytes) / Double(ns) * 1e3))
    exit(0)
}

let repetitions = CommandLine.arguments.count > 1 ? max(1, Int(CommandLine.arguments[1]) ?? 5) : 5

func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }
func median(_ xs: [Double]) -> Double { let s = xs.sorted(); return s[s.count / 2] }
func mbps(_ bytes: Int, _ ns: UInt64) -> Double { Double(bytes) / Double(ns) * 1e3 }   // 10^6 bytes/s

struct Row { let name: String; let openSSL: Double; let ours: Double }
var rows: [Row] = []

for lanes in [1, 8, 16, 32, 64] {
    let chunks = (0..<lanes).map { _ in SecureRandom.bytes(count: chunkBytes) }
    let reference = try chunks.map { try AESKeyWrap.wrapPadded($0, key: key) }
    let check = try AESKeyWrapLanes.wrapPadded(chunks, key: key)
    precondition(check == reference, "lanes differ from OpenSSL")
    var wrapA: [Double] = [], wrapB: [Double] = [], unA: [Double] = [], unB: [Double] = []
    let bytes = lanes * chunkBytes
    for _ in 0..<repetitions {
        var t = now()
        for c in chunks { _ = try AESKeyWrap.wrapPadded(c, key: key) }
        wrapA.append(mbps(bytes, now() - t))
        t = now()
        _ = lanes == 1 ? [try AESKeyWrapLanes.wrapPadded(chunks[0], key: key)] : try AESKeyWrapLanes.wrapPadded(chunks, key: key)
        wrapB.append(mbps(bytes, now() - t))
        t = now()
        for c in reference { _ = try AESKeyWrap.unwrapPadded(c, key: key) }
        unA.append(mbps(bytes, now() - t))
        t = now()
        let out = AESKeyWrapLanes.unwrapPadded(reference, key: key)
        unB.append(mbps(bytes, now() - t))
        precondition(out.allSatisfy { if case .success = $0 { return true } else { return false } })
    }
    rows.append(Row(name: "wrap   \(lanes) lane\(lanes == 1 ? " " : "s")", openSSL: median(wrapA), ours: median(wrapB)))
    rows.append(Row(name: "unwrap \(lanes) lane\(lanes == 1 ? " " : "s")", openSSL: median(unA), ours: median(unB)))
}

// What an archive's chunks look like: compressed, so the 16 lanes of a batch differ in length by
// a few semiblocks (here 22,000 +- 400 bytes); the lane path runs each lane on its own then.
do {
    let lanes = 16
    let chunks = (0..<lanes).map { _ in SecureRandom.bytes(count: 22_000 + Int.random(in: -400...400)) }
    let reference = try chunks.map { try AESKeyWrap.wrapPadded($0, key: key) }
    let lanesOut = try AESKeyWrapLanes.wrapPadded(chunks, key: key)
    precondition(lanesOut == reference, "lanes differ from OpenSSL")
    let bytes = chunks.reduce(0) { $0 + $1.count }
    var wrapA: [Double] = [], wrapB: [Double] = [], unA: [Double] = [], unB: [Double] = []
    for _ in 0..<(4 * repetitions) {
        var t = now()
        for c in chunks { _ = try AESKeyWrap.wrapPadded(c, key: key) }
        wrapA.append(mbps(bytes, now() - t))
        t = now()
        _ = try AESKeyWrapLanes.wrapPadded(chunks, key: key)
        wrapB.append(mbps(bytes, now() - t))
        t = now()
        for c in reference { _ = try AESKeyWrap.unwrapPadded(c, key: key) }
        unA.append(mbps(bytes, now() - t))
        t = now()
        _ = AESKeyWrapLanes.unwrapPadded(reference, key: key)
        unB.append(mbps(bytes, now() - t))
    }
    rows.append(Row(name: "wrap   16 mixed", openSSL: median(wrapA), ours: median(wrapB)))
    rows.append(Row(name: "unwrap 16 mixed", openSSL: median(unA), ours: median(unB)))
}

print("KWP (AES-256) on \(chunkBytes)-byte chunks (\"mixed\": 16 lanes of 21,600-22,400 bytes), one thread, median of \(repetitions); MB = 10^6 bytes of plaintext")
print("row              OpenSSL EVP MB/s   lanes MB/s   ratio")
for r in rows {
    print(String(format: "%@  %16.1f  %11.1f  %6.1fx", r.name.padding(toLength: 15, withPad: " ", startingAt: 0), r.openSSL, r.ours, r.ours / r.openSSL))
}
