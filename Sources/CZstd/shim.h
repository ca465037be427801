// CZstd shim: zstd, with the frame-size helpers PayloadCodec needs to bound decompression.
#ifndef HSMBACKUP_CZSTD_SHIM_H
#define HSMBACKUP_CZSTD_SHIM_H
#include <zstd.h>
static inline unsigned long long hsmb_zstd_content_size_unknown(void) { return ZSTD_CONTENTSIZE_UNKNOWN; }
static inline unsigned long long hsmb_zstd_content_size_error(void) { return ZSTD_CONTENTSIZE_ERROR; }
#endif
