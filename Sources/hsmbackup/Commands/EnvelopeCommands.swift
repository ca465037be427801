import ArgumentParser
import BackupCrypto
import ByteCoding
import Envelope
import Foundation

/// `hsmbackup envelope encrypt|decrypt|inspect`: the outer envelope (AWS Encryption SDK message
/// format v2) on any file. Thin: the work is in the Envelope module.
struct EnvelopeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "envelope",
        abstract: "Encrypt, decrypt and inspect AWS Encryption SDK (v2) messages.",
        discussion: "Keys: --kms-key NAME (the local KMS under the home directory) and/or --raw-aes-key SOURCE "
            + "--key-namespace NS --key-name NAME (the SDK's Raw AES keyring), where SOURCE is file:PATH, fd:N or env:VAR "
            + "holding the key in hex: never the key itself, which every local user could read on the command line. "
            + "Every key given adds one EDK. To decrypt, the keys named are the only ones tried; with none named, every "
            + "local KMS key is.",
        subcommands: [EnvelopeEncryptCommand.self, EnvelopeDecryptCommand.self, EnvelopeInspectCommand.self,
                      EnvelopeRewrapCommand.self])
}

/// Key options shared by encrypt and decrypt.
struct EnvelopeKeyOptions: ParsableArguments {
    @Option(name: .customLong("kms-key"), help: "A local KMS key name, or an AWS KMS key ARN, alias ARN or alias/NAME (repeat for several EDKs; decrypt needs the key ARN).")
    var kmsKeys: [String] = []

    @Option(name: .customLong("kms-dir"), help: "The local KMS keystore (default: <home>/kms).")
    var kmsDir: String?

    @Option(name: .customLong("raw-aes-key"), help: ArgumentHelp(
        "A raw AES wrapping key (16, 24 or 32 bytes, in hex), read from file:PATH, fd:N or env:VAR (repeatable).",
        discussion: "Never the key itself: a command line is readable by every local user.", valueName: "source"))
    var rawKeys: [String] = []

    @Option(name: .customLong("key-namespace"), help: "Key namespace (provider ID) for each --raw-aes-key.")
    var namespaces: [String] = []

    @Option(name: .customLong("key-name"), help: "Key name for each --raw-aes-key.")
    var names: [String] = []

    func validate() throws {
        guard rawKeys.count == namespaces.count, rawKeys.count == names.count else {
            throw ValidationError("give --key-namespace and --key-name once for each --raw-aes-key")
        }
        for spec in rawKeys { try RawKeySource.checkSyntax(spec) }
    }

    var kms: LocalKMS { LocalKMS(directory: kmsDir ?? Home.kms) }

    static func with(kmsKeys: [String], kmsDir: String?, rawKeys: [String], namespaces: [String], names: [String]) -> EnvelopeKeyOptions {
        var o = EnvelopeKeyOptions()
        o.kmsKeys = kmsKeys; o.kmsDir = kmsDir; o.rawKeys = rawKeys; o.namespaces = namespaces; o.names = names
        return o
    }

    /// The raw keys, read from their sources.
    func rawKeyrings() throws -> [Keyring] {
        try zip(rawKeys, zip(namespaces, names)).map { source, nn in
            try RawAESKeyring(namespace: nn.0, name: nn.1, wrappingKey: try RawKeySource.read(source, option: "raw AES key"))
        }
    }

    /// Encryption: each named key adds an EDK.
    func encryptionKeyrings() throws -> [Keyring] {
        let rings = try kmsKeys.map { try keyring(forKMSKey: $0) } + rawKeyrings()
        guard !rings.isEmpty else { throw ValidationError("name at least one key: --kms-key or --raw-aes-key") }
        return rings
    }

    /// Decryption: the named keys and only those; with no key named, every key of the local
    /// keystore. A local key that holds the very version an EDK names and does not open it makes
    /// `encryptedDataKeyAuthenticationFailed` (65: the header was altered), not `noUsableKey`.
    func decryptionKeyrings() throws -> [Keyring] {
        var rings = try kmsKeys.map { try keyring(forKMSKey: $0) } + rawKeyrings()
        if kmsKeys.isEmpty && rawKeys.isEmpty { rings.append(kms.decryptionKeyring) }
        return rings
    }
}

