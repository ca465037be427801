import ArgumentParser
import BackupCrypto
import ProcessHardening

/// `hsmbackup selftest`: runs each cryptographic primitive once against a known answer, and reads
/// back the process hardening set at start-up, so an operator can check a build, its OpenSSL and
/// its process settings before trusting it with keys.
struct SelfTestCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "selftest",
        abstract: "Check the cryptographic primitives against known answers.")

    func run() throws {
        let results = CryptoSelfTest.run()
        for r in results { try Out.line("\(r.passed ? "ok  " : "FAIL") \(r.name)") }
        // The process's own protection of the keys it holds (set at start-up).
        let hardening = try? ProcessHardening.status()
        try Out.line("\(hardening?.isHardened == true ? "ok  " : "FAIL") process hardening: \(hardening.map(String.init(describing:)) ?? "unreadable")")
        if results.contains(where: { !$0.passed }) || hardening?.isHardened != true { throw ExitCode(70) }
    }
}
