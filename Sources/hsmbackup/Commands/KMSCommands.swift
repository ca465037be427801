import ArgumentParser
import BackupCrypto
import ByteCoding
import Envelope
import Foundation

/// `hsmbackup kms create-key|rotate|disable|enable|list|export`: the embedded local KMS.
struct KMSCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kms",
        abstract: "Manage the local KMS keystore (named AES-256 keys with versions).",
        subcommands: [KMSCreateKeyCommand.self, KMSRotateCommand.self, KMSDisableCommand.self, KMSEnableCommand.self,
                      KMSListCommand.self, KMSExportCommand.self])
}

struct KMSDirOption: ParsableArguments {
    @Option(name: .customLong("kms-dir"), help: "The keystore directory (default: <home>/kms).") var kmsDir: String?
    var kms: LocalKMS { LocalKMS(directory: kmsDir ?? Home.kms) }
}

struct KeyInfoJSON: Encodable {
    let name: String
    let created: String
    let primaryVersion: Int?
    let versions: [LocalKMS.VersionInfo]
    let edkProviderId: String
    init(_ i: LocalKMS.KeyInfo) {
        name = i.name; created = i.created; primaryVersion = i.primaryVersion; versions = i.versions
        edkProviderId = LocalKMS.namespace
    }
    /// Prints the key as JSON, or as one line after `verb`.
    func show(json: Bool, verb: String) throws {
        if json { try JSONOutput.print(self) } else { try Out.line("\(verb) \(text)") }
    }

    var text: String {
        let vs = versions.map { "v\($0.version)\($0.enabled ? "" : " (disabled)")" }.joined(separator: ", ")
        return "\(name)  primary v\(primaryVersion.map(String.init) ?? "-")  versions: \(vs)  created \(created)"
    }
}

struct KMSCreateKeyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "create-key", abstract: "Create a key (version 1).")
    @Argument var name: String
    @OptionGroup var dir: KMSDirOption
    @Flag(name: .customLong("json")) var json = false
    func run() throws {
        try CLIEnvelope.run {
            try KeyInfoJSON(try dir.kms.createKey(name)).show(json: json, verb: "created")
        }
    }
}

struct KMSRotateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "rotate", abstract: "Add a new version; it becomes the primary one.")
    @Argument var name: String
    @OptionGroup var dir: KMSDirOption
    @Flag(name: .customLong("json")) var json = false
    func run() throws {
        try CLIEnvelope.run {
            try KeyInfoJSON(try dir.kms.rotate(name)).show(json: json, verb: "rotated")
        }
    }
}

struct KMSDisableCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "disable", abstract: "Disable one version (it neither encrypts nor decrypts).")
    @Argument var name: String
    @Option(name: .customLong("version")) var version: Int
    @OptionGroup var dir: KMSDirOption
    func run() throws {
        try CLIEnvelope.run { try Out.line("disabled " + KeyInfoJSON(try dir.kms.setEnabled(name, version: version, enabled: false)).text) }
    }
}

struct KMSEnableCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "enable", abstract: "Enable a disabled version again.")
    @Argument var name: String
    @Option(name: .customLong("version")) var version: Int
    @OptionGroup var dir: KMSDirOption
    func run() throws {
        try CLIEnvelope.run { try Out.line("enabled " + KeyInfoJSON(try dir.kms.setEnabled(name, version: version, enabled: true)).text) }
    }
}

struct KMSListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List keys and versions.")
    @OptionGroup var dir: KMSDirOption
    @Flag(name: .customLong("json")) var json = false
    func run() throws {
        try CLIEnvelope.run {
            let keys = try dir.kms.listKeys().map(KeyInfoJSON.init)
            if json { try JSONOutput.print(keys) } else { try keys.forEach { try Out.line($0.text) } }
        }
    }
}

struct KMSExportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export", abstract: "Print a key version's SECRET bytes (hex) for escrow or SDK interop.",
        discussion: "Anyone holding the printed bytes can open every envelope made with that key version.")
    @Argument var name: String
    @Option(name: .customLong("version"), help: "The version (default: the primary one).") var version: Int?
    @OptionGroup var dir: KMSDirOption
    @Flag(name: .customLong("json")) var json = false

    struct Export: Encodable { let name: String; let version: Int; let keyHex: String; let keyNamespace: String; let keyName: String }

    func run() throws {
        try CLIEnvelope.run {
            let (v, key) = try dir.kms.exportKey(name, version: version)
            Err.line("hsmbackup: WARNING: printing the SECRET bytes of local KMS key \"\(name)\" version \(v).")
            Err.line("hsmbackup: WARNING: whoever holds them can decrypt every envelope wrapped with this version.")
            var bytes = key.secret.unsafeCopy()
            defer { wipe(&bytes) }
            let e = Export(name: name, version: v, keyHex: Hex.encode(bytes), keyNamespace: LocalKMS.namespace, keyName: "\(name)/v\(v)")
            if json { try JSONOutput.print(e) } else { try Out.line(e.keyHex) }
        }
    }
}