struct EnvelopeEncryptCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "encrypt", abstract: "Encrypt a file (or - for stdin).")

    @Argument(help: "Input file, or - for stdin.") var input: String
    @Option(name: [.short, .long], help: "Output file, or - for stdout. A file appears only when complete.") var output: String
    @OptionGroup var keys: EnvelopeKeyOptions
    @Option(name: .customLong("context"), help: "An encryption context pair k=v (repeatable).") var context: [String] = []
    @Option(name: .customLong("frame-length"), help: "Plaintext bytes per frame (spec/FORMAT.md §3.3.2; the SDK's encrypt wants a multiple of 128).")
    var frameLength: UInt32 = EnvelopeEncryptor.defaultFrameLength
    @Flag(name: .customLong("signed"), help: "Use suite 0x0578 (ECDSA P-384 footer) instead of 0x0478.") var signed = false
    @Flag(name: .customLong("json"), help: "Print a summary as JSON (not with -o -).") var json = false

    func run() throws {
        try CLIEnvelope.run {
            let ctx = try CLIEnvelope.parseContext(context)
            try CLIEnvelope.requireInput(input, keys: keys)
            try CLIEnvelope.requireOutput(output)
            let h = try EnvelopeFile.encrypt(input: input, output: output, keyrings: try keys.encryptionKeyrings(), context: ctx,
                                             suite: signed ? .committingSigned : .committing, frameLength: frameLength)
            if json && output != "-" { try JSONOutput.print(HeaderJSON(h, frameCount: nil, messageBytes: nil)) }
        }
    }
}

struct EnvelopeDecryptCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "decrypt", abstract: "Decrypt a message (or - for stdin).",
        discussion: "With no key option, every key of the local KMS is tried; when keys are named (--kms-key, --raw-aes-key), only those are. A failed decrypt leaves no output file. Input and output must be regular files (or -): a FIFO, device or directory is refused.")

    @Argument(help: "Input message, or - for stdin.") var input: String
    @Option(name: [.short, .long], help: "Output file, or - for stdout.") var output: String
    @OptionGroup var keys: EnvelopeKeyOptions
    @Flag(name: .customLong("allow-legacy"), help: "Also decode non-committing (message format v1) messages.") var allowLegacy = false
    @Option(name: .customLong("max-edks"), help: "Refuse messages with more EDKs than this.") var maxEDKs: Int = HeaderLimits().maximumEncryptedDataKeys
    @Flag(name: .customLong("json"), help: "Print a summary as JSON (not with -o -).") var json = false

    func run() throws {
        try CLIEnvelope.run {
            try CLIEnvelope.requireInput(input, keys: keys)
            try CLIEnvelope.requireOutput(output)
            var options = DecryptOptions(policy: allowLegacy ? .allowLegacyDecrypt : .requireCommitment)
            options.limits.maximumEncryptedDataKeys = maxEDKs
            let r = try EnvelopeFile.decrypt(input: input, output: output, keyrings: try keys.decryptionKeyrings(), options: options)
            if json && output != "-" {
                try JSONOutput.print(DecryptJSON(frames: r.frames, plaintextBytes: r.plaintextBytes, openedWith: r.openedWith,
                                                 suite: r.header.suite.idHex, messageId: Hex.encode(r.header.messageID)))
            }
        }
    }
}

