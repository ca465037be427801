import Foundation
import FuzzTargets

// One executable for every fuzz target; the target is chosen by the environment variable
// FUZZ_TARGET (e.g. FUZZ_TARGET=envelope-header), so one sanitizer build serves them all.
//
// Built with `-Xswiftc -DFUZZING --sanitize=fuzzer` (scripts/fuzz/build.sh) this file defines
// only LLVMFuzzerTestOneInput and libFuzzer supplies main. In an ordinary build it also has a
// replay/seed driver, so `swift build` of the package works without libFuzzer:
//   FuzzRunner replay <target> <file-or-dir>...   runs the target over files (exit 0 = no finding)
//   FuzzRunner seeds <repo-root> <corpus-dir>     (re)generates the committed seed corpus

nonisolated(unsafe) var selectedTarget: FuzzTarget? = nil

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    if selectedTarget == nil {
        let name = ProcessInfo.processInfo.environment["FUZZ_TARGET"] ?? ""
        guard let t = FuzzTarget(rawValue: name) else {
            FileHandle.standardError.write(Data("FUZZ_TARGET must be one of: \(FuzzTarget.allCases.map(\.rawValue).joined(separator: " "))\n".utf8))
            exit(2)
        }
        selectedTarget = t
    }
    selectedTarget!.run(Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}

#if !FUZZING
@main
struct FuzzRunnerMain {
    static func main() throws {
        let args = Array(CommandLine.arguments.dropFirst())
        func usage() -> Never {
            print("usage: FuzzRunner replay <target> <file-or-dir>... | FuzzRunner seeds <repo-root> <corpus-dir>")
            print("targets: \(FuzzTarget.allCases.map(\.rawValue).joined(separator: " "))")
            exit(2)
        }
        guard let command = args.first else { usage() }
        switch command {
        case "replay":
            guard args.count >= 3, let target = FuzzTarget(rawValue: args[1]) else { usage() }
            var n = 0
            for path in args.dropFirst(2) {
                var isDir: ObjCBool = false
                guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else { continue }
                let files = isDir.boolValue
                    ? try FileManager.default.contentsOfDirectory(atPath: path).sorted().map { path + "/" + $0 }
                    : [path]
                for f in files {
                    guard let d = FileManager.default.contents(atPath: f) else { continue }
                    target.run([UInt8](d))
                    n += 1
                }
            }
            print("\(target.rawValue): \(n) inputs replayed, no finding")
        case "seeds":
            guard args.count == 3 else { usage() }
            let seeds = try FuzzSeeds.generate(repoRoot: args[1])
            for (target, files) in seeds.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
                let dir = args[2] + "/" + target.rawValue
                try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
                for (name, bytes) in files {
                    target.run(bytes)  // every seed must pass its own target
                    try Data(bytes).write(to: URL(fileURLWithPath: dir + "/seed-" + name))
                }
                print("\(target.rawValue): \(files.count) seeds")
            }
        default: usage()
        }
    }
}
#endif
