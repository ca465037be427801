// CArchive shim: libarchive, plus the file-type constants that do not import as Swift values.
#ifndef HSMBACKUP_CARCHIVE_SHIM_H
#define HSMBACKUP_CARCHIVE_SHIM_H
#include <archive.h>
#include <archive_entry.h>
#include <locale.h>

static inline unsigned int hsmb_ae_ifreg(void) { return AE_IFREG; }
static inline unsigned int hsmb_ae_ifdir(void) { return AE_IFDIR; }
static inline unsigned int hsmb_ae_iflnk(void) { return AE_IFLNK; }
/// libarchive's pax writer needs a UTF-8 locale for non-ASCII names; call once per process.
static inline void hsmb_set_utf8_ctype(void) { setlocale(LC_CTYPE, "C.UTF-8"); }
#endif
