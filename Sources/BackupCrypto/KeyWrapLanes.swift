import COpenSSL

// SP 800-38F KW (RFC 3394) and KWP (RFC 5649) over many independent inputs at once ("lanes").
//
// One wrap is serial: each of its 6·n steps encrypts A || R[i] and feeds the result to the next.
// Independent inputs are not: at every step, the one 16-byte block of every active lane is
// gathered into one contiguous buffer and goes through ONE OpenSSL AES-ECB call, so AES-NI works
// on many blocks at once instead of waiting on one. Only the mode's logic is here (the A and R
// registers, the t counter, KWP's AIV, MLI and padding, KWP's single-block case); the AES is
// OpenSSL's. The output is byte-identical to `AESKeyWrap` (OpenSSL's EVP wrap ciphers), and unwrap
// accepts and rejects exactly what it does; the tests check both on every vector and at random.
//
// Layout. Lanes with the same semiblock count n run in lockstep (same i, same t) and form a
// group; a group's R registers are stored interleaved, row i holding R[i] of each of its lanes,
// so one step reads and writes one contiguous row. Groups are ordered by n, longest first, and
// their blocks sit in that order in the block buffer: the lanes still running are always a
// prefix of it, and a group that has finished simply drops off the end. A batch whose R
// registers exceed `laneCacheBudgetBytes` runs as a few even sub-batches, to stay in L2.
//
// Each call owns its OpenSSL contexts and scratch, so calls may run on several threads at once.
// Scratch that held plaintext (R registers, the block buffer) is wiped before it is freed; an
// unwrapped lane's plaintext is copied out, into `SecureBytes`, only after its check passed.

/// AES key wrap over many inputs at once (see the comment above). The batch calls are what a
/// chunk-parallel archive writer or reader uses; the one-input calls have the same rules.
public enum AESKeyWrapLanes {
    /// The largest input of one lane: the same limit as `AESKeyWrap`.
    public static let maximumInputBytes = AESKeyWrap.maximumInputBytes

    // MARK: Batches

    /// KW-wraps every plaintext (each a multiple of 8 bytes, at least 16). Throws
    /// `.invalidInputSize` naming the first mis-sized lane before any work is done.
    public static func wrap<R: AESKeyRole>(_ plaintexts: [[UInt8]], key: SecretKey<R>) throws -> [[UInt8]] {
        for (lane, p) in plaintexts.enumerated() {
            if let e = sizeError(plaintextCount: p.count, padded: false, lane: lane) { throw e }
        }
        return try wrapChecked(plaintexts, key: key, padded: false)
    }

    /// KWP-wraps every plaintext (each 1 byte or more). Throws `.invalidInputSize` naming the
    /// first mis-sized lane before any work is done.
    public static func wrapPadded<R: AESKeyRole>(_ plaintexts: [[UInt8]], key: SecretKey<R>) throws -> [[UInt8]] {
        for (lane, p) in plaintexts.enumerated() {
            if let e = sizeError(plaintextCount: p.count, padded: true, lane: lane) { throw e }
        }
        return try wrapChecked(plaintexts, key: key, padded: true)
    }

    /// KW-unwraps every ciphertext; each lane has its own outcome, in input order: the plaintext
    /// in wiped memory, or `.invalidInputSize` (a multiple of 8 bytes, at least 24, is needed),
    /// `.authenticationFailed` (the integrity check value did not match; nothing of that lane
    /// is released) or, should OpenSSL fail, `.openSSL` for every lane not yet decided.
    public static func unwrap<R: AESKeyRole>(_ ciphertexts: [[UInt8]], key: SecretKey<R>) -> [Result<SecureBytes, CryptoError>] {
        unwrapBatch(ciphertexts, key: key, padded: false)
    }

