// COpenSSL shim: the OpenSSL 3 headers BackupCrypto needs, plus small C helpers for calls that
// do not import into Swift (macros, variadic functions) or that build OSSL_PARAM arrays, whose
// pointers must stay valid for the whole call: doing that here keeps every pointer on the C stack.
#ifndef HSMBACKUP_COPENSSL_SHIM_H
#define HSMBACKUP_COPENSSL_SHIM_H

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>
#include <openssl/ec.h>
#include <openssl/x509.h>
#include <string.h>

static inline void hsmb_openssl_free(void *p) { OPENSSL_free(p); }

/// Wipes `n` bytes at `p` with stores the compiler may not drop. glibc's explicit_bzero is memset
/// behind a barrier: 90 GB/s on a 64 KiB buffer here against OPENSSL_cleanse's 23 GB/s, and the
/// pipelines wipe every plaintext buffer (3% of a full verify). Elsewhere: OPENSSL_cleanse.
static inline void hsmb_cleanse(void *p, size_t n) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 25))
    explicit_bzero(p, n);
#else
    OPENSSL_cleanse(p, n);
#endif
}

/// OpenSSL's SipHash-2-4 with a 16-byte output (EVP_MAC "SIPHASH", size 16): the reference that
/// SipHash128 is tested against. 1 on success.
static inline int hsmb_siphash128_reference(const unsigned char key[16], const unsigned char *data, size_t len,
                                            unsigned char out[16]) {
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "SIPHASH", NULL);
    EVP_MAC_CTX *ctx = mac ? EVP_MAC_CTX_new(mac) : NULL;
    size_t size = 16, outlen = 0;
    OSSL_PARAM params[2] = { OSSL_PARAM_construct_size_t(OSSL_MAC_PARAM_SIZE, &size), OSSL_PARAM_construct_end() };
    int ok = ctx && EVP_MAC_CTX_set_params(ctx, params) == 1 && EVP_MAC_init(ctx, key, 16, NULL) == 1
        && EVP_MAC_update(ctx, data, len) == 1 && EVP_MAC_final(ctx, out, &outlen, 16) == 1 && outlen == 16;
    EVP_MAC_CTX_free(ctx);
    EVP_MAC_free(mac);
    return ok;
}

static inline const int hsmb_wrap_allow_flag(void) { return EVP_CIPHER_CTX_FLAG_WRAP_ALLOW; }

/// SP 800-108 KDF in counter mode, HMAC-SHA256, 32-bit big-endian counter before the fixed
/// input data. The fixed input is passed opaque (as OpenSSL's "salt" with no separator and no
/// L field), so the caller decides its layout (label || 0x00 || context || [L]32).
static inline int hsmb_kbkdf_ctr_hmac_sha256(const unsigned char *key, size_t keylen,
                                             const unsigned char *fixed, size_t fixedlen,
                                             unsigned char *out, size_t outlen) {
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "KBKDF", NULL);
    if (kdf == NULL) return 0;
    EVP_KDF_CTX *ctx = EVP_KDF_CTX_new(kdf);
    EVP_KDF_free(kdf);
    if (ctx == NULL) return 0;
    int zero = 0;
    char mode[] = "COUNTER", mac[] = "HMAC", digest[] = "SHA256";
    OSSL_PARAM params[8];
    size_t i = 0;
    params[i++] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_MODE, mode, 0);
    params[i++] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_MAC, mac, 0);
    params[i++] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0);
    params[i++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)key, keylen);
    params[i++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)fixed, fixedlen);
    params[i++] = OSSL_PARAM_construct_int(OSSL_KDF_PARAM_KBKDF_USE_L, &zero);
    params[i++] = OSSL_PARAM_construct_int(OSSL_KDF_PARAM_KBKDF_USE_SEPARATOR, &zero);
    params[i++] = OSSL_PARAM_construct_end();
    int ok = EVP_KDF_derive(ctx, out, outlen, params);
    EVP_KDF_CTX_free(ctx);
    return ok;
}

