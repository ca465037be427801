@testable import BackupCrypto
import ByteCoding
import XCTest

/// The lane path (`AESKeyWrapLanes`) against the OpenSSL EVP path (`AESKeyWrap`): every NIST
/// CAVP KW/KWP AE/AD record and every Wycheproof aes_wrap/aes_kwp case, one lane at a time and
/// batched among other lanes, plus a seeded differential test over random inputs, valid and
/// corrupted, and crafted ciphertexts whose A, length or padding is wrong in one way each.
final class KeyWrapLanesTests: XCTestCase {
    /// What one operation gave: the output bytes, or the code of its error.
    enum Outcome: Equatable, CustomStringConvertible {
        case bytes([UInt8])
        case error(CryptoError.Code)

        init(_ body: () throws -> [UInt8]) {
            do { self = .bytes(try body()) } catch let e as CryptoError { self = .error(e.code) } catch {
                XCTFail("unexpected error type \(error)")
                self = .error(.openSSL)
            }
        }

        init(_ result: Result<SecureBytes, CryptoError>) {
            switch result {
            case .success(let s): self = .bytes(s.unsafeCopy())
            case .failure(let e): self = .error(e.code)
            }
        }

        var description: String {
            switch self {
            case .bytes(let b): return b.count > 48 ? "\(b.count) bytes \(Hex.encode(Array(b.prefix(16))))..." : Hex.encode(b)
            case .error(let c): return "error \(c.rawValue)"
            }
        }
    }

    // MARK: The two paths

    private func openSSLWrap(_ p: [UInt8], _ key: WrappingKey, padded: Bool) -> Outcome {
        Outcome { padded ? try AESKeyWrap.wrapPadded(p, key: key) : try AESKeyWrap.wrap(p, key: key) }
    }
    private func openSSLUnwrap(_ c: [UInt8], _ key: WrappingKey, padded: Bool) -> Outcome {
        Outcome { padded ? try AESKeyWrap.unwrapPadded(c, key: key).unsafeCopy() : try AESKeyWrap.unwrap(c, key: key).unsafeCopy() }
    }
    private func laneWrap(_ p: [UInt8], _ key: WrappingKey, padded: Bool) -> Outcome {
        Outcome { padded ? try AESKeyWrapLanes.wrapPadded(p, key: key) : try AESKeyWrapLanes.wrap(p, key: key) }
    }
    private func laneUnwrap(_ c: [UInt8], _ key: WrappingKey, padded: Bool) -> Outcome {
        Outcome { padded ? try AESKeyWrapLanes.unwrapPadded(c, key: key).unsafeCopy() : try AESKeyWrapLanes.unwrap(c, key: key).unsafeCopy() }
    }
    private func laneWrapBatch(_ ps: [[UInt8]], _ key: WrappingKey, padded: Bool) throws -> [[UInt8]] {
        padded ? try AESKeyWrapLanes.wrapPadded(ps, key: key) : try AESKeyWrapLanes.wrap(ps, key: key)
    }
    private func laneUnwrapBatch(_ cs: [[UInt8]], _ key: WrappingKey, padded: Bool) -> [Outcome] {
        (padded ? AESKeyWrapLanes.unwrapPadded(cs, key: key) : AESKeyWrapLanes.unwrap(cs, key: key)).map(Outcome.init)
    }

    /// A valid plaintext length for the mode, around `around`.
    private func plaintextLength(_ rng: inout SplitMix64, padded: Bool, upTo maximum: Int) -> Int {
        padded ? Int.random(in: 1...maximum, using: &rng) : 8 * Int.random(in: 2...max(2, maximum / 8), using: &rng)
    }

    /// Filler lanes for a vector's batch under its key: one shorter, one of the same length,
    /// one longer (so the vector runs in a group of its own size among groups that stop earlier
    /// and later), as plaintexts, or as OpenSSL-made ciphertexts to unwrap.
    private func fillers(_ rng: inout SplitMix64, around length: Int, padded: Bool) -> [[UInt8]] {
        let lengths = [max(padded ? 1 : 16, length / 2 / 8 * 8), max(padded ? 1 : 16, length), length + 8 * Int.random(in: 1...6, using: &rng)]
        return lengths.map { rng.bytes($0) }
    }

    // MARK: NIST CAVP

