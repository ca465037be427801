// CZstd shim: zstd, with the frame-size helpers PayloadCodec needs to bound decompression.
#ifndef HSMBACKUP_CZSTD_SHIM_H
#define HSMBACKUP_CZSTD_SHIM_H
#include <zstd.h>
#include <zstd_errors.h>
static inline unsigned long long hsmb_zstd_content_size_unknown(void) { return ZSTD_CONTENTSIZE_UNKNOWN; }
static inline unsigned long long hsmb_zstd_content_size_error(void) { return ZSTD_CONTENTSIZE_ERROR; }
/// The result says the output buffer was too small (the frame holds more than allowed).
static inline int hsmb_zstd_dst_too_small(size_t r) { return ZSTD_getErrorCode(r) == ZSTD_error_dstSize_tooSmall; }
#endif
