/// The attacker's side of issue 12, for the regression test: GF(2^128) in GCM's bit order,
/// polynomials over it, and the recovery of GCM's hash key H from two tags made under one
/// (key, IV) pair. Test code only: it never touches a key, only message bytes.
///
/// Two tags under the same key and IV share the mask E_K(J0), so their sum is a polynomial in H
/// whose coefficients are the blocks of the two inputs (NIST SP 800-38D §6.4; Joux, "Authentication
/// failures in NIST version of GCM", 2006). Its roots, found with the gcd against x^(2^128) − x
/// and Cantor–Zassenhaus splitting, are the candidates for H.

/// An element of GF(2^128) as GCM defines it: byte 0's most significant bit is the coefficient of
/// x^0; reduction by x^128 + x^7 + x^2 + x + 1.
struct GF128: Equatable {
    var hi: UInt64
    var lo: UInt64

    static let zero = GF128(hi: 0, lo: 0)
    static let one = GF128(hi: 1 << 63, lo: 0)

    init(hi: UInt64, lo: UInt64) { self.hi = hi; self.lo = lo }

    /// A 16-byte block (shorter input is zero-padded, as GHASH pads).
    init<C: Collection>(block: C) where C.Element == UInt8 {
        var b = [UInt8](block)
        precondition(b.count <= 16)
        b += [UInt8](repeating: 0, count: 16 - b.count)
        hi = b[0..<8].reduce(0) { $0 << 8 | UInt64($1) }
        lo = b[8..<16].reduce(0) { $0 << 8 | UInt64($1) }
    }

    var bytes: [UInt8] {
        (0..<8).map { UInt8(truncatingIfNeeded: hi >> (56 - 8 * $0)) } + (0..<8).map { UInt8(truncatingIfNeeded: lo >> (56 - 8 * $0)) }
    }

    static func + (a: GF128, b: GF128) -> GF128 { GF128(hi: a.hi ^ b.hi, lo: a.lo ^ b.lo) }

    /// SP 800-38D Algorithm 1.
    static func * (a: GF128, b: GF128) -> GF128 {
        var z = GF128.zero
        var v = b
        for i in 0..<128 {
            let bit = i < 64 ? (a.hi >> (63 - UInt64(i))) & 1 : (a.lo >> (127 - UInt64(i))) & 1
            if bit == 1 { z = z + v }
            let carry = v.lo & 1
            v.lo = (v.lo >> 1) | (v.hi << 63)
            v.hi >>= 1
            if carry == 1 { v.hi ^= 0xE1 << 56 }
        }
        return z
    }

    /// a^(2^128 − 2).
    var inverse: GF128 {
        precondition(self != .zero)
        var result = GF128.one
        var base = self
        // 2^128 − 2 = 0b111…110: every bit but the lowest.
        for i in 0..<128 {
            if i > 0 { result = result * base }
            base = base * base
        }
        return result
    }

    static func random() -> GF128 {
        var g = SystemRandomNumberGenerator()
        return GF128(hi: g.next(), lo: g.next())
    }
}

/// GHASH over AAD and ciphertext: the padded blocks of each, then the length block, Horner's rule.
func ghash(h: GF128, aad: [UInt8], ciphertext: [UInt8]) -> GF128 {
    var y = GF128.zero
    for block in ghashBlocks(aad: aad, ciphertext: ciphertext) { y = (y + block) * h }
    return y
}

func ghashBlocks(aad: [UInt8], ciphertext: [UInt8]) -> [GF128] {
    var blocks: [GF128] = []
    for data in [aad, ciphertext] {
        var i = 0
        while i < data.count {
            blocks.append(GF128(block: data[i..<min(i + 16, data.count)]))
            i += 16
        }
    }
    blocks.append(GF128(hi: UInt64(aad.count) * 8, lo: UInt64(ciphertext.count) * 8))
    return blocks
}

/// A polynomial over GF(2^128), coefficients from x^0 up, no leading zeros.
struct GFPoly: Equatable {
    var c: [GF128]

    init(_ c: [GF128]) {
        self.c = c
        while let last = self.c.last, last == .zero { self.c.removeLast() }
    }

