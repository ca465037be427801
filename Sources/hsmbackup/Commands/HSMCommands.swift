import ArgumentParser
import BackupCrypto
import ByteCoding
import Durability
import Foundation
import HSMArchive
import HSMBackup
import PayloadCodec
import SimulatedHSM

// The HSM side of the CLI: manufacturers (MKBKs), the operator key (AKBK) and simulated HSMs.
// Thin: every command calls SimulatedHSM.

extension HSMError: CLIExitMappable {
    var cliExit: CLIExit {
        switch code {
        case .notFound, .operatorKeyMissing: return .notFound
        case .alreadyExists, .operatorKeyPresent, .invalidArgument: return .usage
        case .invalidState, .invalidObject: return .verificationFailed
        case .io: return .ioError
        }
    }
    var cliMessage: String { description }
}

extension ArchiveError: CLIExitMappable {
    var cliExit: CLIExit {
        switch code {
        case .wrongManufacturer, .pbkMismatch: return .incompatibleHSM
        case .invalidArgument: return .usage
        case .writerFailed: return .internalError
        default: return .verificationFailed
        }
    }
    var cliMessage: String { description }
}

/// Where the CLI keeps manufacturer and operator keys (simulation only: a real MKBK never
/// leaves the manufacturer, a real AKBK never leaves the operator's HSM tooling).
enum HSMHome {
    static func manufacturerKeyPath(_ name: String) -> String { Home.manufacturers + "/" + name + "/mkbk.key" }
    static var operatorDirectory: String { Home.path + "/operator" }
    static var operatorKeyPath: String { operatorDirectory + "/akbk.key" }

    static func checkName(_ name: String) throws {
        guard !name.isEmpty, name.utf8.count <= KeyHierarchy.maximumManufacturerIdBytes, !name.hasPrefix("."),
              !name.contains("/"), !name.contains("\0") else {
            throw ValidationError("manufacturer name must be 1...\(KeyHierarchy.maximumManufacturerIdBytes) bytes, no '/', not starting with '.'")
        }
        if let problem = IdentityRules.problem(.manufacturerId, name) { throw ValidationError(problem) }
    }

    static func readKey(_ path: String, what: String) throws -> [UInt8] {
        do { return try AtomicFile.read(path, limit: 64) } catch let e as FileError {
            throw HSMError(e.code == .notFound ? .notFound : .io, "\(what) not found (\(e.reason))", path: path)
        }
    }

    static func writeNewKey(_ key: SecureBytes, to path: String, what: String) throws {
        guard !FileManager.default.fileExists(atPath: path) else {
            throw HSMError(.alreadyExists, "\(what) already exists", path: path)
        }
        do {
            try AtomicFile.makeDirectory(AtomicFile.directory(of: path))
            var raw = key.unsafeCopy()
            defer { wipe(&raw) }
            // Create-only: two `create`s at once must not leave HSMs made under a key that the
            // second one replaced.
            try AtomicFile.create(raw, at: path)
        } catch let e as FileError {
            throw HSMError(e.code == .exists ? .alreadyExists : e.code == .notDirectory ? .invalidArgument : .io, e.description, path: path)
        }
    }
}

struct ManufacturerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "manufacturer", abstract: "Manage simulated HSM manufacturers (their MKBKs).",
        subcommands: [Create.self])

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a manufacturer with a fresh 256-bit MKBK.")
        @Argument(help: "Manufacturer id (also written into every backup header).") var name: String

        func validate() throws { try HSMHome.checkName(name) }

        func run() throws {
            do {
                let key = try ManufacturerBackupKey.random()
                try HSMHome.writeNewKey(key.secret, to: HSMHome.manufacturerKeyPath(name), what: "manufacturer \(name)")
                try Out.line("manufacturer \(name): MKBK at \(HSMHome.manufacturerKeyPath(name))")
            } catch { throw CLIExit.translate(error) }
        }
    }
}

