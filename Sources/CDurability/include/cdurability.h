// CDurability: the file-system calls Durability needs that Swift's Glibc module does not import
// (sync_file_range and O_DIRECT are GNU extensions, declared only under _GNU_SOURCE).
#ifndef HSMBACKUP_CDURABILITY_H
#define HSMBACKUP_CDURABILITY_H

#include <stdint.h>

/// Starts write-back of the byte range [offset, offset + length) of `fd` without waiting for it
/// (Linux: sync_file_range with SYNC_FILE_RANGE_WRITE). Returns 0, or -1 with errno set; a no-op
/// returning 0 where the call does not exist. It makes nothing durable: fsync still does that.
int hsmb_start_writeback(int fd, int64_t offset, int64_t length);

/// Sets (on != 0) or clears O_DIRECT on `fd` (O_DIRECT too is declared only under _GNU_SOURCE).
/// Returns 0, or -1 with errno set (EINVAL: the file system does not do direct I/O).
int hsmb_set_direct_io(int fd, int on);

#endif
