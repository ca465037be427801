import ArgumentParser
import Foundation
import ProcessHardening

/// The `hsmbackup` root command. Thin: every subcommand parses its arguments and calls the
/// library. Subcommands live one group per file under Commands/.
@main
struct HSMBackupCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hsmbackup",
        abstract: "Write, inspect, verify, store and restore HSM backup archives.",
        discussion: """
            Embedded defaults (local KMS, store, simulated HSMs) live in one home directory: \
            `--home DIR` before the command, or HSMBACKUP_HOME, or ~/.hsmbackup.

            Exit codes: \(CLIExit.summary)
            """,
        subcommands: [
            ManufacturerCommand.self, OperatorCommand.self, HSMCommand.self, KMSCommand.self,
            BackupCommand.self, RetentionCommand.self, InspectCommand.self, VerifyCommand.self, RestoreCommand.self,
            StoreCommand.self, EnvelopeCommand.self, SelfTestCommand.self, PKCS11Command.self,
            ScheduleCommand.self, StatusCommand.self,
        ]
    )

    /// `hsmbackup --home DIR <command> ...`: the global option is taken off before parsing and
    /// handed to every subcommand through HSMBACKUP_HOME.
    static func main() async {
        // First, before any key can be read: no core files, not dumpable (spec section 7).
        do { try ProcessHardening.apply() } catch {
            Err.line("hsmbackup: error: cannot protect the process's memory: \(error)")
            Foundation.exit(CLIExit.internalError.rawValue)
        }
        // One malloc arena per core keeps the streaming commands' peak memory bounded.
        MallocArenas.boundToCores(ProcessInfo.processInfo.activeProcessorCount)
        var args = Array(CommandLine.arguments.dropFirst())
        var home: String?
        if args.count >= 2, args[0] == "--home" {
            home = args[1]
            args.removeFirst(2)
        } else if let first = args.first, first.hasPrefix("--home=") {
            home = String(first.dropFirst("--home=".count))
            args.removeFirst()
        }
        if let home {
            // An empty value must not quietly mean the default home.
            guard !home.isEmpty else { usageExit("--home needs a directory (an empty value is refused, not taken as ~/.hsmbackup)") }
            setenv("HSMBACKUP_HOME", home, 1)
        }
        if let problem = Home.problem { usageExit(problem) }
        do {
            var command = try parseAsRoot(args)
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: CLIExit.translate(error))
        }
    }

    private static func usageExit(_ message: String) -> Never {
        Err.line("hsmbackup: error: \(message)")
        Foundation.exit(CLIExit.usage.rawValue)
    }
}
