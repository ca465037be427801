import ArgumentParser
import BackupCrypto
import Foundation
import HSMArchive
import ByteCoding
import PKCS11HSM

// `hsmbackup pkcs11 …` and the `--pkcs11` options of backup create / restore / verify (issue 15).
// PINs come from HSMBACKUP_PKCS11_SO_PIN / HSMBACKUP_PKCS11_PIN or a prompt on the terminal,
// never from an argument.

extension PKCS11Error: CLIExitMappable {
    var cliExit: CLIExit {
        switch code {
        case .moduleLoadFailed, .functionMissing, .tokenNotFound: return .notFound
        case .loginFailed: return .noUsableKey
        case .notProvisioned, .checkValueMismatch, .wrongManufacturer: return .incompatibleHSM
        case .partialBackup, .malformedObject, .unsupportedVersion, .checkFailed: return .verificationFailed
        case .duplicateObject, .alreadyProvisioned, .invalidArgument: return .usage
        case .callFailed, .lockFailed, .spoolFailed, .tokenChanged: return .ioError
        case .tokenBusy: return .scheduleBusy // 75: another process holds the lock (EX_TEMPFAIL), as for schedule run
        }
    }
    var cliMessage: String {
        var s = description
        for o in skipped { s += "\n  not backed up: " + PKCS11CLI.describe(o) }
        return s
    }
}

enum PKCS11CLI {
    static func describe(_ o: SkippedObject) -> String {
        let code = o.rvName.map { " \($0) (0x\(String(o.rv!, radix: 16)))" } ?? ""
        return "\(o.objectClass)\(o.keyType.map { "/" + $0 } ?? "") label \"\(Printable.escape(o.label))\" id \(o.id.isEmpty ? "-" : o.id):\(code) \(o.reason)"
    }

    /// A PIN from the environment (read with getenv, copied once into wiped memory) or the terminal.
    static func pin(_ variable: String, prompt: String) throws -> SecureBytes {
        if let p = getenv(variable) {
            let n = strlen(p)
            let pin = SecureBytes(count: n) { out in out.copyMemory(from: UnsafeRawBufferPointer(start: p, count: n)) }
            // Overwrite and drop the variable, as for env: keys: nothing this process starts inherits it.
            memset(p, 0, n)
            unsetenv(variable)
            return pin
        }
        guard isatty(STDIN_FILENO) == 1, let p = getpass(prompt) else {
            throw PKCS11Error(.invalidArgument, "set \(variable) or run on a terminal to be asked for the PIN (a PIN is never an argument)")
        }
        let n = strlen(p)
        defer { memset(p, 0, n) }
        return SecureBytes(count: n) { out in out.copyMemory(from: UnsafeRawBufferPointer(start: p, count: n)) }
    }
}

/// The options that select a token instead of a simulated HSM.
struct PKCS11TokenOptions: ParsableArguments {
    @Flag(name: .customLong("pkcs11"), help: "Use a PKCS#11 token (with --module and --token) instead of --hsm.") var enabled = false
    @Option(name: .customLong("module"), help: "Path of the PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so).") var module: String?
    @Option(name: .customLong("token"), help: "Label of the token.") var token: String?
    @Option(name: .customLong("cluster"), help: "Cluster id written into a PKCS#11 backup (default pkcs11); for `verify --all`: only this cluster's backups.") var cluster: String?

    func validate(hsm: String?) throws {
        if enabled {
            guard module != nil, token != nil else { throw ValidationError("--pkcs11 needs --module PATH and --token LABEL") }
            guard hsm == nil else { throw ValidationError("--pkcs11 and --hsm name two different HSMs: give one") }
        } else {
            guard module == nil, token == nil, cluster == nil else { throw ValidationError("--module, --token and --cluster go with --pkcs11") }
            guard hsm != nil else { throw ValidationError("name the HSM: --hsm DIR, or --pkcs11 --module PATH --token LABEL") }
        }
    }

    func open(allowPartial: Bool = false, replace: Bool = false) throws -> PKCS11HSM {
        var o = PKCS11Options()
        o.clusterId = cluster
        o.allowPartial = allowPartial
        o.replace = replace
        let pin = try PKCS11CLI.pin("HSMBACKUP_PKCS11_PIN", prompt: "user PIN of token \(token!): ")
        return try PKCS11HSM(modulePath: module!, tokenLabel: token!, userPIN: pin, options: o)
    }
}

