// Peak memory of a process that streams archives on several threads (issue 17's bound: peak RSS
// at most 64 MiB whatever the archive's size). glibc gives each thread that allocates its own
// malloc arena, up to 8 per core, and memory freed into one arena is not reused by another, so
// a verify's seven threads kept about 5 MiB more than the same work needs with one arena per
// core (measured: 56.7 MiB default, 51.6 MiB with 2 arenas on 2 cores, no slower).
import CProcess
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public enum MallocArenas {
    /// Caps malloc's arenas at one per core (at least 2), unless MALLOC_ARENA_MAX is set, which
    /// glibc has then already applied. Returns the cap set, or nil when none was (the variable
    /// is set, or the C library has no such setting).
    @discardableResult
    public static func boundToCores(_ cores: Int) -> Int? {
        guard getenv("MALLOC_ARENA_MAX") == nil else { return nil }
        let arenas = Int32(clamping: max(2, cores))
        return hsmb_set_malloc_arena_max(arenas) == 1 ? Int(arenas) : nil
    }
}
