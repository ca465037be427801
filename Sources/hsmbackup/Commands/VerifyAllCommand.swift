import ArgumentParser
import Foundation
import HSMBackup
import ObjectStore

// `hsmbackup verify --all [--cluster C] [--jobs N]` (issue 17's fleet row): every READY backup of
// the store through FleetVerifier, one line per archive as it finishes and a summary, or one JSON
// document. The exit code rule is in VerifyCommand's discussion and the README's exit code table.

struct VerifyAll {
    let command: VerifyCommand

    /// `--json`: every archive in the catalog's order, then the summary.
    struct Output: Encodable {
        struct Archive: Encodable {
            let backupId: String
            let clusterId: String
            /// passed, failed or notJudged.
            let result: String
            /// Every finding, and those of severity error.
            let findings: Int
            let errors: Int
            let seconds: Double
            /// The verification report (absent when the archive could not be judged).
            let report: VerificationReport?
            /// Why the archive could not be judged: the error's message and its exit code.
            let error: Problem?
        }
        struct Problem: Encodable {
            let message: String
            let exitCode: Int32
        }
        struct Summary: Encodable {
            let archives: Int
            let passed: Int
            let failed: Int
            let notJudged: Int
            let level: VerificationLevel
            let jobs: Int
            let seconds: Double
            let exitCode: Int32
        }
        let archives: [Archive]
        let summary: Summary
    }

    func run() throws {
        let level = command.effectiveLevel
        let jobs = command.jobs ?? max(1, min(ProcessInfo.processInfo.activeProcessorCount, FleetVerifier.maximumJobs))
        let summary: FleetVerifier.Summary
        do {
            let keys = try command.verificationKeys(level)
            let service = try ArchiveRef.service()
            let entries = try service.list(CatalogQuery(clusterId: command.pkcs11.cluster, states: [.ready]))
            let json = command.json
            summary = try FleetVerifier.verify(entries, in: service, level: level, keys: keys, jobs: jobs) { _, r in
                if !json { try Self.printLine(r) }
            }
        } catch {
            throw CLIExit.translate(error)
        }
        let exit = Self.exitCode(summary)
        do {
            if command.json {
                try JSONOutput.print(Output(archives: summary.results.map(Self.archive), summary: Output.Summary(
                    archives: summary.results.count, passed: summary.passed, failed: summary.failed, notJudged: summary.notJudged,
                    level: level, jobs: summary.jobs, seconds: summary.seconds, exitCode: exit.rawValue)))
            } else {
                try Out.line("\(summary.results.count) archive(s) at level \(level.rawValue), \(summary.jobs) at a time, \(Self.time(summary.seconds)): "
                    + "\(summary.passed) passed, \(summary.failed) failed, \(summary.notJudged) could not be judged")
            }
        } catch {
            throw CLIExit.translate(error)
        }
        if exit != .success { throw ExitCode(exit.rawValue) }
    }

    /// 0 when every archive passed; 65 when any failed; otherwise the code of the first archive
    /// (in the catalog's order) that could not be judged.
    static func exitCode(_ s: FleetVerifier.Summary) -> CLIExit {
        if s.failed > 0 { return .verificationFailed }
        if let first = s.results.first(where: { $0.outcome == .notJudged }) { return problem(first).exit }
        return .success
    }

    static func problem(_ r: FleetVerifier.ArchiveResult) -> (message: String, exit: CLIExit) {
        guard let error = r.error else { return ("not judged", .internalError) }
        if let m = error as? CLIExitMappable { return (m.cliMessage, m.cliExit) }
        return ("\(error)", .internalError)
    }

    static func archive(_ r: FleetVerifier.ArchiveResult) -> Output.Archive {
        Output.Archive(backupId: r.backupId, clusterId: r.clusterId, result: r.outcome.rawValue,
                       findings: r.report?.findings.count ?? 0, errors: r.report?.errors.count ?? 0,
                       seconds: r.seconds, report: r.report,
                       error: r.outcome == .notJudged ? { let p = problem(r); return Output.Problem(message: p.message, exitCode: p.exit.rawValue) }() : nil)
    }

    static func time(_ s: Double) -> String { String(format: "%.3f s", s) }

    /// One archive's line (and, for a failure, its error findings under it).
    static func printLine(_ r: FleetVerifier.ArchiveResult) throws {
        let head = "\(r.backupId)  cluster \(r.clusterId)"
        switch r.outcome {
        case .passed, .failed:
            let report = r.report!
            let errors = report.errors.count
            let word = r.outcome == .passed ? "PASS " : "FAIL "
            try Out.line(word + head + "  \(report.findings.count) finding(s)\(errors > 0 ? ", \(errors) error(s)" : "")  \(time(r.seconds))")
            if r.outcome == .failed { for f in report.errors { try Out.line("  " + f.description) } }
        case .notJudged:
            let p = problem(r)
            try Out.line("ERROR " + head + "  not judged (exit \(p.exit.rawValue)): \(p.message)  \(time(r.seconds))")
        }
    }
}