    private func runNIST(mode: String, padded: Bool) throws {
        var rng = SplitMix64(seed: padded ? 0x5649 : 0x3394)
        var singles = 0, batched = 0
        for bits in [128, 192, 256] {
            for kind in ["AE", "AD"] {
                let file = "\(mode)_\(kind)_\(bits).txt"
                var tally = VectorTally(file: file + " (lanes)")
                for r in CAVP.parse(try Vectors.text(file)) {
                    let key = try WrappingKey(bytes: r.hex("K"))
                    let id = "\(file) COUNT \(r.fields["COUNT"] ?? "?")"
                    let c = r.hex("C")
                    let expectedUnwrap: Outcome = r.fail ? .error(.authenticationFailed) : .bytes(r.hex("P"))
                    // One lane at a time, and the OpenSSL path says the same.
                    if kind == "AE" {
                        XCTAssertEqual(laneWrap(r.hex("P"), key, padded: padded), .bytes(c), id)
                    }
                    XCTAssertEqual(laneUnwrap(c, key, padded: padded), expectedUnwrap, id)
                    XCTAssertEqual(openSSLUnwrap(c, key, padded: padded), expectedUnwrap, id)
                    singles += 1

                    // Batched: the record among filler lanes, at a random position.
                    let fill = fillers(&rng, around: max(c.count - 8, 8), padded: padded)
                    let at = Int.random(in: 0...fill.count, using: &rng)
                    if kind == "AE" {
                        var ps = fill
                        ps.insert(r.hex("P"), at: at)
                        let out = try laneWrapBatch(ps, key, padded: padded)
                        XCTAssertEqual(out[at], c, id + " (batched)")
                        for (j, p) in ps.enumerated() where j != at {
                            XCTAssertEqual(.bytes(out[j]), openSSLWrap(p, key, padded: padded), id + " filler \(j)")
                        }
                    }
                    var cs = fill.map { (try? padded ? AESKeyWrap.wrapPadded($0, key: key) : AESKeyWrap.wrap($0, key: key)) ?? [] }
                    cs.insert(c, at: at)
                    let outcomes = laneUnwrapBatch(cs, key, padded: padded)
                    XCTAssertEqual(outcomes[at], expectedUnwrap, id + " (batched)")
                    for (j, cj) in cs.enumerated() where j != at {
                        XCTAssertEqual(outcomes[j], openSSLUnwrap(cj, key, padded: padded), id + " filler \(j)")
                    }
                    batched += 1
                    if r.fail { tally.rejected += 1 } else { tally.passed += 1 }
                }
                XCTAssertEqual(tally.total, 500)
                if kind == "AD" { XCTAssertEqual(tally.rejected, 100) }
                tally.report()
            }
        }
        XCTAssertEqual([singles, batched], [3000, 3000])
    }

    func testNISTKWThroughLanes() throws { try runNIST(mode: "KW", padded: false) }
    func testNISTKWPThroughLanes() throws { try runNIST(mode: "KWP", padded: true) }

    // MARK: Wycheproof

    private func runWycheproof(file: String, padded: Bool) throws -> VectorTally {
        var tally = VectorTally(file: file + " (lanes)")
        var byKey: [String: [(id: Int, msg: [UInt8], ct: [UInt8])]] = [:]
        for (_, t) in try Vectors.wycheproof(file) {
            let id = t["tcId"] as? Int ?? -1
            let keyHex = t["key"] as! String
            let key = try WrappingKey(bytes: XCTUnwrap(Hex.decode(keyHex)))
            let msg = try XCTUnwrap(Hex.decode(t["msg"] as! String))
            let ct = try XCTUnwrap(Hex.decode(t["ct"] as! String))
            byKey[keyHex, default: []].append((id, msg, ct))
            // One lane at a time: the same outcome as OpenSSL both ways, and the expected one.
            let wrapped = laneWrap(msg, key, padded: padded)
            let unwrapped = laneUnwrap(ct, key, padded: padded)
            XCTAssertEqual(wrapped, openSSLWrap(msg, key, padded: padded), "tcId \(id) wrap")
            XCTAssertEqual(unwrapped, openSSLUnwrap(ct, key, padded: padded), "tcId \(id) unwrap")
            switch t["result"] as! String {
            case "valid":
                XCTAssertEqual(wrapped, .bytes(ct), "tcId \(id)")
                XCTAssertEqual(unwrapped, .bytes(msg), "tcId \(id)")
                tally.passed += 1
            case "invalid":
                guard case .error = unwrapped else { XCTFail("tcId \(id) must be rejected"); continue }
                tally.rejected += 1
            default:
                guard case .error = wrapped, case .error = unwrapped else { XCTFail("tcId \(id) must be refused"); continue }
                tally.refusedUnsupported += 1
            }
        }
        // Batched: every case of one key in one batch (wrap: those of a valid size).
        var batches = 0
        for (keyHex, cases) in byKey {
            let key = try WrappingKey(bytes: Hex.decode(keyHex)!)
            let wrappable = cases.filter {
                padded ? $0.msg.count >= 1 : ($0.msg.count >= 16 && $0.msg.count % 8 == 0)
            }
            let out = try laneWrapBatch(wrappable.map(\.msg), key, padded: padded)
            for (j, c) in wrappable.enumerated() {
                XCTAssertEqual(.bytes(out[j]), openSSLWrap(c.msg, key, padded: padded), "tcId \(c.id) wrap (batched)")
            }
            let outcomes = laneUnwrapBatch(cases.map(\.ct), key, padded: padded)
            for (j, c) in cases.enumerated() {
                XCTAssertEqual(outcomes[j], openSSLUnwrap(c.ct, key, padded: padded), "tcId \(c.id) unwrap (batched)")
            }
            batches += 1
        }
        XCTAssertEqual(batches, byKey.count)
        tally.report()
        return tally
    }

