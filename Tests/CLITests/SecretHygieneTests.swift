import Foundation
import XCTest

/// Secrets never leak: during a whole backup/verify/restore cycle, including failures, no key
/// byte (MKBK, AKBK, KMS key, HSM key material, as raw bytes, hex or Base64) appears in any
/// command's output or in any file outside the files whose job is to hold it; and every key
/// file, HSM state file, store file and archive is owner-only even under umask 000.
final class SecretHygieneTests: XCTestCase {
    private var home = ""
    private var work = ""

    /// Runs the CLI under umask 000, so permissions must come from the program, not the umask.
    @discardableResult
    private func hb(_ args: [String]) throws -> CLIRun {
        let quoted = ([CLI.binary.path] + args).map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }.joined(separator: " ")
        let r = try CLI.runShell("umask 000; exec \(quoted)", home: home)
        return CLIRun(arguments: args, stdout: r.stdout, stderr: r.stderr, exitCode: r.exitCode)
    }

    func testNoKeyBytesInOutputsOrFilesAndEverythingIsOwnerOnly() throws {
        home = try CLI.makeHome()
        work = try CLI.makeHome()
        var transcripts: [CLIRun] = []
        func step(_ args: [String], expect: Int32 = 0) throws {
            let r = try hb(args)
            XCTAssertEqual(r.exitCode, expect, r.description)
            transcripts.append(r)
        }
        try step(["manufacturer", "create", "acme"])
        try step(["manufacturer", "create", "globex"])
        try step(["operator", "init"])
        try step(["kms", "create-key", "k1"])
        try step(["store", "init"])
        try step(["hsm", "create", work + "/src", "--manufacturer", "acme", "--model", "M", "--serial", "1", "--cluster", "c1"])
        try step(["hsm", "populate", work + "/src", "--keys", "30", "--users", "4", "--seed", "3"])
        try step(["hsm", "show", work + "/src", "--json"])
        try step(["backup", "create", "--hsm", work + "/src", "--kms-key", "k1", "--json"])
        try step(["backup", "create", "--hsm", work + "/src", "--kms-key", "k1", "--signed", "--out", work + "/a.hsmbak"])
        let id = try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(transcripts[8].stdout.utf8)) as? [String: Any])?["backupId"] as? String)
        try step(["backup", "list", "--json"])
        try step(["inspect", id, "--kms-key", "k1", "--json"])
        for level in ["structure", "envelope"] { try step(["verify", id, "--level", level, "--json"]) }
        try step(["verify", work + "/a.hsmbak", "--level", "full", "--hsm", work + "/src", "--json"])
        try step(["hsm", "create", work + "/dst", "--manufacturer", "acme", "--model", "M", "--serial", "2", "--cluster", "c1"])
        try step(["restore", id, "--hsm", work + "/dst", "--json"])
        try step(["hsm", "create", work + "/other", "--manufacturer", "globex", "--model", "G", "--serial", "3", "--cluster", "c2"])
        // Failures must not leak either.
        try step(["restore", id, "--hsm", work + "/other"], expect: 68)
        var damaged = [UInt8](try Data(contentsOf: URL(fileURLWithPath: work + "/a.hsmbak")))
        damaged[damaged.count / 2] ^= 0xFF
        try Data(damaged).write(to: URL(fileURLWithPath: work + "/bad.hsmbak"))
        try step(["verify", work + "/bad.hsmbak", "--level", "full", "--hsm", work + "/src", "--json"], expect: 65)
        try step(["restore", work + "/bad.hsmbak", "--hsm", work + "/dst"], expect: 65)
        try step(["envelope", "decrypt", "--kms-key", "k1", work + "/bad.hsmbak", "-o", work + "/out.bin"], expect: 65)

        // The secrets, read from the files whose job is to hold them.
        var secrets: [(String, [UInt8])] = []
        let keyFiles = try allFiles(home).filter { $0.hasSuffix(".key") } + [work + "/src/mkbk.key", work + "/src/akbk.key"]
        for f in keyFiles { secrets.append((f, [UInt8](try Data(contentsOf: URL(fileURLWithPath: f))))) }
        // The HSM's key objects are canonical JSON inside its contents file (a tar behind a prefix).
        let state = String(decoding: try Data(contentsOf: URL(fileURLWithPath: work + "/src/contents.state")), as: UTF8.self)
        let material = try NSRegularExpression(pattern: #""material":"([0-9a-f]{32,})""#)
        for (i, m) in material.matches(in: state, range: NSRange(state.startIndex..., in: state)).enumerated() {
            secrets.append(("HSM key \(i + 1)", hexDecode(String(state[Range(m.range(at: 1), in: state)!]))))
        }
        XCTAssertGreaterThanOrEqual(secrets.count, 6)

        let outputs = transcripts.map { $0.stdout + $0.stderr }.joined(separator: "\n")
        // Files that legitimately hold secrets: the key files and the HSMs' own state.
        let holders = Set(keyFiles)
        let scanned = try (allFiles(home) + allFiles(work)).filter { f in
            !holders.contains(f) && !f.hasPrefix(work + "/src/") && !f.hasPrefix(work + "/dst/") && !f.hasPrefix(work + "/other/")
        }
        XCTAssertFalse(scanned.isEmpty)
        for (name, secret) in secrets {
            for form in encodings(secret) {
                XCTAssertFalse(outputs.contains(form), "\(name) appears in command output")
            }
            for f in scanned {
                let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: f)))
                XCTAssertFalse(contains(bytes, secret), "\(name) appears raw in \(f)")
                let text = String(decoding: bytes, as: UTF8.self)
                for form in encodings(secret) { XCTAssertFalse(text.contains(form), "\(name) appears encoded in \(f)") }
            }
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: work + "/out.bin"), "a failed decrypt left an output file")

        // Owner-only, whatever the umask: no group or other bits on anything the tool wrote.
        for f in try allFiles(home) + allFiles(work + "/src") + allFiles(work + "/dst") + [work + "/a.hsmbak"] {
            let mode = try XCTUnwrap((try FileManager.default.attributesOfItem(atPath: f))[.posixPermissions] as? NSNumber).intValue
            XCTAssertEqual(mode & 0o077, 0, "\(f) has mode \(String(mode, radix: 8))")
        }
        for d in [home + "/kms", home + "/store", home + "/manufacturers", home + "/operator", work + "/src", work + "/dst"] {
            let mode = try XCTUnwrap((try FileManager.default.attributesOfItem(atPath: d))[.posixPermissions] as? NSNumber).intValue
            XCTAssertEqual(mode & 0o077, 0, "directory \(d) has mode \(String(mode, radix: 8))")
        }
    }

    private func encodings(_ b: [UInt8]) -> [String] {
        let hex = b.map { String(format: "%02x", $0) }.joined()
        return [hex, hex.uppercased(), Data(b).base64EncodedString()]
    }

    private func hexDecode(_ s: String) -> [UInt8] {
        var out: [UInt8] = []
        var it = s.makeIterator()
        while let a = it.next(), let b = it.next() { out.append(UInt8(String([a, b]), radix: 16) ?? 0) }
        return out
    }

    private func contains(_ hay: [UInt8], _ needle: [UInt8]) -> Bool {
        guard needle.count >= 8, hay.count >= needle.count else { return false }
        let first = needle[0]
        var i = 0
        while i <= hay.count - needle.count {
            if hay[i] == first && hay[i..<(i + needle.count)].elementsEqual(needle) { return true }
            i += 1
        }
        return false
    }

    private func allFiles(_ dir: String) throws -> [String] {
        guard let e = FileManager.default.enumerator(atPath: dir) else { return [] }
        var out: [String] = []
        for case let rel as String in e {
            var isDir: ObjCBool = false
            let p = dir + "/" + rel
            if FileManager.default.fileExists(atPath: p, isDirectory: &isDir), !isDir.boolValue { out.append(p) }
        }
        return out
    }
}