    var degree: Int { c.count - 1 }
    var isZero: Bool { c.isEmpty }
    static let x = GFPoly([.zero, .one])

    static func + (a: GFPoly, b: GFPoly) -> GFPoly {
        var r = [GF128](repeating: .zero, count: max(a.c.count, b.c.count))
        for (i, v) in a.c.enumerated() { r[i] = r[i] + v }
        for (i, v) in b.c.enumerated() { r[i] = r[i] + v }
        return GFPoly(r)
    }

    static func * (a: GFPoly, b: GFPoly) -> GFPoly {
        guard !a.isZero, !b.isZero else { return GFPoly([]) }
        var r = [GF128](repeating: .zero, count: a.c.count + b.c.count - 1)
        for (i, u) in a.c.enumerated() where u != .zero {
            for (j, v) in b.c.enumerated() { r[i + j] = r[i + j] + u * v }
        }
        return GFPoly(r)
    }

    func scaled(_ k: GF128) -> GFPoly { GFPoly(c.map { $0 * k }) }
    var monic: GFPoly { isZero ? self : scaled(c.last!.inverse) }

    /// Quotient and remainder by a non-zero `d`.
    func divided(by d: GFPoly) -> (q: GFPoly, r: GFPoly) {
        precondition(!d.isZero)
        var r = c
        let inv = d.c.last!.inverse
        var q = [GF128](repeating: .zero, count: max(c.count - d.c.count + 1, 0))
        var top = r.count - 1
        while top >= d.degree {
            let k = r[top] * inv
            if k != .zero {
                q[top - d.degree] = k
                for (j, v) in d.c.enumerated() { r[top - d.degree + j] = r[top - d.degree + j] + k * v }
            }
            top -= 1
        }
        return (GFPoly(q), GFPoly(r))
    }

    func mod(_ d: GFPoly) -> GFPoly { divided(by: d).r }

    static func gcd(_ a: GFPoly, _ b: GFPoly) -> GFPoly {
        var (u, v) = (a, b)
        while !v.isZero { (u, v) = (v, u.mod(v)) }
        return u.monic
    }

    /// The value at `h` (Horner).
    func evaluate(_ h: GF128) -> GF128 { c.reversed().reduce(GF128.zero) { $0 * h + $1 } }

    /// Every distinct root in GF(2^128).
    var roots: [GF128] {
        guard degree >= 1 else { return [] }
        // x^(2^128) mod f by 128 squarings; gcd(f, x^(2^128) − x) is the product of (x − r).
        var t = GFPoly.x
        for _ in 0..<128 { t = (t * t).mod(self) }
        return GFPoly.gcd(self, t + GFPoly.x).splitRoots()
    }

    /// Roots of a monic product of distinct linear factors (Cantor–Zassenhaus with the trace map).
    private func splitRoots() -> [GF128] {
        if degree < 1 { return [] }
        if degree == 1 { return [c[0] * c[1].inverse] }
        while true {
            var s = GFPoly([.zero, .random()]).mod(self)
            var trace = s
            for _ in 1..<128 {
                s = (s * s).mod(self)
                trace = trace + s
            }
            let g = GFPoly.gcd(self, trace)
            if g.degree >= 1 && g.degree < degree {
                return g.splitRoots() + divided(by: g).q.monic.splitRoots()
            }
        }
    }
}

/// The candidates for H given two (AAD, tag) pairs with empty plaintexts that an attacker
/// suspects were made under one key and IV (two versions of a message header).
func hashKeyCandidates(aad1: [UInt8], tag1: [UInt8], aad2: [UInt8], tag2: [UInt8]) -> [GF128] {
    // GHASH(A) = Σ X_i · H^(m+1−i): the block list reversed is the coefficient list from H^1 up.
    func poly(_ aad: [UInt8]) -> GFPoly { GFPoly([.zero] + ghashBlocks(aad: aad, ciphertext: []).reversed()) }
    let f = poly(aad1) + poly(aad2) + GFPoly([GF128(block: tag1) + GF128(block: tag2)])
    return f.roots
}