    func testWycheproofKWThroughLanes() throws {
        let t = try runWycheproof(file: "aes_wrap_test.json", padded: false)
        XCTAssertEqual([t.passed, t.rejected, t.refusedUnsupported], [36, 126, 3])
    }

    func testWycheproofKWPThroughLanes() throws {
        let t = try runWycheproof(file: "aes_kwp_test.json", padded: true)
        XCTAssertEqual([t.passed, t.rejected], [77, 177])
    }

    // MARK: Differential, random inputs

    /// KWP: 10,000 random plaintexts of 1...300 bytes and a few of 64 KiB (a payload chunk with
    /// and without its 37-byte binding), in batches of 500 under random 128/192/256-bit keys;
    /// KW: 2,000 of 16...304 bytes. Wrap must equal OpenSSL byte for byte; unwrapping the
    /// ciphertexts and a randomly corrupted copy of each must give OpenSSL's outcome.
    func testDifferentialAgainstOpenSSL() throws {
        var rng = SplitMix64(seed: 0x6B77_7020_6C61_6E65)
        var counts = (wrapped: 0, unwrapped: 0, corrupted: 0, rejected: 0)
        for round in 0..<20 {
            let key = try WrappingKey(bytes: rng.bytes([16, 24, 32][round % 3]))
            for padded in [true, false] {
                var ps = (0..<(padded ? 500 : 100)).map { _ in rng.bytes(plaintextLength(&rng, padded: padded, upTo: 304)) }
                if padded && round < 2 {
                    ps += [rng.bytes(65536 + 37), rng.bytes(65536), rng.bytes(Int.random(in: 60000...65536, using: &rng))]
                }
                ps.shuffle(using: &rng)
                let expected = ps.map { openSSLWrap($0, key, padded: padded) }
                let out = try laneWrapBatch(ps, key, padded: padded)
                XCTAssertEqual(out.count, ps.count)
                var mismatches = 0
                for j in ps.indices where Outcome.bytes(out[j]) != expected[j] { mismatches += 1 }
                XCTAssertEqual(mismatches, 0, "round \(round) padded \(padded): wrap differs from OpenSSL")
                // Every tenth through the one-lane call too.
                for j in stride(from: 0, to: ps.count, by: 10) {
                    XCTAssertEqual(laneWrap(ps[j], key, padded: padded), expected[j], "round \(round) lane \(j) (one lane)")
                }
                counts.wrapped += ps.count

                let cs = out
                let unwrapped = laneUnwrapBatch(cs, key, padded: padded)
                mismatches = 0
                for j in cs.indices where unwrapped[j] != .bytes(ps[j]) { mismatches += 1 }
                XCTAssertEqual(mismatches, 0, "round \(round) padded \(padded): unwrap of valid ciphertexts")
                counts.unwrapped += cs.count

                let corrupted = cs.map { corrupt($0, &rng) }
                let outcomes = laneUnwrapBatch(corrupted, key, padded: padded)
                mismatches = 0
                for j in corrupted.indices {
                    let reference = openSSLUnwrap(corrupted[j], key, padded: padded)
                    if outcomes[j] != reference {
                        mismatches += 1
                        if mismatches <= 3 { XCTFail("round \(round) lane \(j): lanes \(outcomes[j]), OpenSSL \(reference)") }
                    }
                    if case .error = reference { counts.rejected += 1 }
                }
                XCTAssertEqual(mismatches, 0, "round \(round) padded \(padded): unwrap of corrupted ciphertexts")
                counts.corrupted += corrupted.count
            }
        }
        print("kwp lanes differential: \(counts.wrapped) wrapped, \(counts.unwrapped) unwrapped, \(counts.corrupted) corrupted (\(counts.rejected) rejected by both)")
        XCTAssertGreaterThanOrEqual(counts.wrapped, 10_000)
        XCTAssertGreaterThan(counts.rejected, counts.corrupted * 9 / 10)
    }