    /// KWP-unwraps every ciphertext; each lane has its own outcome, in input order: the plaintext
    /// in wiped memory, or `.invalidInputSize` (a multiple of 8 bytes, at least 16, is needed),
    /// `.authenticationFailed` (AIV, length or padding did not check; nothing of that lane is
    /// released) or, should OpenSSL fail, `.openSSL` for every lane not yet decided.
    public static func unwrapPadded<R: AESKeyRole>(_ ciphertexts: [[UInt8]], key: SecretKey<R>) -> [Result<SecureBytes, CryptoError>] {
        unwrapBatch(ciphertexts, key: key, padded: true)
    }

    // MARK: One input (one lane; the same errors as AESKeyWrap)

    public static func wrap<R: AESKeyRole>(_ plaintext: [UInt8], key: SecretKey<R>) throws -> [UInt8] {
        if let e = sizeError(plaintextCount: plaintext.count, padded: false, lane: nil) { throw e }
        return try wrapChecked([plaintext], key: key, padded: false)[0]
    }

    public static func wrapPadded<R: AESKeyRole>(_ plaintext: [UInt8], key: SecretKey<R>) throws -> [UInt8] {
        if let e = sizeError(plaintextCount: plaintext.count, padded: true, lane: nil) { throw e }
        return try wrapChecked([plaintext], key: key, padded: true)[0]
    }

    public static func unwrap<R: AESKeyRole>(_ ciphertext: [UInt8], key: SecretKey<R>) throws -> SecureBytes {
        if let e = sizeError(ciphertextCount: ciphertext.count, padded: false, lane: nil) { throw e }
        return try unwrapBatch([ciphertext], key: key, padded: false)[0].get()
    }

    public static func unwrapPadded<R: AESKeyRole>(_ ciphertext: [UInt8], key: SecretKey<R>) throws -> SecureBytes {
        if let e = sizeError(ciphertextCount: ciphertext.count, padded: true, lane: nil) { throw e }
        return try unwrapBatch([ciphertext], key: key, padded: true)[0].get()
    }

    // MARK: Size rules (the same as AESKeyWrap's)

    private static func sizeError(plaintextCount n: Int, padded: Bool, lane: Int?) -> CryptoError? {
        let which = lane.map { " of lane \($0)" } ?? ""
        if padded {
            guard n >= 1, n <= maximumInputBytes else {
                return CryptoError(.invalidInputSize, "KWP plaintext\(which) must be 1 byte or more, got \(n)")
            }
        } else {
            guard n >= 16, n % 8 == 0, n <= maximumInputBytes else {
                return CryptoError(.invalidInputSize,
                                   "KW plaintext\(which) must be a multiple of 8 bytes and at least 16, got \(n)")
            }
        }
        return nil
    }

    private static func sizeError(ciphertextCount n: Int, padded: Bool, lane: Int?) -> CryptoError? {
        let which = lane.map { " of lane \($0)" } ?? ""
        let minimum = padded ? 16 : 24
        guard n >= minimum, n % 8 == 0, n <= maximumInputBytes else {
            return CryptoError(.invalidInputSize,
                               "\(padded ? "KWP" : "KW") ciphertext\(which) must be a multiple of 8 bytes and at least \(minimum), got \(n)")
        }
        return nil
    }

    private static func authenticationError(padded: Bool) -> CryptoError {
        CryptoError(.authenticationFailed,
                    padded ? "KWP unwrap failed: integrity check (AIV, length or padding) did not pass"
                           : "KW unwrap failed: integrity check value did not match")
    }

    // MARK: Constants

    /// KW's initial value, RFC 3394 section 2.2.3.1 (the same in either byte order).
    private static let kwIV: UInt64 = 0xA6A6_A6A6_A6A6_A6A6
    /// KWP's alternative initial value (high 32 bits of A), RFC 5649 section 3.
    private static let kwpAIV: UInt64 = 0xA659_59A6

    // MARK: Wrap

