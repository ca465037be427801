import HSMArchive
import PayloadCodec

enum FuzzPayload {
    static let tarLimits = TarLimits(maximumEntries: 64, maximumEntryBytes: 1 << 20, maximumPathBytes: 256)

    /// Input byte 0 selects the reader:
    /// - even: the rest is a pax tar: `PaxTar.read` (what it returns writes and reads back to the
    ///   same entries) and `PayloadBundle.parse` over the declared counts of its entries;
    /// - odd: bytes 1-2 are the declared size, the rest a zstd stream fed to the bounded
    ///   decompressor in pieces (byte 3 is the piece size); it never produces more than declared,
    ///   and agrees with the one-shot decompressor.
    static func run(_ data: [UInt8]) {
        guard let mode = data.first else { return }
        if mode & 1 == 0 { tar(Array(data.dropFirst())) } else { zstd(Array(data.dropFirst())) }
    }

    static func tar(_ bytes: [UInt8]) {
        do {
            let entries = try PaxTar.read(bytes, limits: tarLimits)
            for (i, e) in entries.enumerated() {
                check(e.contents.count <= tarLimits.maximumEntryBytes, "entry over the limit accepted")
                do { try PaxTar.checkPath(e.path, index: i, limits: tarLimits) } catch { finding("read returned an unsafe path \(e.path)") }
            }
            check(Set(entries.map(\.path)).count == entries.count, "read returned duplicate paths")
            let again = try PaxTar.read(try PaxTar.write(entries, limits: tarLimits), limits: tarLimits)
            check(again == entries, "written entries do not read back the same")
        } catch { expectTyped(error, "PaxTar.read") }

        // The same tar as a payload, against the counts its own manifest would declare.
        let descriptor = PayloadDescriptor(payloadBytes: UInt64(bytes.count), userCount: 0, keyCount: 0, policyCount: 0)
        do {
            let bundle = try PayloadBundle.parse(tar: bytes, descriptor: descriptor)
            check(bundle.objects.isEmpty, "a bundle with objects matched zero counts")
        } catch { expectTyped(error, "PayloadBundle.parse") }
    }

    static func zstd(_ bytes: [UInt8]) {
        var input = FuzzInput(bytes)
        let expected = input.u16() * 4
        let pieceSize = 1 + Int(input.byte())
        let stream = input.rest()
        var streamed: Result<[UInt8], PayloadCodecError>
        do {
            let d = try BoundedDecompressor(expectedSize: expected)
            var at = 0
            while at < stream.count {
                let end = min(stream.count, at + pieceSize)
                try d.feed(Array(stream[at..<end]))
                check(d.producedBytes <= expected, "decompressor produced \(d.producedBytes) of \(expected) declared")
                at = end
            }
            let out = try d.finish()
            check(out.count == expected, "decompressor returned \(out.count) bytes, \(expected) declared")
            streamed = .success(out)
        } catch {
            guard let e = error as? PayloadCodecError else { finding("BoundedDecompressor threw \(type(of: error))") }
            streamed = .failure(e)
        }
        var oneShot: Result<[UInt8], PayloadCodecError>
        do { oneShot = .success(try Zstd.decompress(stream, expectedSize: expected)) } catch {
            guard let e = error as? PayloadCodecError else { finding("Zstd.decompress threw \(type(of: error))") }
            oneShot = .failure(e)
        }
        switch (streamed, oneShot) {
        case (.success(let a), .success(let b)): check(a == b, "streamed and one-shot decompression differ")
        case (.failure, .failure): break
        default: finding("streamed \(streamed) vs one-shot \(oneShot) decompression disagree")
        }
        if case .success(let out) = streamed {
            check(try! Zstd.decompress(try! Zstd.compress(out), expectedSize: out.count) == out, "zstd round trip")
        }
    }
}