    /// A batch whose R registers exceed the cache budget runs as several sub-batches; the
    /// outputs and their order must not change.
    func testBatchBeyondTheCacheBudgetAgreesWithOpenSSL() throws {
        var rng = SplitMix64(seed: 0x1_0000)
        let key = try WrappingKey.random()
        let large = 65536 + 37
        var ps = (0..<(AESKeyWrapLanes.laneCacheBudgetBytes / large + 2)).map { _ in rng.bytes(large - Int.random(in: 0...64, using: &rng)) }
        ps.insert(rng.bytes(5), at: 3)
        ps.insert(rng.bytes(200), at: 9)
        XCTAssertGreaterThan(ps.reduce(0) { $0 + $1.count }, AESKeyWrapLanes.laneCacheBudgetBytes)
        let out = try AESKeyWrapLanes.wrapPadded(ps, key: key)
        for (j, p) in ps.enumerated() {
            XCTAssertEqual(.bytes(out[j]), openSSLWrap(p, key, padded: true), "lane \(j)")
        }
        var cs = out
        cs[5][100] ^= 0x40
        let outcomes = AESKeyWrapLanes.unwrapPadded(cs, key: key).map(Outcome.init)
        for (j, c) in cs.enumerated() {
            XCTAssertEqual(outcomes[j], openSSLUnwrap(c, key, padded: true), "lane \(j)")
        }
        XCTAssertEqual(outcomes[5], .error(.authenticationFailed))
        XCTAssertEqual(outcomes[4], .bytes(ps[4]))
    }

    /// A batch whose lanes mostly differ in semiblock count, as an archive's compressed chunks
    /// do, runs the one-lane-per-group loop: KWP and KW, wrap equal to OpenSSL, unwrap of the
    /// ciphertexts and of corrupted copies (one lane at a time, so the others still run) with
    /// OpenSSL's outcome. Lengths from 9 bytes (two semiblocks) to a whole 64 KiB chunk; from
    /// round 3 on, a few lanes share a length (they finish on the same step).
    func testBatchOfDistinctLengthsAgreesWithOpenSSL() throws {
        var rng = SplitMix64(seed: 0x6469_7374_696E_6374)
        for round in 0..<6 {
            let key = try WrappingKey(bytes: rng.bytes([16, 24, 32][round % 3]))
            for padded in [true, false] {
                // Distinct semiblock counts: 2, then random steps up, shuffled.
                var n = 2
                var ps: [[UInt8]] = []
                for _ in 0..<(round == 0 ? 3 : 17) {
                    let bytes = padded ? 8 * n - Int.random(in: 0...7, using: &rng) : 8 * n
                    ps.append(rng.bytes(bytes))
                    n += Int.random(in: 1...(round < 3 ? 40 : 700), using: &rng)
                }
                if round == 5 && padded { ps.append(rng.bytes(65536 + 37)) }
                if round >= 3 { ps += [ps[0].count, ps[0].count, ps[4].count].map { rng.bytes($0) } }
                ps.shuffle(using: &rng)
                let distinct = Set(ps.map { ($0.count + 7) / 8 }).count
                XCTAssertGreaterThan(distinct * 3, ps.count, "mostly distinct lengths")
                XCTAssertEqual(distinct == ps.count, round < 3)
                let out = try laneWrapBatch(ps, key, padded: padded)
                for j in ps.indices {
                    XCTAssertEqual(.bytes(out[j]), openSSLWrap(ps[j], key, padded: padded), "round \(round) lane \(j) wrap")
                }
                let back = laneUnwrapBatch(out, key, padded: padded)
                for j in ps.indices { XCTAssertEqual(back[j], .bytes(ps[j]), "round \(round) lane \(j) unwrap") }
                for victim in [0, ps.count / 2, ps.count - 1] {
                    var cs = out
                    cs[victim] = corrupt(cs[victim], &rng)
                    let outcomes = laneUnwrapBatch(cs, key, padded: padded)
                    for j in cs.indices {
                        XCTAssertEqual(outcomes[j], openSSLUnwrap(cs[j], key, padded: padded), "round \(round) lane \(j), lane \(victim) corrupted")
                    }
                }
            }
        }
    }