struct EnvelopeInspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect", abstract: "Print a message's header with no key.",
        discussion: "Reads only the header bytes; --walk also checks the frame structure (no tags) and counts the frames.")

    @Argument(help: "Input message, or - for stdin.") var input: String
    @Flag(name: .customLong("json"), help: "Print JSON.") var json = false
    @Flag(name: .customLong("walk"), help: "Walk the frames (reads the whole message, no key needed).") var walk = false
    @Flag(name: .customLong("allow-legacy"), help: "Also read message format v1 headers.") var allowLegacy = false

    func run() throws {
        try CLIEnvelope.run {
            try CLIEnvelope.requireInput(input)
            let policy: CommitmentPolicy = allowLegacy ? .allowLegacyDecrypt : .requireCommitment
            let source = try EnvelopeFile.source(input)
            var frameCount: UInt32?
            var size: Int?
            let header: MessageHeader
            if walk {
                let s = try EnvelopeStructure.walk(source, policy: policy)
                header = s.header
                frameCount = s.frameCount
                size = s.messageBytes
            } else {
                header = try HeaderReader.read(from: source, policy: policy)
                if input != "-", let n = (try? FileManager.default.attributesOfItem(atPath: input))?[.size] as? NSNumber {
                    size = n.intValue
                    frameCount = EnvelopeStructure.frameCount(header: header, messageBytes: n.uint64Value)
                }
            }
            let j = HeaderJSON(header, frameCount: frameCount, messageBytes: size)
            if json { try JSONOutput.print(j) } else { try Out.lines(j.lines) }
        }
    }
}

struct EnvelopeRewrapCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rewrap", abstract: "Put a message under new keys: a new message with a fresh data key.",
        discussion: "Opens the message with the key options (none: every local KMS key) and writes a new message for the "
            + "--to-kms-key / --to-raw-aes-key keys, with a fresh data key and message ID: each frame is verified, "
            + "decrypted and re-encrypted as it streams. The file is replaced atomically once all of it verified; "
            + "the old keys no longer open it (spec §3.7). A symbolic link, or a file with other hard links, is refused, "
            + "since the file it names, or those names, would keep the message under the old keys.")

    @Argument(help: "The message file (rewritten in place).") var file: String
    @OptionGroup var keys: EnvelopeKeyOptions
    @Option(name: .customLong("to-kms-key"), help: "A KMS key for the new header: a local key name or an AWS KMS key ARN/alias (repeatable).") var toKMSKeys: [String] = []
    @Option(name: .customLong("to-raw-aes-key"), help: ArgumentHelp(
        "A raw AES key for the new header, read as hex from file:PATH, fd:N or env:VAR (repeatable).", valueName: "source"))
    var toRawKeys: [String] = []
    @Option(name: .customLong("to-key-namespace"), help: "Key namespace for each --to-raw-aes-key.") var toNamespaces: [String] = []
    @Option(name: .customLong("to-key-name"), help: "Key name for each --to-raw-aes-key.") var toNames: [String] = []
    @Flag(name: .customLong("json"), help: "Print the new header as JSON.") var json = false

    func validate() throws { for spec in toRawKeys { try RawKeySource.checkSyntax(spec) } }

    func run() throws {
        try CLIEnvelope.run {
            try CLIEnvelope.requireInput(file)
            guard file != "-" else { throw ValidationError("rewrap works on a file") }
            let to = EnvelopeKeyOptions.with(kmsKeys: toKMSKeys, kmsDir: keys.kmsDir, rawKeys: toRawKeys,
                                             namespaces: toNamespaces, names: toNames)
            try to.validate()
            let h = try Rewrap.rewrapFile(at: file, keyrings: try keys.decryptionKeyrings(), newKeyrings: try to.encryptionKeyrings())
            if json { try JSONOutput.print(HeaderJSON(h, frameCount: nil, messageBytes: nil)) } else {
                try Out.line("rewrapped \(file): " + h.encryptedDataKeys.map(\.keyDescription).joined(separator: ", "))
            }
        }
    }
}

// MARK: output shapes

struct HeaderJSON: Encodable {
    struct Suite: Encodable { let id: String; let name: String; let signed: Bool; let commits: Bool }
    struct Pair: Encodable { let key: String; let value: String }
    struct EDK: Encodable { let providerId: String; let keyName: String?; let providerInfoHex: String; let ciphertextBytes: Int; let describes: String }
    let formatVersion: Int
    let suite: Suite
    let messageId: String
    let context: [Pair]
    let encryptedDataKeys: [EDK]
    let contentType: String
    let frameLength: UInt32
    let headerBytes: Int
    let frameCount: UInt32?
    let messageBytes: Int?
    let archive: ArchiveMetadata?

