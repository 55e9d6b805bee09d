/* SHA-1, SHA-256 and HMAC-SHA256 for the handshake accept key and tokens.
 *
 * Why not EVP: in OpenSSL 3 every EVP call (and SHA256(), HMAC(),
 * RAND_bytes()) first loads the provider machinery, which paged ~2 MiB of
 * libcrypto into every relay and agent (idle RSS 5.2 -> 3.1 MiB without it,
 * measured with bench/run). The low-level SHA*_Init/Update/Final functions
 * are the same implementations without that layer; HMAC is RFC 2104 on top
 * of them. Pure: no I/O. */
#ifndef CV_DIGEST_H
#define CV_DIGEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CV_SHA1_LEN 20
#define CV_SHA256_LEN 32

/* SHA-1 of a followed by b. */
void cv_sha1_2(const void *a, size_t alen, const void *b, size_t blen, uint8_t out[CV_SHA1_LEN]);
/* SHA-256 of p[0..n). */
void cv_sha256(const void *p, size_t n, uint8_t out[CV_SHA256_LEN]);
/* HMAC-SHA256(key, msg) (RFC 2104). */
void cv_hmac_sha256(const void *key, size_t klen, const void *msg, size_t n,
                    uint8_t out[CV_SHA256_LEN]);
/* Whether given[0..glen) equals secret[0..slen), in time that depends on
 * glen only (the caller's length, which the peer already knows): every
 * given byte is compared with the secret read cyclically, and the length
 * difference is folded in at the end. A hash of both sides hides the length
 * as well but costs a SHA-256 block per check, a measurable share of a
 * gateway request at 80k req/s. slen must be > 0. */
bool cv_secret_eq(const void *given, size_t glen, const void *secret, size_t slen);

#endif
