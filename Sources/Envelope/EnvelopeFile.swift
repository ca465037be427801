import BackupCrypto
import Foundation

/// File-level entry points used by the CLI (and usable by any program): `-` means stdin/stdout.
/// An output file is written through `AtomicFileSink` and appears only after the whole message
/// was produced or (for decryption) after the final frame and the signature verified; a failure
/// leaves no output file behind. On stdout, decryption writes each frame's plaintext once its tag
/// verified (the final frame of a signed message only after the signature verified).
public enum EnvelopeFile {
    /// Read-block size of both directions (the input is read into one reused buffer; decryption
    /// reads the message ahead in blocks of this size).
    public static let readChunkBytes = 1 << 20

    public static func source(_ path: String) throws -> ByteSource {
        path == "-" ? FileHandleSource(FileHandle.standardInput, name: "stdin") : try FileHandleSource(path: path)
    }

    @discardableResult
    public static func encrypt(input: String, output: String, keyrings: [Keyring], context: EncryptionContext,
                               suite: AlgorithmSuite = .committing,
                               frameLength: UInt32 = EnvelopeEncryptor.defaultFrameLength) throws -> MessageHeader {
        let src = try source(input)
        // Plaintext: a wiped buffer, reused for every block.
        let block = SecretBuffer(capacity: readChunkBytes)
        return try withOutput(output) { sink in
            let e = try EnvelopeEncryptor(sink: sink, keyrings: keyrings, context: context, suite: suite, frameLength: frameLength)
            try block.withUnsafeMutableBytes { b in
                while true {
                    let n = try src.read(into: b)
                    if n == 0 { break }
                    try e.write(UnsafeRawBufferPointer(rebasing: b[0..<n]))
                }
            }
            try e.finish()
            return e.header
        }
    }

    public struct DecryptResult: Sendable {
        public let header: MessageHeader
        public let frames: UInt32
        public let plaintextBytes: UInt64
        public let openedWith: String
    }

    @discardableResult
    public static func decrypt(input: String, output: String, keyrings: [Keyring],
                               options: DecryptOptions = DecryptOptions()) throws -> DecryptResult {
        let src = try source(input)
        var options = options
        if options.readAheadBytes == 0 { options.readAheadBytes = readChunkBytes }
        return try withOutput(output) { sink in
            let d = try EnvelopeDecryptor(source: src, keyrings: keyrings, options: options)
            var total: UInt64 = 0
            while let n = try d.withNextChunk({ chunk -> Int in
                if !chunk.isEmpty { try sink.write(chunk) }
                return chunk.count
            }) {
                total += UInt64(n)
            }
            return DecryptResult(header: d.header, frames: d.framesRead, plaintextBytes: total, openedWith: d.openedEDK.keyDescription)
        }
    }

    private static func withOutput<T>(_ output: String, _ body: (ByteSink) throws -> T) throws -> T {
        if output == "-" { return try body(FileHandleSink(FileHandle.standardOutput)) }
        let sink = try AtomicFileSink(path: output)
        do {
            let r = try body(sink)
            try sink.commit()
            return r
        } catch {
            sink.abort()
            throw error
        }
    }
}