    private static func wrapChecked<R: AESKeyRole>(_ plaintexts: [[UInt8]], key: SecretKey<R>,
                                                   padded: Bool) throws -> [[UInt8]] {
        if plaintexts.isEmpty { return [] }
        let aes = try AESECB(key: key, encrypt: true)
        // n = semiblocks of the (padded) plaintext. KWP with n == 1 is one AES block, not W.
        let semiblocks = plaintexts.map { ($0.count + 7) / 8 }
        var single: [Int] = []
        var laned: [Int] = []
        for (lane, n) in semiblocks.enumerated() {
            if padded && n == 1 { single.append(lane) } else { laned.append(lane) }
        }
        var out = [[UInt8]](repeating: [], count: plaintexts.count)

        if !single.isEmpty {
            let blocks = Scratch(words: 2 * single.count)
            defer { blocks.wipe() }
            for (j, lane) in single.enumerated() {
                let p = plaintexts[lane]
                blocks.base[2 * j] = initialA(count: p.count, padded: true)
                p.withUnsafeBytes { src in
                    UnsafeMutableRawPointer(blocks.base + 2 * j + 1).copyMemory(from: src.baseAddress!, byteCount: src.count)
                }
            }
            try aes.apply(blocks.base, blocks: single.count)
            for (j, lane) in single.enumerated() {
                out[lane] = Array(UnsafeRawBufferPointer(start: blocks.base + 2 * j, count: 16))
            }
        }

        for part in subBatches(laned, semiblocks: semiblocks) {
            let plan = LanePlan(lanes: part, semiblocks: semiblocks)
            // Every word of both is written before it is read (scatter, initial A, step 0).
            let r = Scratch(words: plan.totalWords, zeroed: false)
            let buffer = Scratch(words: 2 * plan.laneCount, zeroed: false)
            defer { r.wipe(); buffer.wipe() }
            for g in plan.groups {
                for (k, lane) in g.lanes.enumerated() {
                    plaintexts[lane].withUnsafeBytes { src in
                        scatter(src, into: r.base + g.rOffset, lane: k, stride: g.lanes.count)
                    }
                    buffer.base[2 * (g.blockBase + k)] = initialA(count: plaintexts[lane].count, padded: padded)
                }
            }
            try runW(plan, r: r.base, buffer: buffer.base, aes: aes, encrypt: true)
            for g in plan.groups {
                let stride = g.lanes.count
                for (k, lane) in g.lanes.enumerated() {
                    let a = buffer.base[2 * (g.blockBase + k)]
                    out[lane] = [UInt8](unsafeUninitializedCapacity: 8 * (g.n + 1)) { dst, count in
                        let d = UnsafeMutableRawPointer(dst.baseAddress!)
                        d.storeBytes(of: a, as: UInt64.self)
                        var src = r.base + g.rOffset + k
                        for i in 1...g.n {
                            d.storeBytes(of: src.pointee, toByteOffset: 8 * i, as: UInt64.self)
                            src += stride
                        }
                        count = 8 * (g.n + 1)
                    }
                }
            }
        }
        return out
    }

    /// W (or, for one semiblock, one AES block) over `semiblocks` (a multiple of 8 bytes) with a
    /// chosen initial A, given as a number. Only for tests that craft ciphertexts whose A, length
    /// or padding is wrong in one particular way, to check that unwrap rejects them.
    static func wrapWithInitialValue<R: AESKeyRole>(_ semiblocks: [UInt8], initialValue: UInt64,
                                                    key: SecretKey<R>) throws -> [UInt8] {
        precondition(semiblocks.count >= 8 && semiblocks.count % 8 == 0)
        let aes = try AESECB(key: key, encrypt: true)
        let n = semiblocks.count / 8
        let plan = LanePlan(lanes: [0], semiblocks: [n])
        let r = Scratch(words: n)
        let buffer = Scratch(words: 2)
        defer { r.wipe(); buffer.wipe() }
        semiblocks.withUnsafeBytes { scatter($0, into: r.base, lane: 0, stride: 1) }
        buffer.base[0] = initialValue.bigEndian
        if n == 1 {
            buffer.base[1] = r.base[0]
            try aes.apply(buffer.base, blocks: 1)
            return Array(UnsafeRawBufferPointer(start: buffer.base, count: 16))
        }
        try runW(plan, r: r.base, buffer: buffer.base, aes: aes, encrypt: true)
        return Array(UnsafeRawBufferPointer(start: buffer.base, count: 8))
            + Array(UnsafeRawBufferPointer(start: r.base, count: 8 * n))
    }

