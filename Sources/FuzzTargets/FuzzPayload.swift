import CZstd
import HSMArchive
import PayloadCodec

enum FuzzPayload {
    static let tarLimits = TarLimits(maximumEntries: 64, maximumEntryBytes: 1 << 20, maximumPathBytes: 256)

    /// Input byte 0 selects the reader:
    /// - even: the rest is a pax tar: `PaxTar.read` (what it returns writes and reads back to the
    ///   same entries; the streaming reader fed in pieces agrees with it) and `PayloadBundle.parse`
    ///   over the declared counts of its entries;
    /// - odd: bytes 1-2 are the exact size, the rest one chunk's zstd data: the chunk decoder
    ///   never produces any other size, and whatever it accepts libzstd's plain one-shot decoder
    ///   decodes to the same bytes, as one frame with nothing after it.
    static func run(_ data: [UInt8]) {
        guard let mode = data.first else { return }
        if mode & 1 == 0 { tar(Array(data.dropFirst())) } else { zstd(Array(data.dropFirst())) }
    }

    static func tar(_ bytes: [UInt8]) {
        var whole: Result<[TarEntry], PayloadCodecError>
        do {
            let entries = try PaxTar.read(bytes, limits: tarLimits)
            for (i, e) in entries.enumerated() {
                check(e.contents.count <= tarLimits.maximumEntryBytes, "entry over the limit accepted")
                do { try PaxTar.checkPath(e.path, index: i, limits: tarLimits) } catch { finding("read returned an unsafe path \(e.path)") }
            }
            check(Set(entries.map(\.path)).count == entries.count, "read returned duplicate paths")
            let again = try PaxTar.read(try PaxTar.write(entries, limits: tarLimits), limits: tarLimits)
            check(again == entries, "written entries do not read back the same")
            whole = .success(entries)
        } catch {
            expectTyped(error, "PaxTar.read")
            guard let e = error as? PayloadCodecError else { finding("PaxTar.read threw \(type(of: error))") }
            whole = .failure(e)
        }

        // The streaming reader, fed in pieces whose size comes from the input's length.
        let collector = Collector()
        let reader = PaxTarReader(limits: tarLimits, visitor: collector)
        let step = 1 + bytes.count % 97
        var piecewise: Result<[TarEntry], PayloadCodecError>
        do {
            var at = 0
            while at < bytes.count {
                let end = min(bytes.count, at + step)
                try reader.feed(Array(bytes[at..<end]))
                at = end
            }
            try reader.finish()
            piecewise = .success(collector.entries)
        } catch {
            guard let e = error as? PayloadCodecError else { finding("PaxTarReader threw \(type(of: error))") }
            piecewise = .failure(e)
        }
        switch (whole, piecewise) {
        case (.success(let a), .success(let b)): check(a == b, "tar read whole and in pieces differ")
        case (.failure(let a), .failure(let b)): check(a.code == b.code, "tar fails differently whole (\(a.code)) and in pieces (\(b.code))")
        default: finding("tar read whole \(whole) vs in pieces \(piecewise)")
        }

        // The same tar as a payload, against the counts its own manifest would declare.
        guard !bytes.isEmpty else { return }
        let descriptor = PayloadDescriptor(payloadBytes: UInt64(bytes.count), userCount: 0, keyCount: 0, policyCount: 0)
        do {
            let bundle = try PayloadBundle.parse(tar: bytes, descriptor: descriptor)
            check(bundle.objects.isEmpty, "a bundle with objects matched zero counts")
        } catch { expectTyped(error, "PayloadBundle.parse") }
    }

    final class Collector: TarVisitor {
        var entries: [TarEntry] = []
        private var path = ""
        private var data: [UInt8] = []
        private var size = 0
        func beginEntry(index: Int, path: String, size: Int, offset: Int) throws {
            check(index == entries.count, "entry index \(index) after \(entries.count) entries")
            self.path = path
            self.size = size
            data = []
        }
        func entryData(_ bytes: UnsafeRawBufferPointer) throws {
            data.append(contentsOf: bytes)
            check(data.count <= size, "more data than the entry's size")
        }
        func endEntry() throws {
            check(data.count == size, "entry ended after \(data.count) of \(size) bytes")
            entries.append(TarEntry(path: path, contents: data))
        }
    }

    static func zstd(_ bytes: [UInt8]) {
        var input = FuzzInput(bytes)
        let exact = input.u16() * 4
        let frame = input.rest()
        let decoded: [UInt8]
        do { decoded = try Zstd.decompress(frame, exactSize: exact) } catch {
            guard error is PayloadCodecError else { finding("Zstd.decompress threw \(type(of: error))") }
            return
        }
        check(decoded.count == exact, "the chunk decoder returned \(decoded.count) bytes, \(exact) required")
        check(frame.prefix(4).elementsEqual(Zstd.frameMagic), "the chunk decoder accepted a frame without the standard magic")
        let plain = ZstdReference.decompress(frame, capacity: exact + 4096)
        check(plain == decoded, "libzstd's plain decoder disagrees with the chunk decoder")
        check(try! Zstd.decompress(try! Zstd.compress(decoded), exactSize: decoded.count) == decoded, "zstd round trip")
    }
}

/// The oracle: libzstd's plain one-shot decoder (no context, no checks of ours), which decodes
/// every frame in the input back to back. nil if it fails.
enum ZstdReference {
    static func decompress(_ input: [UInt8], capacity: Int) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: capacity)
        let n = input.withUnsafeBytes { i in out.withUnsafeMutableBytes { o in ZSTD_decompress(o.baseAddress, o.count, i.baseAddress, i.count) } }
        guard ZSTD_isError(n) == 0 else { return nil }
        return Array(out[..<n])
    }
}