struct OperatorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "operator", abstract: "Manage the operator key backup key (AKBK).",
        subcommands: [Init.self])

    struct Init: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create the operator's 256-bit AKBK (once).")

        func run() throws {
            do {
                try HSMHome.writeNewKey(try OperatorBackupKey.random().secret, to: HSMHome.operatorKeyPath, what: "operator key")
                try Out.line("operator AKBK at \(HSMHome.operatorKeyPath)")
            } catch { throw CLIExit.translate(error) }
        }
    }
}

struct HSMCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hsm", abstract: "Create, fill and show simulated HSMs.",
        subcommands: [Create.self, Populate.self, Show.self, GenerateSamples.self, GenerateArchiveVectors.self])

    struct Create: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make a simulated HSM in DIR with the manufacturer's MKBK and the operator's AKBK.")
        @Argument(help: "State directory of the new HSM (absent or empty).") var directory: String
        @Option(help: "Manufacturer (see `manufacturer create`).") var manufacturer: String
        @Option(help: "Model name.") var model: String
        @Option(help: "Serial number.") var serial: String
        @Option(help: "Cluster id.") var cluster: String
        @Option(help: "HSM id (default: hsm-<serial>).") var hsmId: String?
        @Option(help: "Firmware version.") var firmware: String = "1.0.0"

        var identity: HSMIdentity {
            HSMIdentity(manufacturerId: manufacturer, model: model, firmwareVersion: firmware,
                        serialNumber: serial, hsmId: hsmId ?? "hsm-\(serial)", clusterId: cluster)
        }

        /// The identity rules (spec §4.3.2) before anything is made: an HSM that exists can
        /// always be backed up, stored and restored.
        func validate() throws {
            try HSMHome.checkName(manufacturer)
            do { try identity.validate() } catch let e as HSMError { throw ValidationError(e.reason) }
        }

        func run() throws {
            do {
                var mkbkRaw = try HSMHome.readKey(HSMHome.manufacturerKeyPath(manufacturer), what: "manufacturer \(manufacturer)")
                defer { wipe(&mkbkRaw) }
                var akbkRaw = try HSMHome.readKey(HSMHome.operatorKeyPath, what: "operator key (run `operator init`)")
                defer { wipe(&akbkRaw) }
                let hsm = try SimulatedHSM.create(at: directory, identity: identity, mkbk: try ManufacturerBackupKey(bytes: mkbkRaw),
                                                  akbk: try OperatorBackupKey(bytes: akbkRaw))
                try Out.line("created HSM \(identity.hsmId) (\(manufacturer) \(model)) in \(hsm.directory)")
            } catch let e as CryptoError {
                throw CLIExit.translate(HSMError(.invalidState, "a stored key has the wrong size: \(e.reason)"))
            } catch { throw CLIExit.translate(error) }
        }
    }

    struct Populate: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Replace the HSM's contents with generated users, keys (real key material) and policies.")
        @Argument(help: "HSM state directory.") var directory: String
        @Option(help: "Number of keys.") var keys: Int
        @Option(help: "Number of users.") var users: Int
        @Option(help: "Seed: the same seed gives the same contents (RSA keys excepted).") var seed: UInt64
        @Flag(help: "No RSA keys, so the contents are a function of the seed alone.") var noRsa = false
        @Option(help: "RSA modulus bits.") var rsaBits: Int = 2048

        func validate() throws {
            guard (0...SimulatedHSM.maximumPopulateKeys).contains(keys), (0...SimulatedHSM.maximumPopulateUsers).contains(users) else {
                throw ValidationError("--keys must be 0...\(SimulatedHSM.maximumPopulateKeys), --users 0...\(SimulatedHSM.maximumPopulateUsers)")
            }
            guard AsymmetricKeyMaterial.allowedRSABits.contains(rsaBits) else { throw ValidationError("--rsa-bits out of range") }
        }

        func run() throws {
            do {
                let hsm = try SimulatedHSM.open(at: directory)
                var options = noRsa ? PopulateOptions.deterministic : PopulateOptions()
                options.rsaBits = rsaBits
                try hsm.populate(keys: keys, users: users, seed: seed, options: options)
                try Out.line("populated \(hsm.identity.hsmId): \(hsm.state.policies) policies, \(hsm.state.users) users, \(hsm.state.keys) keys")
            } catch { throw CLIExit.translate(error) }
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show an HSM's identity and contents (no key material).")
        @Argument(help: "HSM state directory.") var directory: String
        @Flag(help: "Machine-readable output.") var json = false

        struct KeyInfo: Codable { let handle: UInt64; let label: String; let type: String; let bits: Int; let owner: String }
        struct UserInfo: Codable { let name: String; let role: String }
        struct Report: Codable {
            let directory: String
            let identity: HSMIdentity
            let operatorKeyInstalled: Bool
            let pbkFingerprint: String?
            let policies: [String]
            let users: [UserInfo]
            let keys: [KeyInfo]
        }

        func run() throws {
            do {
                let hsm = try SimulatedHSM.open(at: directory)
                let c = try hsm.contents
                let report = Report(directory: directory, identity: hsm.identity, operatorKeyInstalled: hsm.hasOperatorKey,
                                    pbkFingerprint: try hsm.pbkFingerprint().map { Hex.encode($0) },
                                    policies: c.policies.map(\.name),
                                    users: c.users.map { UserInfo(name: $0.name, role: $0.role.rawValue) },
                                    keys: c.keys.map { KeyInfo(handle: $0.handle, label: $0.label, type: $0.type.rawValue, bits: $0.bits, owner: $0.owner) })
                if json { try JSONOutput.print(report); return }
                let i = hsm.identity
                try Out.line("HSM \(i.hsmId)  manufacturer \(i.manufacturerId)  model \(i.model)  firmware \(i.firmwareVersion)")
                try Out.line("serial \(i.serialNumber)  cluster \(i.clusterId)")
                try Out.line("operator key: \(hsm.hasOperatorKey ? "installed" : "not installed")" +
                      (report.pbkFingerprint.map { "  PBK fingerprint \($0)" } ?? ""))
                try Out.line("policies: \(c.policies.count)  users: \(c.users.count)  keys: \(c.keys.count)")
                for u in c.users { try Out.line("  user \(u.name) (\(u.role.rawValue))") }
                for k in c.keys { try Out.line("  key 0x\(String(k.handle, radix: 16)) \(k.type.rawValue)-\(k.bits) \"\(k.label)\" owner \(k.owner)") }
            } catch { throw CLIExit.translate(error) }
        }
    }

    /// `make samples`: regenerates spec/vectors/inner and samples/ deterministically.
    struct GenerateSamples: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "generate-samples", abstract: "Regenerate the inner-format vectors and samples.",
            shouldDisplay: false)
        @Option(help: "Vectors directory.") var vectors: String = "spec/vectors/inner"
        @Option(help: "Samples directory.") var samples: String = "samples"

        func run() throws {
            do {
                let written = try SpecVectors.generate(vectorsDirectory: vectors, samplesDirectory: samples)
                try Out.line("wrote \(written.count) files under \(vectors) and \(samples)")
            } catch { throw CLIExit.translate(error) }
        }
    }

    struct GenerateArchiveVectors: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "generate-archive-vectors",
            abstract: "Regenerate the whole-archive and store vectors (spec/FORMAT.md 3.10, 5.10).", shouldDisplay: false)
        @Option(help: "Archive vectors directory.") var archive: String = "spec/vectors/archive"
        @Option(help: "Store vectors directory.") var store: String = "spec/vectors/store"

        func run() throws {
            do {
                let a = try ArchiveVectors.generateArchives(directory: archive)
                let s = try ArchiveVectors.generateStore(directory: store)
                try Out.line("wrote \(a.count) files under \(archive) and \(s.count) under \(store)")
            } catch { throw CLIExit.translate(error) }
        }
    }
}