struct PKCS11Command: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pkcs11", abstract: "Prepare PKCS#11 tokens for hsmbackup.",
        subcommands: [Provision.self, Show.self])

    struct Provision: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Install the PBK (from the manufacturer's MKBK and the operator's AKBK) into a token, once.",
            discussion: "Needs the SO PIN (HSMBACKUP_PKCS11_SO_PIN or a prompt) and the user PIN (HSMBACKUP_PKCS11_PIN or a prompt). Prints the PBK fingerprint and the check values.")
        @Option(help: "Path of the PKCS#11 module.") var module: String
        @Option(help: "Label of the token.") var token: String
        @Option(help: "Manufacturer whose MKBK to use (see `manufacturer create`).") var manufacturer: String
        @Option(help: "The operator's AKBK file (default: the home's operator key).") var akbk: String?
        @Flag(help: "Machine-readable output.") var json = false

        func validate() throws { try HSMHome.checkName(manufacturer) }

        func run() throws {
            try runMapped {
                var mkbkRaw = try HSMHome.readKey(HSMHome.manufacturerKeyPath(manufacturer), what: "manufacturer \(manufacturer)")
                defer { wipe(&mkbkRaw) }
                var akbkRaw = try HSMHome.readKey(akbk ?? HSMHome.operatorKeyPath, what: "operator key (run `operator init`)")
                defer { wipe(&akbkRaw) }
                let so = try PKCS11CLI.pin("HSMBACKUP_PKCS11_SO_PIN", prompt: "SO PIN of token \(token): ")
                let user = try PKCS11CLI.pin("HSMBACKUP_PKCS11_PIN", prompt: "user PIN of token \(token): ")
                let r = try PKCS11HSM.provision(modulePath: module, tokenLabel: token, soPIN: so, userPIN: user, manufacturerId: manufacturer,
                                                mkbk: try ManufacturerBackupKey(bytes: mkbkRaw), akbk: try OperatorBackupKey(bytes: akbkRaw))
                if json { try JSONOutput.print(r); return }
                try Out.line("provisioned token \"\(Printable.escape(r.token.label))\" (\(Printable.escape(r.token.manufacturer)) \(Printable.escape(r.token.model)), serial \(Printable.escape(r.token.serialNumber))) for manufacturer \(manufacturer)")
                try Out.line("  PBK fingerprint \(r.pbkFingerprint)")
                try Out.line("  check values: PBK \(r.pbkCheckValue), token PBK \(r.tokenPBKCheckValue)")
                try Out.line("  in-token SP 800-108 derivation: \(r.derivationInTokenAvailable ? "offered" : "not offered (the PBK was imported once)")")
            }
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a token's identity, quirks and provisioning.")
        @OptionGroup var target: PKCS11TokenOptions
        @Flag(help: "Machine-readable output.") var json = false

        struct Output: Encodable {
            let library: ModuleInfo
            let token: TokenInfo
            let quirks: [String]
            let manufacturerId: String?
            let pbkFingerprint: String?
        }

        func run() throws {
            try runMapped {
                guard let module = target.module, let token = target.token else { throw ValidationError("give --module PATH and --token LABEL") }
                _ = (module, token)
                let hsm = try target.open()
                let o = Output(library: hsm.library, token: hsm.token, quirks: hsm.quirks, manufacturerId: hsm.manufacturerId,
                               pbkFingerprint: hsm.fingerprint.map(Hex.encode))
                if json { try JSONOutput.print(o); return }
                try Out.line("token \"\(Printable.escape(o.token.label))\": \(Printable.escape(o.token.manufacturer)) \(Printable.escape(o.token.model)) serial \(Printable.escape(o.token.serialNumber)) firmware \(o.token.firmwareVersion)")
                try Out.line("  library \(Printable.escape(o.library.manufacturer)) \(o.library.libraryVersion), cryptoki \(o.library.cryptokiVersion); quirks: \(o.quirks.isEmpty ? "none" : o.quirks.joined(separator: ", "))")
                try Out.line("  provisioned: \(o.manufacturerId.map { "manufacturer \($0), PBK fingerprint \(o.pbkFingerprint ?? "")" } ?? "no")")
            }
        }
    }
}