    /// The R registers of the lanes run together are kept within about this many bytes, so that
    /// with the inputs and outputs they stay in a core's L2 cache: 16 payload chunks of 64 KiB
    /// (plus binding) fit. Larger batches run as consecutive sub-batches of even size; at 16
    /// lanes an ECB call is 256 bytes, past the point where OpenSSL's per-call cost dominates.
    static let laneCacheBudgetBytes = 5 << 18

    /// Consecutive runs of `lanes`, as few as keep each within `laneCacheBudgetBytes` (a lane
    /// larger than that runs alone), of about equal size: no short tail run.
    private static func subBatches(_ lanes: [Int], semiblocks: [Int]) -> [[Int]] {
        let total = lanes.reduce(0) { $0 + 8 * semiblocks[$1] }
        let count = max(1, (total + laneCacheBudgetBytes - 1) / laneCacheBudgetBytes)
        if lanes.isEmpty { return [] }
        if count == 1 { return [lanes] }
        let target = (total + count - 1) / count
        var parts: [[Int]] = []
        var current: [Int] = []
        var bytes = 0
        for lane in lanes {
            let b = 8 * semiblocks[lane]
            if !current.isEmpty && bytes + b > target && parts.count < count - 1 {
                parts.append(current)
                current = []
                bytes = 0
            }
            current.append(lane)
            bytes += b
        }
        if !current.isEmpty { parts.append(current) }
        return parts
    }

    /// A's initial value as it sits in memory (big-endian bytes).
    private static func initialA(count: Int, padded: Bool) -> UInt64 {
        padded ? ((kwpAIV << 32) | UInt64(count)).bigEndian : kwIV
    }