/// HKDF (RFC 5869) extract-and-expand with the named digest ("SHA256", "SHA384", "SHA512").
/// An empty salt is left unset, which RFC 5869 defines as HashLen zero bytes.
static inline int hsmb_hkdf(const char *digest_name,
                            const unsigned char *ikm, size_t ikmlen,
                            const unsigned char *salt, size_t saltlen,
                            const unsigned char *info, size_t infolen,
                            unsigned char *out, size_t outlen) {
    EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
    if (kdf == NULL) return 0;
    EVP_KDF_CTX *ctx = EVP_KDF_CTX_new(kdf);
    EVP_KDF_free(kdf);
    if (ctx == NULL) return 0;
    char digest[16];
    if (strlen(digest_name) >= sizeof(digest)) { EVP_KDF_CTX_free(ctx); return 0; }
    strcpy(digest, digest_name);
    unsigned char empty = 0;
    OSSL_PARAM params[6];
    size_t i = 0;
    params[i++] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0);
    params[i++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY,
                                                    ikmlen ? (void *)ikm : (void *)&empty, ikmlen);
    if (saltlen > 0)
        params[i++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT, (void *)salt, saltlen);
    params[i++] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO,
                                                    infolen ? (void *)info : (void *)&empty, infolen);
    params[i++] = OSSL_PARAM_construct_end();
    int ok = EVP_KDF_derive(ctx, out, outlen, params);
    EVP_KDF_CTX_free(ctx);
    return ok;
}

/// A P-384 public key from an encoded point (uncompressed 04||X||Y or compressed 02/03||X).
static inline EVP_PKEY *hsmb_p384_public_from_point(const unsigned char *pt, size_t ptlen) {
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    if (ctx == NULL) return NULL;
    EVP_PKEY *pkey = NULL;
    char group[] = "secp384r1";
    OSSL_PARAM params[3];
    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, group, 0);
    params[1] = OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, (void *)pt, ptlen);
    params[2] = OSSL_PARAM_construct_end();
    if (EVP_PKEY_fromdata_init(ctx) <= 0 ||
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) <= 0) {
        pkey = NULL;
    }
    EVP_PKEY_CTX_free(ctx);
    return pkey;
}

/// A fresh P-384 key pair.
static inline EVP_PKEY *hsmb_p384_generate(void) {
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    if (ctx == NULL) return NULL;
    EVP_PKEY *pkey = NULL;
    char group[] = "secp384r1";
    OSSL_PARAM params[2];
    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, group, 0);
    params[1] = OSSL_PARAM_construct_end();
    if (EVP_PKEY_keygen_init(ctx) <= 0 || EVP_PKEY_CTX_set_params(ctx, params) <= 0 ||
        EVP_PKEY_generate(ctx, &pkey) <= 0) {
        pkey = NULL;
    }
    EVP_PKEY_CTX_free(ctx);
    return pkey;
}

/// A P-384 key pair from DER (SEC1 ECPrivateKey or PKCS#8), for fixed test vectors only; NULL
/// when the bytes are not exactly one P-384 private key.
static inline EVP_PKEY *hsmb_p384_private_from_der(const unsigned char *der, size_t len) {
    const unsigned char *p = der;
    EVP_PKEY *pkey = d2i_AutoPrivateKey(NULL, &p, (long)len);
    if (pkey == NULL) return NULL;
    char group[32];
    size_t glen = 0;
    if (p != der + len || EVP_PKEY_get_base_id(pkey) != EVP_PKEY_EC ||
        EVP_PKEY_get_utf8_string_param(pkey, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof(group), &glen) <= 0 ||
        strcmp(group, "secp384r1") != 0) {
        EVP_PKEY_free(pkey);
        return NULL;
    }
    return pkey;
}

/// The public point of an EC key, compressed (02/03||X) or uncompressed (04||X||Y).
/// Returns the length written, or 0 on failure.
static inline size_t hsmb_ec_public_point(EVP_PKEY *pkey, int compressed,
                                          unsigned char *out, size_t outcap) {
    char fmt_c[] = "compressed", fmt_u[] = "uncompressed";
    if (EVP_PKEY_set_utf8_string_param(pkey, OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT,
                                       compressed ? fmt_c : fmt_u) <= 0) return 0;
    size_t len = 0;
    if (EVP_PKEY_get_octet_string_param(pkey, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY,
                                        out, outcap, &len) <= 0) return 0;
    return len;
}

#endif