    /// One random corruption: a byte changed (never to itself), a semiblock cut or added, a
    /// length that is not a multiple of 8, or all bytes replaced.
    private func corrupt(_ c: [UInt8], _ rng: inout SplitMix64) -> [UInt8] {
        var c = c
        switch Int.random(in: 0..<10, using: &rng) {
        case 0: c.removeLast(8)
        case 1: c += rng.bytes(8)
        case 2: c.removeLast(Int.random(in: 1...7, using: &rng))
        case 3: c = rng.bytes(c.count)
        case 4: c = Array(c.prefix(16))
        default:
            let i = Int.random(in: 0..<c.count, using: &rng)
            c[i] ^= UInt8.random(in: 1...255, using: &rng)
        }
        return c
    }

    // MARK: Crafted integrity failures

    /// Ciphertexts made with a chosen A: right AIV but MLI too small or too large, non-zero
    /// padding, wrong AIV, KW's IV off by one bit. Both paths must reject each with
    /// authenticationFailed; the right A must give OpenSSL's ciphertext and unwrap.
    func testCraftedIntegrityFailuresAreRejectedLikeOpenSSL() throws {
        var rng = SplitMix64(seed: 0xA659_59A6)
        let key = try WrappingKey.random()
        var rejected = 0
        for n in [1, 2, 3, 9] {
            for mli in (8 * (n - 1) + 1)...(8 * n) {
                var r = rng.bytes(mli) + [UInt8](repeating: 0, count: 8 * n - mli)
                let good = try AESKeyWrapLanes.wrapWithInitialValue(r, initialValue: 0xA659_59A6_0000_0000 | UInt64(mli), key: key)
                XCTAssertEqual(.bytes(good), openSSLWrap(Array(r.prefix(mli)), key, padded: true), "n \(n) mli \(mli)")
                XCTAssertEqual(laneUnwrap(good, key, padded: true), .bytes(Array(r.prefix(mli))))

                var bad: [[UInt8]] = []
                let badMLIs: [UInt64] = [0, UInt64(8 * (n - 1)), UInt64(8 * n + 1), UInt64(8 * n + 8), 0xFFFF_FFFF]
                for wrong in badMLIs where wrong != UInt64(mli) {
                    bad.append(try AESKeyWrapLanes.wrapWithInitialValue(r, initialValue: 0xA659_59A6_0000_0000 | wrong, key: key))
                }
                bad.append(try AESKeyWrapLanes.wrapWithInitialValue(r, initialValue: 0xA659_59A7_0000_0000 | UInt64(mli), key: key))
                bad.append(try AESKeyWrapLanes.wrapWithInitialValue(r, initialValue: 0xA6A6_A6A6_A6A6_A6A6, key: key))
                for p in mli..<(8 * n) {    // each padding byte non-zero in turn
                    var dirty = r
                    dirty[p] = UInt8.random(in: 1...255, using: &rng)
                    bad.append(try AESKeyWrapLanes.wrapWithInitialValue(dirty, initialValue: 0xA659_59A6_0000_0000 | UInt64(mli), key: key))
                }
                for c in bad {
                    XCTAssertEqual(openSSLUnwrap(c, key, padded: true), .error(.authenticationFailed), "n \(n) mli \(mli)")
                    XCTAssertEqual(laneUnwrap(c, key, padded: true), .error(.authenticationFailed), "n \(n) mli \(mli)")
                }
                // And all of them batched, with the good one among them.
                let outcomes = laneUnwrapBatch(bad + [good], key, padded: true)
                XCTAssertEqual(outcomes.last, .bytes(Array(r.prefix(mli))))
                XCTAssertEqual(Set(outcomes.dropLast().map(\.description)), [Outcome.error(.authenticationFailed).description])
                rejected += bad.count
                wipe(&r)
            }
        }
        // KW: the IV with each single bit flipped.
        let p = rng.bytes(24)
        for bit in 0..<64 {
            let c = try AESKeyWrapLanes.wrapWithInitialValue(p, initialValue: 0xA6A6_A6A6_A6A6_A6A6 ^ (1 << UInt64(bit)), key: key)
            XCTAssertEqual(openSSLUnwrap(c, key, padded: false), .error(.authenticationFailed))
            XCTAssertEqual(laneUnwrap(c, key, padded: false), .error(.authenticationFailed))
            rejected += 1
        }
        XCTAssertGreaterThan(rejected, 100)
    }

