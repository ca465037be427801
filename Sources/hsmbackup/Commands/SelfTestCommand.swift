import ArgumentParser
import BackupCrypto

/// `hsmbackup selftest`: runs each cryptographic primitive once against a known answer, so an
/// operator can check a build and its OpenSSL before trusting it with keys.
struct SelfTestCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "selftest",
        abstract: "Check the cryptographic primitives against known answers.")

    func run() throws {
        let results = CryptoSelfTest.run()
        for r in results { print("\(r.passed ? "ok  " : "FAIL") \(r.name)") }
        if results.contains(where: { !$0.passed }) { throw ExitCode(70) }
    }
}
