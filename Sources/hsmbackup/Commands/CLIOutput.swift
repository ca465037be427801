import ArgumentParser
import Durability
import Foundation
#if canImport(Glibc)
import Glibc
#endif

// Everything the CLI prints goes through here: stdout writes are checked (a full disk or a
// closed stdout is exit 74, never a crash or a silent loss) and text is escaped (a tag value,
// key name or path holding a newline or an escape sequence cannot fake a line or drive the
// terminal). JSON needs no escaping of ours: the encoder escapes control characters itself.

/// Writing to stdout failed (ENOSPC, EIO, EBADF ...): exit 74.
struct StdoutError: CLIExitMappable {
    let reason: String
    var cliExit: CLIExit { .ioError }
    var cliMessage: String { "cannot write to standard output: \(reason)" }
}

enum Out {
    /// One line of text, its control characters escaped.
    static func line(_ text: String) throws { try raw(Array((Printable.escape(text) + "\n").utf8)) }

    /// Several lines (each escaped on its own).
    static func lines(_ lines: [String]) throws { for l in lines { try line(l) } }

    /// Bytes exactly as given (object contents, JSON), every write(2) checked.
    static func raw(_ bytes: [UInt8]) throws { try bytes.withUnsafeBytes { try raw($0) } }

    static func raw(_ bytes: UnsafeRawBufferPointer) throws {
        var off = 0
        while off < bytes.count {
            let n = Glibc.write(1, bytes.baseAddress! + off, bytes.count - off)
            if n < 0 {
                if errno == EINTR { continue }
                throw StdoutError(reason: String(cString: strerror(errno)))
            }
            off += n
        }
    }
}

/// Diagnostics on stderr: escaped, and best effort (there is nowhere left to report a failure
/// to write a diagnostic; FileHandle's own write would trap on it).
enum Err {
    static func line(_ text: String) {
        let bytes = Array((Printable.escape(text) + "\n").utf8)
        bytes.withUnsafeBytes { b in
            var off = 0
            while off < b.count {
                let n = Glibc.write(2, b.baseAddress! + off, b.count - off)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return }
                off += n
            }
        }
    }

    /// Raw bytes (the progress bar's carriage returns and erase sequence), best effort.
    static func raw(_ text: String) {
        let bytes = Array(text.utf8)
        bytes.withUnsafeBytes { b in _ = Glibc.write(2, b.baseAddress!, b.count) }
    }
}

enum Printable {
    /// Control characters (C0, DEL, C1) as visible escapes: `\n`, `\r`, `\t`, `\u{1B}`.
    static func escape(_ s: String) -> String {
        guard s.unicodeScalars.contains(where: isControl) else { return s }
        var out = ""
        for u in s.unicodeScalars {
            guard isControl(u) else { out.unicodeScalars.append(u); continue }
            switch u {
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default: out += "\\u{" + String(u.value, radix: 16, uppercase: true) + "}"
            }
        }
        return out
    }

    static func isControl(_ u: Unicode.Scalar) -> Bool { u.value < 0x20 || (0x7F...0x9F).contains(u.value) }

    /// Refuses a value the user gives that would be stored and printed later (tags).
    static func requireNoControl(_ s: String, _ what: String) throws {
        if s.unicodeScalars.contains(where: isControl) {
            throw ValidationError("\(what) \"\(escape(s))\" holds a control character (newline, tab, escape ...): refused")
        }
    }
}

extension FileError: CLIExitMappable {
    /// Not there (or a symlink loop): 66; there but not a regular file: 64; anything else: 74.
    var cliExit: CLIExit {
        switch code {
        case .notFound, .symlinkLoop: return .notFound
        case .notRegularFile, .notDirectory: return .usage
        default: return .ioError
        }
    }
    var cliMessage: String { "\(description) [\(code.rawValue)]" }
}

/// File arguments, checked before any work starts so that every command gives one answer for
/// one kind of path: missing or a symlink loop 66, a directory, FIFO, device or socket 64.
enum PathArgument {
    /// An input file (`-`, stdin, is the caller's business).
    static func input(_ path: String) throws {
        try AtomicFile.checkInput(path)
    }

    /// An output file: absent, or a regular file that will be replaced whole. A device or FIFO
    /// is refused: the atomic rename would replace the node itself.
    static func output(_ path: String) throws {
        do { try AtomicFile.checkOutput(path) } catch let e as FileError {
            if e.code == .notRegularFile {
                throw FileError(code: .notRegularFile, operation: "write", path: path,
                                reason: e.reason + "; outputs are written to a temp file and renamed into place, which would replace it (use `-` for stdout where offered)")
            }
            throw e
        }
    }
}