    // MARK: Size rules

    func testSizeRulesMatchTheOpenSSLPath() throws {
        let key = try WrappingKey.random()
        for padded in [false, true] {
            for count in [0, 1, 7, 8, 9, 15, 16, 17, 23, 24, 25, 31, 32] {
                let x = [UInt8](repeating: 0x5A, count: count)
                XCTAssertEqual(laneWrap(x, key, padded: padded).errorCode, openSSLWrap(x, key, padded: padded).errorCode, "wrap \(count)")
                XCTAssertEqual(laneUnwrap(x, key, padded: padded).errorCode, openSSLUnwrap(x, key, padded: padded).errorCode, "unwrap \(count)")
            }
            // In a batch, a mis-sized lane fails alone on unwrap, and wrap refuses the batch.
            let good = try laneWrapBatch([[UInt8](repeating: 1, count: 16), [UInt8](repeating: 2, count: 40)], key, padded: padded)
            let outcomes = laneUnwrapBatch([good[0], [], good[1], [UInt8](repeating: 0, count: 12)], key, padded: padded)
            XCTAssertEqual(outcomes, [.bytes([UInt8](repeating: 1, count: 16)), .error(.invalidInputSize),
                                      .bytes([UInt8](repeating: 2, count: 40)), .error(.invalidInputSize)])
            XCTAssertThrowsError(try laneWrapBatch([[UInt8](repeating: 1, count: 16), []], key, padded: padded)) {
                XCTAssertEqual(($0 as? CryptoError)?.code, .invalidInputSize)
            }
            XCTAssertEqual(try laneWrapBatch([], key, padded: padded), [])
            XCTAssertEqual(laneUnwrapBatch([], key, padded: padded), [])
        }
    }

    /// A batch of only KWP single-block lanes (1...8 bytes: one AES block each, no W).
    func testBatchOfSingleBlockLanesOnly() throws {
        let key = try WrappingKey.random(byteCount: 24)
        let ps = (1...8).map { [UInt8](repeating: UInt8($0), count: $0) }
        let out = try AESKeyWrapLanes.wrapPadded(ps, key: key)
        XCTAssertEqual(out.map { Outcome.bytes($0) }, ps.map { openSSLWrap($0, key, padded: true) })
        XCTAssertEqual(out.map(\.count), [UInt8](repeating: 16, count: 8).map(Int.init))
        XCTAssertEqual(laneUnwrapBatch(out, key, padded: true), ps.map { .bytes($0) })
    }

    /// Typed keys of every AES role go through the lanes (the archive's EBK is one).
    func testEBKChunksRoundTrip() throws {
        let ebk = try EphemeralBackupKey.random()
        var rng = SplitMix64(seed: 7)
        let chunks = (0..<5).map { _ in rng.bytes(4096 + 37) } + [rng.bytes(100)]
        let wrapped = try AESKeyWrapLanes.wrapPadded(chunks, key: ebk)
        for (j, c) in wrapped.enumerated() {
            XCTAssertEqual(c, try AESKeyWrap.wrapPadded(chunks[j], key: ebk))
        }
        let back = AESKeyWrapLanes.unwrapPadded(wrapped, key: ebk).map(Outcome.init)
        XCTAssertEqual(back, chunks.map { .bytes($0) })
    }
}

extension KeyWrapLanesTests.Outcome {
    var errorCode: CryptoError.Code? {
        if case .error(let c) = self { return c }
        return nil
    }
}

/// A small seeded generator (SplitMix64), so a failing random case can be replayed.
struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    mutating func bytes(_ count: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var i = 0
        while i < count {
            var v = next()
            for _ in 0..<min(8, count - i) { out[i] = UInt8(truncatingIfNeeded: v); v >>= 8; i += 1 }
        }
        return out
    }
}