    /// Copies `src` into one lane of an interleaved R area, zero-padding its last semiblock.
    private static func scatter(_ src: UnsafeRawBufferPointer, into r: UnsafeMutablePointer<UInt64>,
                                lane k: Int, stride: Int) {
        let full = src.count / 8
        var dst = r + k
        for i in 0..<full {
            dst.pointee = src.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self)
            dst += stride
        }
        let rest = src.count - 8 * full
        if rest > 0 {
            var last: UInt64 = 0
            withUnsafeMutableBytes(of: &last) { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: src[(8 * full)...])) }
            dst.pointee = last
            withUnsafeMutableBytes(of: &last) { hsmb_cleanse($0.baseAddress, 8) }
        }
    }

    // MARK: Unwrap

    private static func unwrapBatch<R: AESKeyRole>(_ ciphertexts: [[UInt8]], key: SecretKey<R>,
                                                   padded: Bool) -> [Result<SecureBytes, CryptoError>] {
        var out = [Result<SecureBytes, CryptoError>?](repeating: nil, count: ciphertexts.count)
        var semiblocks = [Int](repeating: 0, count: ciphertexts.count)
        var single: [Int] = []
        var laned: [Int] = []
        for (lane, c) in ciphertexts.enumerated() {
            if let e = sizeError(ciphertextCount: c.count, padded: padded, lane: lane) {
                out[lane] = .failure(e)
                continue
            }
            let n = c.count / 8 - 1           // semiblocks of R (the padded plaintext)
            semiblocks[lane] = n
            if n == 1 { single.append(lane) } else { laned.append(lane) }
        }
        do {
            if !single.isEmpty || !laned.isEmpty {
                let aes = try AESECB(key: key, encrypt: false)

                if !single.isEmpty {       // only KWP gets here: KW needs n >= 2
                    let blocks = Scratch(words: 2 * single.count)
                    defer { blocks.wipe() }
                    for (j, lane) in single.enumerated() {
                        ciphertexts[lane].withUnsafeBytes { src in
                            UnsafeMutableRawPointer(blocks.base + 2 * j).copyMemory(from: src.baseAddress!, byteCount: 16)
                        }
                    }
                    try aes.apply(blocks.base, blocks: single.count)
                    for (j, lane) in single.enumerated() {
                        out[lane] = release(a: blocks.base[2 * j], r: blocks.base + 2 * j + 1, stride: 1, n: 1, padded: true)
                    }
                }

                for part in subBatches(laned, semiblocks: semiblocks) {
                    let plan = LanePlan(lanes: part, semiblocks: semiblocks)
                    let r = Scratch(words: plan.totalWords, zeroed: false)
                    let buffer = Scratch(words: 2 * plan.laneCount, zeroed: false)
                    defer { r.wipe(); buffer.wipe() }
                    for g in plan.groups {
                        for (k, lane) in g.lanes.enumerated() {
                            ciphertexts[lane].withUnsafeBytes { src in
                                buffer.base[2 * (g.blockBase + k)] = src.loadUnaligned(as: UInt64.self)
                                scatter(UnsafeRawBufferPointer(rebasing: src[8...]), into: r.base + g.rOffset,
                                        lane: k, stride: g.lanes.count)
                            }
                        }
                    }
                    try runW(plan, r: r.base, buffer: buffer.base, aes: aes, encrypt: false)
                    for g in plan.groups {
                        for (k, lane) in g.lanes.enumerated() {
                            out[lane] = release(a: buffer.base[2 * (g.blockBase + k)], r: r.base + g.rOffset + k,
                                                stride: g.lanes.count, n: g.n, padded: padded)
                        }
                    }
                }
            }
        } catch {
            let e = error as? CryptoError ?? CryptoError(.openSSL, "\(error)")
            for lane in out.indices where out[lane] == nil { out[lane] = .failure(e) }
        }
        return out.map { $0! }
    }

    /// Checks one unwrapped lane (A as in memory, R at `r` with `stride`) and, only if its
    /// integrity holds, copies its plaintext into wiped memory. The integrity values are
    /// compared without branching on where they differ.
    private static func release(a: UInt64, r: UnsafeMutablePointer<UInt64>, stride: Int, n: Int,
                                padded: Bool) -> Result<SecureBytes, CryptoError> {
        var length = 8 * n
        var bad: UInt64
        if padded {
            let aBE = UInt64(bigEndian: a)
            let mli = Int(aBE & 0xFFFF_FFFF)
            bad = (aBE >> 32) ^ kwpAIV
            // 8(n-1) < MLI <= 8n (not secret: the plaintext length is public).
            if mli <= 8 * (n - 1) || mli > 8 * n { bad |= 1 }
            // The padding (the last 8n - MLI bytes of the last semiblock) must be zero.
            let padBytes = UInt64(truncatingIfNeeded: 8 * n - mli) & 7
            let mask = (UInt64(1) &<< (8 &* padBytes)) &- 1
            bad |= UInt64(bigEndian: r[(n - 1) * stride]) & mask
            length = mli
        } else {
            bad = a ^ kwIV
        }
        guard bad == 0 else { return .failure(authenticationError(padded: padded)) }
        return .success(SecureBytes(count: length) { dst in
            let d = dst.baseAddress!
            var src = r
            var offset = 0
            while offset + 8 <= length {
                d.storeBytes(of: src.pointee, toByteOffset: offset, as: UInt64.self)
                src += stride
                offset += 8
            }
            if offset < length {
                var last = src.pointee
                withUnsafeBytes(of: &last) { d.advanced(by: offset).copyMemory(from: $0.baseAddress!, byteCount: length - offset) }
                withUnsafeMutableBytes(of: &last) { hsmb_cleanse($0.baseAddress, 8) }
            }
        })
    }

    // MARK: W and W^-1 over all lanes

    /// Runs W (encrypt) or W^-1 (decrypt) over every group of `plan`. On entry the buffer's
    /// first word of each block holds the lane's A (initial value, or C[0] to unwrap) and `r`
    /// its R registers; on return they hold the final A and R.
    ///
    /// Wrap, step s (0-based) of a lane with n semiblocks: i = s mod n, t = s + 1,
    ///   B = AES(A || R[i]); A = MSB(B) ^ t; R[i] = LSB(B).
    /// Unwrap, step s: i = n - 1 - (s mod n), t = 6n - s,
    ///   B = AES^-1((A ^ t) || R[i]); A = MSB(B); R[i] = LSB(B).
    /// After each ECB call one pass per group stores LSB(B) to R[i], applies the t of this step
    /// (wrap) or the next (unwrap) to A in place, and loads the next step's R.
    private static func runW(_ plan: LanePlan, r: UnsafeMutablePointer<UInt64>, buffer: UnsafeMutablePointer<UInt64>,
                             aes: AESECB, encrypt: Bool) throws {
        guard !plan.groups.isEmpty else { return }
        if plan.groups.count == plan.laneCount {
            try runWSingleLaneGroups(plan, r: r, buffer: buffer, aes: aes, encrypt: encrypt)
            return
        }
        // Plain per-group state for the hot loop: no arrays, no division.
        let gs = UnsafeMutableBufferPointer<GroupCursor>.allocate(capacity: plan.groups.count)
        defer { gs.deallocate() }
        for (j, g) in plan.groups.enumerated() {
            let cursor = GroupCursor(n: g.n, lanes: g.lanes.count, r: r + g.rOffset, blocks: buffer + 2 * g.blockBase,
                                     i: encrypt ? 0 : g.n - 1)
            gs.initializeElement(at: j, to: cursor)
            // Prepare step 0: A is already in place; unwrap applies t = 6n to it.
            let tBE = encrypt ? 0 : UInt64(6 * g.n).bigEndian
            let row = cursor.r + cursor.i * cursor.lanes
            for k in 0..<cursor.lanes {
                cursor.blocks[2 * k] ^= tBE
                cursor.blocks[2 * k + 1] = row[k]
            }
        }
        var activeGroups = gs.count
        var activeBlocks = plan.laneCount
        let totalSteps = 6 * gs[0].n
        for s in 0..<totalSteps {
            try aes.apply(buffer, blocks: activeBlocks)
            for gi in 0..<activeGroups {
                let g = gs[gi]
                let L = g.lanes
                let current = g.r + g.i &* L
                let steps = 6 &* g.n
                if s &+ 1 < steps {
                    let ni: Int
                    let tBE: UInt64
                    if encrypt {
                        ni = g.i &+ 1 == g.n ? 0 : g.i &+ 1
                        tBE = UInt64(truncatingIfNeeded: s &+ 1).bigEndian
                    } else {
                        ni = g.i == 0 ? g.n &- 1 : g.i &- 1
                        tBE = UInt64(truncatingIfNeeded: steps &- s &- 1).bigEndian
                    }
                    gs[gi].i = ni
                    step(blocks: g.blocks, current: current, next: g.r + ni &* L, lanes: L, tBE: tBE)
                } else {
                    // This group's last step: store R, and (wrap) apply the last t to A.
                    let tBE = encrypt ? UInt64(truncatingIfNeeded: s &+ 1).bigEndian : 0
                    var b = g.blocks
                    for k in 0..<L {
                        current[k] = b[1]
                        b[0] ^= tBE
                        b += 2
                    }
                }
            }
            while activeGroups > 0 && 6 &* gs[activeGroups - 1].n <= s &+ 1 {
                activeGroups -= 1
                activeBlocks -= gs[activeGroups].lanes
            }
        }
    }

    /// `runW` for a batch of one-lane groups (LanePlan makes them when lengths mostly differ, as
    /// an archive's compressed chunks do): the per-group bookkeeping above would run once per
    /// lane per step (about 40 instructions each). Here each lane's state is plain arrays and a
    /// lane-step is a store, a load, an XOR and the index update. Same steps, same results.
    private static func runWSingleLaneGroups(_ plan: LanePlan, r: UnsafeMutablePointer<UInt64>,
                                             buffer: UnsafeMutablePointer<UInt64>, aes: AESECB, encrypt: Bool) throws {
        let count = plan.laneCount
        // Per lane: R (contiguous, n words), n, the 6n steps and the current R index.
        let rows = UnsafeMutablePointer<UnsafeMutablePointer<UInt64>>.allocate(capacity: count)
        let ns = UnsafeMutablePointer<Int>.allocate(capacity: 3 * count)
        let steps = ns + count, index = ns + 2 * count
        defer { rows.deallocate(); ns.deallocate() }
        for (k, g) in plan.groups.enumerated() {
            rows[k] = r + g.rOffset
            ns[k] = g.n
            steps[k] = 6 * g.n
            index[k] = encrypt ? 0 : g.n - 1
            // Step 0: A is in place; unwrap applies t = 6n to it.
            if !encrypt { buffer[2 * k] ^= UInt64(6 * g.n).bigEndian }
            buffer[2 * k + 1] = rows[k][index[k]]
        }
        var active = count
        let totalSteps = steps[0]
        for s in 0..<totalSteps {
            try aes.apply(buffer, blocks: active)
            var b = buffer
            if encrypt {
                let tBE = UInt64(truncatingIfNeeded: s &+ 1).bigEndian
                for k in 0..<active {
                    let row = rows[k], i = index[k]
                    row[i] = b[1]
                    b[0] ^= tBE
                    let ni = i &+ 1 == ns[k] ? 0 : i &+ 1
                    index[k] = ni
                    b[1] = row[ni]           // the next step's R (harmless after the last)
                    b += 2
                }
            } else {
                for k in 0..<active {
                    let row = rows[k], i = index[k]
                    row[i] = b[1]
                    // The next step's t; after the last step (steps - s - 1 == 0) A stays as is.
                    b[0] ^= UInt64(truncatingIfNeeded: steps[k] &- s &- 1).bigEndian
                    let ni = i == 0 ? ns[k] &- 1 : i &- 1
                    index[k] = ni
                    b[1] = row[ni]
                    b += 2
                }
            }
            // Lanes are ordered longest first: those that just took their last step are a suffix.
            while active > 0 && steps[active - 1] <= s &+ 1 { active -= 1 }
        }
    }

    /// One pass over a group after an ECB call: R[i] = LSB(B), A ^= t, load the next R.
    @inline(__always)
    private static func step(blocks: UnsafeMutablePointer<UInt64>, current: UnsafeMutablePointer<UInt64>,
                             next: UnsafeMutablePointer<UInt64>, lanes: Int, tBE: UInt64) {
        var b = blocks, c = current, x = next
        var k = lanes
        while k >= 2 {
            let lo0 = b[1], lo1 = b[3]
            let n0 = x[0], n1 = x[1]
            c[0] = lo0
            c[1] = lo1
            b[0] ^= tBE
            b[2] ^= tBE
            b[1] = n0
            b[3] = n1
            b += 4; c += 2; x += 2; k &-= 2
        }
        if k == 1 {
            c[0] = b[1]
            b[0] ^= tBE
            b[1] = x[0]
        }
    }
}

