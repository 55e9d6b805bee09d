/* The low-level digest API is deprecated in OpenSSL 3 but kept; see
 * digest.h for why it is used here. */
#define OPENSSL_API_COMPAT 0x10101000L
#include "codec/digest.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <string.h>

void cv_sha1_2(const void *a, size_t alen, const void *b, size_t blen, uint8_t out[CV_SHA1_LEN])
{
    SHA_CTX ctx;
    SHA1_Init(&ctx);
    SHA1_Update(&ctx, a, alen);
    SHA1_Update(&ctx, b, blen);
    SHA1_Final(out, &ctx);
}

void cv_sha256(const void *p, size_t n, uint8_t out[CV_SHA256_LEN])
{
    SHA256_CTX ctx;
    SHA256_Init(&ctx);
    SHA256_Update(&ctx, p, n);
    SHA256_Final(out, &ctx);
    OPENSSL_cleanse(&ctx, sizeof ctx);
}

void cv_hmac_sha256(const void *key, size_t klen, const void *msg, size_t n,
                    uint8_t out[CV_SHA256_LEN])
{
    enum { BLOCK = 64 };
    uint8_t k[BLOCK] = {0}, pad[BLOCK], inner[CV_SHA256_LEN];
    if (klen > BLOCK)
        cv_sha256(key, klen, k);
    else if (klen > 0)
        memcpy(k, key, klen);
    SHA256_CTX ctx;
    for (int i = 0; i < BLOCK; i++)
        pad[i] = k[i] ^ 0x36;
    SHA256_Init(&ctx);
    SHA256_Update(&ctx, pad, BLOCK);
    SHA256_Update(&ctx, msg, n);
    SHA256_Final(inner, &ctx);
    for (int i = 0; i < BLOCK; i++)
        pad[i] = k[i] ^ 0x5c;
    SHA256_Init(&ctx);
    SHA256_Update(&ctx, pad, BLOCK);
    SHA256_Update(&ctx, inner, sizeof inner);
    SHA256_Final(out, &ctx);
    OPENSSL_cleanse(k, sizeof k);
    OPENSSL_cleanse(pad, sizeof pad);
    OPENSSL_cleanse(inner, sizeof inner);
    OPENSSL_cleanse(&ctx, sizeof ctx);
}

bool cv_secret_eq(const void *given, size_t glen, const void *secret, size_t slen)
{
    const volatile uint8_t *g = given;
    const volatile uint8_t *s = secret;
    unsigned diff = 0;
    size_t j = 0;
    if (slen == 0)
        return glen == 0;
    for (size_t i = 0; i < glen; i++) {
        diff |= (unsigned)(g[i] ^ s[j]);
        /* j = (j + 1) % slen without a division or a branch on slen */
        j++;
        j &= (size_t)0 - (size_t)(j < slen);
    }
    diff |= (unsigned)((glen ^ slen) != 0);
    return diff == 0;
}
