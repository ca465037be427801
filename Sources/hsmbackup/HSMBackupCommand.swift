import ArgumentParser

/// The `hsmbackup` root command. Thin: every subcommand parses its arguments and calls the
/// library. Subcommands live one group per file under Commands/.
@main
struct HSMBackupCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hsmbackup",
        abstract: "Write, inspect, verify, store and restore HSM backup archives.",
        subcommands: [
            SelfTestCommand.self,
        ]
    )
}
