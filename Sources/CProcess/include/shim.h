// CProcess shim: the process controls ProcessHardening needs. prctl(2) is variadic and does not
// import into Swift, and RLIMIT_CORE's type differs between C libraries, so each call used gets a
// fixed-signature static inline wrapper here. Only Sources/ProcessHardening imports this module.
#ifndef HSMBACKUP_CPROCESS_SHIM_H
#define HSMBACKUP_CPROCESS_SHIM_H
#include <sys/resource.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#ifdef __linux__
#include <sys/prctl.h>
#endif

/// setrlimit(RLIMIT_CORE, {0, 0}): no core file, and the limit cannot be raised again by this
/// process or its children. Returns 0, or -1 with errno set.
static inline int hsmb_disable_core_files(void) {
    struct rlimit zero = { 0, 0 };
    return setrlimit(RLIMIT_CORE, &zero);
}

/// getrlimit(RLIMIT_CORE) into soft and hard (RLIM_INFINITY as ~0). Returns 0, or -1 with errno.
static inline int hsmb_core_file_limit(unsigned long long *soft, unsigned long long *hard) {
    struct rlimit now;
    if (getrlimit(RLIMIT_CORE, &now) != 0) return -1;
    *soft = now.rlim_cur == RLIM_INFINITY ? ~0ULL : (unsigned long long)now.rlim_cur;
    *hard = now.rlim_max == RLIM_INFINITY ? ~0ULL : (unsigned long long)now.rlim_max;
    return 0;
}

/// prctl(PR_SET_DUMPABLE, value): 0 = no core dumps, no ptrace attach by other processes of the
/// same user, /proc/<pid> files owned by root. Returns 0, or -1 with errno set.
static inline int hsmb_set_dumpable(int value) {
#ifdef __linux__
    return prctl(PR_SET_DUMPABLE, (unsigned long)value, 0UL, 0UL, 0UL);
#else
    (void)value;
    return 0;
#endif
}

/// prctl(PR_GET_DUMPABLE): 0 or 1 (2 = suid_dumpable root-only), or -1 with errno set.
static inline int hsmb_get_dumpable(void) {
#ifdef __linux__
    return prctl(PR_GET_DUMPABLE, 0UL, 0UL, 0UL, 0UL);
#else
    return -1;
#endif
}
/// Caps glibc's malloc arenas (mallopt M_ARENA_MAX); returns 1 on success, 0 if refused, -1
/// where the C library has no such setting.
static inline int hsmb_set_malloc_arena_max(int arenas) {
#if defined(__GLIBC__) && defined(M_ARENA_MAX)
    return mallopt(M_ARENA_MAX, arenas);
#else
    (void)arenas;
    return -1;
#endif
}

#endif