/// Where one group stands in `runW`.
private struct GroupCursor {
    let n: Int                              // semiblocks of R
    let lanes: Int                          // lanes in the group
    let r: UnsafeMutablePointer<UInt64>     // row 0 of the group's interleaved R
    let blocks: UnsafeMutablePointer<UInt64> // the group's first block in the buffer
    var i: Int                              // the R row of the current step
}

/// How the lanes of a batch are laid out: grouped by semiblock count, longest first.
private struct LanePlan {
    struct Group {
        let n: Int            // semiblocks of R
        var lanes: [Int]      // input indices, in input order
        var rOffset = 0       // first word of this group's interleaved R area
        var blockBase = 0     // first block of this group in the block buffer
    }
    let groups: [Group]
    let laneCount: Int
    let totalWords: Int

    init(lanes: [Int], semiblocks: [Int]) {
        var byN: [Int: [Int]] = [:]
        for lane in lanes { byN[semiblocks[lane], default: []].append(lane) }
        var groups = byN.map { Group(n: $0.key, lanes: $0.value) }.sorted { $0.n > $1.n }
        // Lockstep pays per group: when groups average under three lanes (compressed chunks
        // differ in length by a few semiblocks), every lane becomes its own group and runW
        // takes its per-lane loop. A batch of mostly equal lengths keeps its groups.
        if groups.count * 3 > lanes.count {
            groups = groups.flatMap { g in g.lanes.map { Group(n: g.n, lanes: [$0]) } }
        }
        var words = 0, blocks = 0
        for j in groups.indices {
            groups[j].rOffset = words
            groups[j].blockBase = blocks
            words += groups[j].n * groups[j].lanes.count
            blocks += groups[j].lanes.count
        }
        self.groups = groups
        laneCount = blocks
        totalWords = words
    }
}

