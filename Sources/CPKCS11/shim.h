// The PKCS#11 2.40 header of p11-kit (libp11-kit-dev), included by path: nothing from p11-kit is
// linked. Modules are loaded with dlopen at run time. Only PKCS11HSM imports this module.
// Compat mode (CRYPTOKI_GNU not defined): Swift sees the standard member names (pValue, ulValueLen).
#ifndef HSMBACKUP_CPKCS11_SHIM_H
#define HSMBACKUP_CPKCS11_SHIM_H
#include <dlfcn.h>
#include <stdlib.h>
#include <p11-kit-1/p11-kit/pkcs11.h>

// Macros with a C cast do not import into Swift: re-declared as constants.
static const CK_ULONG HB_CK_UNAVAILABLE_INFORMATION = (CK_ULONG)-1;
static const CK_BBOOL HB_TRUE = 1;
static const CK_BBOOL HB_FALSE = 0;
// PKCS#11 3.0 identifiers missing from the 2.40 header.
static const CK_ULONG HB_CKM_AES_KEY_WRAP_KWP = 0x210B;
static const CK_ULONG HB_CKM_SP800_108_COUNTER_KDF = 0x3AC;

// dlopen flags (macros; imported here as constants so Swift never needs Glibc's spelling).
static const int HB_RTLD_NOW_LOCAL = RTLD_NOW | RTLD_LOCAL;

// C_GetFunctionList through a symbol from dlsym, so Swift never casts a pointer to a function type.
static inline CK_RV hb_get_function_list(void *symbol, CK_FUNCTION_LIST_PTR_PTR list) {
    CK_C_GetFunctionList f = (CK_C_GetFunctionList)symbol;
    return f(list);
}
#endif
