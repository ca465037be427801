// CTLS shim: OpenSSL 3's libssl for AWSCore's TLS (Sources/AWSCore/TLSConnection.swift, the only
// Swift that imports it). Macros that do not import into Swift are wrapped in static inline
// functions, and the socket BIO is ours: OpenSSL's own writes with write(2), which raises SIGPIPE
// when the server has gone, and nothing in hsmbackup ignores SIGPIPE; this one sends with
// MSG_NOSIGNAL, so a closed connection is an EPIPE error like on the plain-HTTP path.
#ifndef HSMBACKUP_CTLS_SHIM_H
#define HSMBACKUP_CTLS_SHIM_H

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

/// TLS 1.2 at least (SSL_CTX_set_min_proto_version is a macro). 1 on success.
static inline int hsmb_tls_ctx_set_min_tls12(SSL_CTX *ctx) {
    return (int)SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
}

/// Partial writes (a write returns what went out, like send(2)), a retried write may pass the
/// same bytes from a moved buffer, record buffers released while a connection is idle; decrypted
/// records wiped once read (a KMS answer carries a data key); no TLS compression (CRIME) and no
/// renegotiation (SSL_OP_* are 64-bit macros that do not import).
static inline void hsmb_tls_ctx_configure(SSL_CTX *ctx) {
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION | SSL_OP_CLEANSE_PLAINTEXT);
}

/// SNI (SSL_set_tlsext_host_name is a macro). 1 on success.
static inline int hsmb_tls_set_sni(SSL *ssl, const char *name) {
    return (int)SSL_set_tlsext_host_name(ssl, name);
}

/// The socket BIO: `data` is the file descriptor (non-blocking; the caller polls).
static inline int hsmb_tls_bio_write(BIO *b, const char *buf, int len) {
    int fd = (int)(intptr_t)BIO_get_data(b);
    BIO_clear_retry_flags(b);
    ssize_t n = send(fd, buf, (size_t)len, MSG_NOSIGNAL);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) BIO_set_retry_write(b);
        return -1;
    }
    return (int)n;
}

static inline int hsmb_tls_bio_read(BIO *b, char *buf, int len) {
    int fd = (int)(intptr_t)BIO_get_data(b);
    BIO_clear_retry_flags(b);
    ssize_t n = recv(fd, buf, (size_t)len, 0);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) BIO_set_retry_read(b);
        return -1;
    }
    // The end of the stream: libssl asks BIO_eof to tell a peer that left without close_notify.
    if (n == 0) BIO_set_flags(b, BIO_FLAGS_IN_EOF);
    return (int)n;
}

static inline int hsmb_tls_bio_puts(BIO *b, const char *s) {
    return hsmb_tls_bio_write(b, s, (int)strlen(s));
}

static inline long hsmb_tls_bio_ctrl(BIO *b, int cmd, long num, void *ptr) {
    (void)num;
    (void)ptr;
    switch (cmd) {
    case BIO_CTRL_FLUSH: return 1;
    case BIO_CTRL_EOF: return BIO_test_flags(b, BIO_FLAGS_IN_EOF) != 0;
    default: return 0;
    }
}

/// The method of our socket BIOs; made once (the caller keeps it for the process's life).
static inline BIO_METHOD *hsmb_tls_bio_method_new(void) {
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "hsmbackup socket");
    if (m == NULL) return NULL;
    if (BIO_meth_set_write(m, hsmb_tls_bio_write) != 1 || BIO_meth_set_read(m, hsmb_tls_bio_read) != 1
        || BIO_meth_set_puts(m, hsmb_tls_bio_puts) != 1 || BIO_meth_set_ctrl(m, hsmb_tls_bio_ctrl) != 1) {
        BIO_meth_free(m);
        return NULL;
    }
    return m;
}

/// A BIO on `fd` (which it does not close). NULL on failure.
static inline BIO *hsmb_tls_bio_new(const BIO_METHOD *m, int fd) {
    BIO *b = BIO_new(m);
    if (b == NULL) return NULL;
    BIO_set_data(b, (void *)(intptr_t)fd);
    BIO_set_init(b, 1);
    return b;
}

#endif