/// A word buffer for intermediate values (which may be plaintext); wiped by `wipe()`. Zeroed
/// unless the caller writes every word before reading any (`zeroed: false`).
private struct Scratch {
    let base: UnsafeMutablePointer<UInt64>
    let words: Int

    init(words: Int, zeroed: Bool = true) {
        self.words = max(words, 1)
        base = UnsafeMutablePointer<UInt64>.allocate(capacity: self.words)
        if zeroed { base.initialize(repeating: 0, count: self.words) }
    }

    func wipe() {
        hsmb_cleanse(base, 8 * words)
        base.deallocate()
    }
}

/// AES-ECB without padding on one EVP_CIPHER_CTX, applied in place to whole 16-byte blocks.
final class AESECB {
    private let context: CipherContext
    private let encrypt: Bool
    /// Bytes per EVP call (an Int32 length; a batch larger than this is split).
    private static let maximumCallBytes = 1 << 26

    init<R: AESKeyRole>(key: SecretKey<R>, encrypt: Bool) throws {
        let cipher: OpaquePointer?
        switch key.byteCount {
        case 16: cipher = EVP_aes_128_ecb()
        case 24: cipher = EVP_aes_192_ecb()
        case 32: cipher = EVP_aes_256_ecb()
        default: throw CryptoError(.invalidKeySize, "AES key wrap takes 16, 24 or 32-byte keys, got \(key.byteCount)")
        }
        guard let cipher else { throw CryptoError.openSSL("EVP_aes_*_ecb") }
        context = try CipherContext()
        self.encrypt = encrypt
        let ok = key.withUnsafeBytes { k in
            EVP_CipherInit_ex(context.ctx, cipher, nil, k.baseAddress!.assumingMemoryBound(to: UInt8.self),
                              nil, encrypt ? 1 : 0)
        }
        guard ok == 1 else { throw CryptoError.openSSL("EVP_CipherInit_ex(ecb)") }
        guard EVP_CIPHER_CTX_set_padding(context.ctx, 0) == 1 else {
            throw CryptoError.openSSL("EVP_CIPHER_CTX_set_padding")
        }
    }

    /// Encrypts or decrypts `blocks` 16-byte blocks at `words` in place.
    @inline(__always)
    func apply(_ words: UnsafeMutablePointer<UInt64>, blocks: Int) throws {
        let p = UnsafeMutableRawPointer(words).assumingMemoryBound(to: UInt8.self)
        let total = 16 &* blocks
        if total <= Self.maximumCallBytes {
            try call(p, count: total)
            return
        }
        var offset = 0
        while offset < total {
            let count = min(total - offset, Self.maximumCallBytes)
            try call(p + offset, count: count)
            offset += count
        }
    }

    @inline(__always)
    private func call(_ p: UnsafeMutablePointer<UInt8>, count: Int) throws {
        var outLen: Int32 = 0
        let inLen = Int32(truncatingIfNeeded: count)     // count <= maximumCallBytes
        let ok = encrypt
            ? EVP_EncryptUpdate(context.ctx, p, &outLen, p, inLen)
            : EVP_DecryptUpdate(context.ctx, p, &outLen, p, inLen)
        guard ok == 1, outLen == inLen else {
            throw CryptoError.openSSL(encrypt ? "EVP_EncryptUpdate(ecb)" : "EVP_DecryptUpdate(ecb)")
        }
    }
}
