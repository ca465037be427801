import ByteCoding
import Foundation
import XCTest

/// Loads the known-answer vector files copied from ../shared/vectors (see Vectors/PROVENANCE.md).
enum Vectors {
    static func url(_ name: String) throws -> URL {
        guard let dir = Bundle.module.url(forResource: "Vectors", withExtension: nil) else {
            throw XCTSkip("Vectors resource missing from the test bundle")
        }
        return dir.appendingPathComponent(name)
    }

    static func text(_ name: String) throws -> String {
        try String(contentsOf: url(name), encoding: .utf8)
    }

    static func json(_ name: String) throws -> [String: Any] {
        let data = try Data(contentsOf: url(name))
        return try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    /// Wycheproof: every test with its group, flattened.
    static func wycheproof(_ name: String) throws -> [(group: [String: Any], test: [String: Any])] {
        let root = try json(name)
        var out: [(group: [String: Any], test: [String: Any])] = []
        for g in root["testGroups"] as? [[String: Any]] ?? [] {
            for t in g["tests"] as? [[String: Any]] ?? [] { out.append((g, t)) }
        }
        return out
    }
}

/// One CAVP record: its `name = value` fields, the section parameters in force, and whether it
/// carries the bare `FAIL` line.
struct CAVPRecord {
    var fields: [String: String] = [:]
    var section: [String: String] = [:]
    var fail = false

    func hex(_ key: String) -> [UInt8] {
        guard let v = fields[key] else { XCTFail("missing field \(key)"); return [] }
        guard let b = Hex.decode(v) else { XCTFail("bad hex in \(key)"); return [] }
        return b
    }
}

/// Parses the NIST CAVP layout: `#` comments, `[NAME = value]` or `[NAME]` section lines that
/// apply until changed, records of `name = value` lines separated by blank lines, `FAIL` lines.
/// Tab-indented informational lines (KBKDF) are skipped.
enum CAVP {
    static func parse(_ text: String) -> [CAVPRecord] {
        var records: [CAVPRecord] = []
        var section: [String: String] = [:]
        var current = CAVPRecord()
        func flush() {
            if !current.fields.isEmpty {
                current.section = section
                records.append(current)
            }
            current = CAVPRecord()
        }
        // CAVP files keep CRLF; Swift treats "\r\n" as one Character, so split on bytes.
        for rawLine in text.utf8.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            var bytes = Array(rawLine)
            if bytes.last == UInt8(ascii: "\r") { bytes.removeLast() }
            let line = String(decoding: bytes, as: UTF8.self)
            if line.hasPrefix("\t") || line.hasPrefix("#") { continue }
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty { flush(); continue }
            if trimmed.hasPrefix("[") && trimmed.hasSuffix("]") {
                flush()
                let inner = trimmed.dropFirst().dropLast()
                if let eq = inner.firstIndex(of: "=") {
                    section[inner[..<eq].trimmingCharacters(in: .whitespaces)] =
                        inner[inner.index(after: eq)...].trimmingCharacters(in: .whitespaces)
                } else {
                    // [PRF=HMAC_SHA256]-style without spaces is handled above; a bare tag is kept as a key.
                    section[String(inner)] = ""
                }
                continue
            }
            if trimmed == "FAIL" { current.fail = true; continue }
            if let eq = trimmed.firstIndex(of: "=") {
                current.fields[trimmed[..<eq].trimmingCharacters(in: .whitespaces)] =
                    trimmed[trimmed.index(after: eq)...].trimmingCharacters(in: .whitespaces)
            }
        }
        flush()
        return records
    }
}

/// Counts of what a vector file yielded, printed by each test so the log shows the coverage.
struct VectorTally {
    let file: String
    var passed = 0
    var rejected = 0
    var refusedUnsupported = 0

    var total: Int { passed + rejected + refusedUnsupported }

    func report(file: StaticString = #filePath, line: UInt = #line) {
        print("vectors \(self.file): \(total) cases, \(passed) valid passed, \(rejected) must-fail rejected, \(refusedUnsupported) refused as unsupported")
        XCTAssertGreaterThan(total, 0, "\(self.file) yielded zero cases", file: file, line: line)
    }
}