    init(_ h: MessageHeader, frameCount: UInt32?, messageBytes: Int?) {
        formatVersion = Int(h.version)
        suite = Suite(id: h.suite.idHex, name: h.suite.name, signed: h.suite.signs, commits: h.suite.commits)
        messageId = Hex.encode(h.messageID)
        context = h.context.pairs.map { Pair(key: $0.keyString, value: $0.valueString) }
        encryptedDataKeys = h.encryptedDataKeys.map {
            EDK(providerId: $0.providerID, keyName: $0.rawAESKeyName, providerInfoHex: Hex.encode($0.providerInfo),
                ciphertextBytes: $0.ciphertext.count, describes: $0.keyDescription)
        }
        contentType = h.contentType == .framed ? "framed" : "non-framed"
        frameLength = h.frameLength
        headerBytes = h.byteCount
        self.frameCount = frameCount
        self.messageBytes = messageBytes
        archive = try? ArchiveMetadata(context: h.context)
    }

    /// The text form, one entry per line (each escaped when printed).
    var lines: [String] {
        var lines = [
            "format version: \(formatVersion)",
            "suite:          \(suite.id) \(suite.name)",
            "message id:     \(messageId)",
            "content:        \(contentType), frame length \(frameLength)",
            "frames:         \(frameCount.map(String.init) ?? "unknown (use --walk)")",
            "header bytes:   \(headerBytes)",
            "context (\(context.count)):",
        ]
        lines += context.map { "  \($0.key) = \($0.value)" }
        if let archive {
            lines.append("archive:        backup \(archive.backupID), cluster \(archive.clusterID), HSM \(archive.hsmID) "
                         + "(\(archive.manufacturer) \(archive.model) \(archive.firmware)), created \(archive.created)")
        }
        lines.append("encrypted data keys (\(encryptedDataKeys.count)):")
        lines += encryptedDataKeys.map { "  \($0.describes)" }
        return lines
    }
}

struct DecryptJSON: Encodable {
    let frames: UInt32
    let plaintextBytes: UInt64
    let openedWith: String
    let suite: String
    let messageId: String
}

// MARK: errors and helpers

enum CLIEnvelope {
    static func parseContext(_ items: [String]) throws -> EncryptionContext {
        let pairs = try items.map { item -> (String, String) in
            guard let eq = item.firstIndex(of: "=") else { throw ValidationError("--context takes k=v, got \"\(item)\"") }
            return (String(item[..<eq]), String(item[item.index(after: eq)...]))
        }
        return try EncryptionContext(pairs: pairs)
    }

    /// An input file must exist and be a regular file (a FIFO or device would hang or never end).
    /// Standard input (`-`) cannot also be where a raw key is read from (`fd:0`): the key would
    /// be read from the message's first bytes.
    static func requireInput(_ path: String, keys: EnvelopeKeyOptions? = nil) throws {
        if path != "-" { try PathArgument.input(path); return }
        if let keys, keys.rawKeys.contains(where: { $0 == "fd:0" }) {
            throw ValidationError("--raw-aes-key fd:0 reads standard input, which is the input (-) here: give the key as file:, env: or another fd:")
        }
    }

    /// An output file must be absent or a regular file (a device node would be replaced).
    static func requireOutput(_ path: String) throws {
        if path != "-" { try PathArgument.output(path) }
    }

    /// Runs a command body, turning envelope errors into documented exit codes.
    static func run(_ body: () throws -> Void) throws {
        do { try body() } catch let e as CLIExitMappable { throw CLIExit.translate(e) }
    }
}

extension EnvelopeError: CLIExitMappable {
    var cliExit: CLIExit {
        switch code {
        case .noUsableKey, .keyVersionDisabled: return .noUsableKey
        case .keyNotFound: return .notFound
        case .invalidArgument, .invalidKeyName, .keyExists: return .usage
        case .io: return .ioError
        default: return .verificationFailed
        }
    }

    var cliMessage: String {
        var s = description
        if code == .nonCommittingSuiteRefused { s += " (use --allow-legacy)" }
        return s
    }
}
