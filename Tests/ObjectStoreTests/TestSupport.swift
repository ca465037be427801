import Foundation
import XCTest
@testable import ObjectStore

/// A scratch directory removed at the end of the test (after unmounting anything mounted in it).
final class Scratch {
    let path: String
    private var mounts: [String] = []

    init() {
        path = NSTemporaryDirectory() + "objectstore-test-" + UUID().uuidString
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    deinit {
        for m in mounts.reversed() { _ = Shell.run("umount -l '\(m)'") }
        try? FileManager.default.removeItem(atPath: path)
    }

    /// Mounts a tmpfs of `size` at `dir`; false when this machine does not allow it.
    func mountTmpfs(_ dir: String, size: String) -> Bool {
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        guard Shell.run("mount -t tmpfs -o size=\(size),mode=0700 tmpfs '\(dir)'") == 0 else { return false }
        mounts.append(dir)
        return true
    }
}

enum Shell {
    @discardableResult
    static func run(_ command: String) -> Int32 {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", command + " >/dev/null 2>&1"]
        try! p.run()
        p.waitUntilExit()
        return p.terminationStatus
    }
}

/// Deterministic test bytes.
func pattern(_ count: Int, seed: UInt64 = 1) -> [UInt8] {
    var x = seed &* 0x9E37_79B9_7F4A_7C15 | 1
    return (0..<count).map { _ in
        x ^= x << 13; x ^= x >> 7; x ^= x << 17
        return UInt8(truncatingIfNeeded: x)
    }
}

/// Flips (xor 0xFF, so the byte always changes) the byte at `offset` of a file on disk.
func flipByte(_ path: String, at offset: Int) {
    let h = FileHandle(forUpdatingAtPath: path)!
    try! h.seek(toOffset: UInt64(offset))
    let b = try! h.read(upToCount: 1)!
    try! h.seek(toOffset: UInt64(offset))
    try! h.write(contentsOf: Data([b[0] ^ 0xFF]))
    try! h.close()
}

func truncateFile(_ path: String, to size: Int) {
    let h = FileHandle(forUpdatingAtPath: path)!
    try! h.truncate(atOffset: UInt64(size))
    try! h.close()
}

func fileSize(_ path: String) -> Int {
    (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? -1
}

func readAll(_ r: ObjectReading) throws -> [UInt8] {
    var out: [UInt8] = []
    while let p = try r.read() { out += p }
    return out
}

func XCTAssertStoreError<T>(_ code: StoreError.Code, _ body: @autoclosure () throws -> T,
                            file: StaticString = #filePath, line: UInt = #line, _ check: (StoreError) -> Void = { _ in }) {
    do {
        _ = try body()
        XCTFail("expected StoreError \(code)", file: file, line: line)
    } catch let e as StoreError {
        XCTAssertEqual(e.code, code, "\(e)", file: file, line: line)
        check(e)
    } catch {
        XCTFail("unexpected error \(error)", file: file, line: line)
    }
}

/// Temp files (writers' `.name.tmp-*`) anywhere under a directory.
func tempFiles(under dir: String) -> [String] {
    let e = FileManager.default.enumerator(atPath: dir)
    var out: [String] = []
    while let p = e?.nextObject() as? String {
        if (p as NSString).lastPathComponent.hasPrefix("."), p.contains(".tmp-") { out.append(p) }
    }
    return out
}

/// Thread-safe switchable fault for the injected-error hook.
final class FaultSwitch: @unchecked Sendable {
    private let lock = NSLock()
    private var faults: [(IOOperation, Int, Int32, String?)] = []
    /// Fails `op` on `replica` (only for paths containing `pathContains`, when given).
    func set(_ op: IOOperation, replica: Int, errno e: Int32, pathContains: String? = nil) {
        lock.lock(); faults.append((op, replica, e, pathContains)); lock.unlock()
    }
    func clear() { lock.lock(); faults = []; lock.unlock() }
    var hook: FaultHook {
        { [self] op, replica, path in
            lock.lock(); defer { lock.unlock() }
            return faults.first { $0.0 == op && $0.1 == replica && ($0.3 == nil || path.contains($0.3!)) }?.2
        }
    }
}

extension BackupCatalog {
    /// The catalog's store as the local store these tests made (they reach into replica files).
    var local: LocalObjectStore { store as! LocalObjectStore }
}
