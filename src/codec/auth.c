#include "codec/auth.h"

#include <limits.h>
#include <string.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include "codec/digest.h"

#include "core/err.h"

#define SIG_LEN 32     /* HMAC-SHA256 */
#define SIG_B64_LEN 43 /* base64url of 32 bytes, no padding */
/* Decoded header or payload: at most 3/4 of a maximal token. */
#define SEG_MAX (CV_AUTH_MAX_TOKEN / 4 * 3)

static const char JWT_HEADER[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";

static const char B64URL[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* Encodes p[0..n) as base64url without padding into out, which has room for
 * b64url_len(n) bytes (no NUL is written). Returns that length. */
static size_t b64url_len(size_t n)
{
    return n / 3 * 4 + (n % 3 ? n % 3 + 1 : 0);
}

static size_t b64url_encode(const uint8_t *p, size_t n, char *out)
{
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        out[o++] = B64URL[v >> 18 & 63];
        out[o++] = B64URL[v >> 12 & 63];
        out[o++] = B64URL[v >> 6 & 63];
        out[o++] = B64URL[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        out[o++] = B64URL[v >> 18 & 63];
        out[o++] = B64URL[v >> 12 & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        out[o++] = B64URL[v >> 18 & 63];
        out[o++] = B64URL[v >> 12 & 63];
        out[o++] = B64URL[v >> 6 & 63];
    }
    return o;
}

static int b64url_val(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

/* Decodes s[0..n) (base64url, no padding) into out[0..cap). Returns the
 * decoded length, or -1 for a character outside the alphabet, an impossible
 * length, non-zero trailing bits (non-canonical) or an output over cap. */
static long b64url_decode(const char *s, size_t n, uint8_t *out, size_t cap)
{
    uint32_t acc = 0;
    size_t o = 0;
    unsigned bits = 0;

    if (n % 4 == 1 || n / 4 * 3 + (n % 4 ? n % 4 - 1 : 0) > cap)
        return -1;
    for (size_t i = 0; i < n; i++) {
        int v = b64url_val(s[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6 | (uint32_t)v) & 0xffffff;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
        }
    }
    if ((acc & ((1u << bits) - 1)) != 0)
        return -1;
    return (long)o;
}

/* Writes the base64url HMAC-SHA256(secret, msg) into out. Returns 0 or -1. */
static int sign(const char *secret, const char *msg, size_t n, char out[SIG_B64_LEN])
{
    uint8_t md[CV_SHA256_LEN];
    cv_hmac_sha256(secret, strlen(secret), msg, n, md);
    b64url_encode(md, SIG_LEN, out);
    OPENSSL_cleanse(md, sizeof(md));
    return 0;
}

/* Compares token with the secret through their SHA-256 digests, so that
 * neither a length mismatch nor the position of the first difference shows
 * in the timing. */
static bool is_secret(const char *secret, const char *token, size_t len)
{
    uint8_t a[CV_SHA256_LEN], b[CV_SHA256_LEN];
    cv_sha256(secret, strlen(secret), a);
    cv_sha256(token, len, b);
    return CRYPTO_memcmp(a, b, sizeof a) == 0;
}

/* Decodes one base64url segment and parses it as a JSON object. */
static json_t *load_segment(const char *s, size_t n)
{
    uint8_t buf[SEG_MAX];
    long len = b64url_decode(s, n, buf, sizeof(buf));
    json_t *j;

    if (len <= 0)
        return NULL;
    j = json_loadb((const char *)buf, (size_t)len, JSON_REJECT_DUPLICATES, NULL);
    if (j != NULL && !json_is_object(j)) {
        json_decref(j);
        j = NULL;
    }
    return j;
}

static bool header_ok(const char *s, size_t n)
{
    json_t *h = load_segment(s, n);
    bool ok = false;

    if (h == NULL)
        return false;
    /* RFC 7515 §4.1.11: an unknown critical extension must be refused. */
    if (json_object_get(h, "crit") == NULL) {
        const char *alg = json_string_value(json_object_get(h, "alg"));
        ok = alg != NULL && strcmp(alg, "HS256") == 0;
    }
    json_decref(h);
    return ok;
}

/* Converts a JSON number to whole seconds, rounding a real up: for an
 * integer now, now >= ceil(exp) exactly when now >= exp. */
static int64_t exp_seconds(const json_t *v)
{
    double d;
    int64_t t;

    if (json_is_integer(v))
        return (int64_t)json_integer_value(v);
    d = json_real_value(v);
    if (d >= 9.2e18)
        return INT64_MAX;
    if (d <= -9.2e18)
        return INT64_MIN;
    t = (int64_t)d;
    return (double)t < d ? t + 1 : t;
}

/* Validates the agents claim (NULL = absent) and reports whether it names
 * agent_id (when not NULL) and whether it holds "*". Returns false if it is
 * not an array of strings. */
static bool scan_agents(const json_t *agents, const char *agent_id, bool *match, bool *any)
{
    size_t i;
    json_t *e;

    *match = *any = false;
    if (agents == NULL)
        return true;
    if (!json_is_array(agents))
        return false;
    json_array_foreach(agents, i, e)
    {
        const char *s = json_string_value(e);
        if (s == NULL)
            return false;
        if (strcmp(s, "*") == 0)
            *any = true;
        if (agent_id != NULL && strcmp(s, agent_id) == 0)
            *match = true;
    }
    *match = *match || *any;
    return true;
}

static enum cv_auth_result check_claims(const char *s, size_t n, const char *agent_id, int64_t now,
                                        struct cv_auth_claims *c)
{
    json_t *p = load_segment(s, n);
    const json_t *exp;
    bool match, any;
    enum cv_auth_result r = CV_AUTH_BAD;

    if (p == NULL)
        return CV_AUTH_BAD;
    exp = json_object_get(p, "exp");
    if (!json_is_number(exp) || !scan_agents(json_object_get(p, "agents"), agent_id, &match, &any))
        goto out;
    c->is_jwt = true;
    c->exp = exp_seconds(exp);
    c->any_agent = any;
    if (now >= c->exp)
        r = CV_AUTH_EXPIRED;
    else if (agent_id != NULL && !match)
        r = CV_AUTH_AGENT_DENIED;
    else
        r = CV_AUTH_OK;
out:
    json_decref(p);
    return r;
}

static enum cv_auth_result check_jwt(const char *secret, const char *tok, size_t len,
                                     const char *agent_id, int64_t now, struct cv_auth_claims *c)
{
    const char *d1 = memchr(tok, '.', len), *d2;
    char want[SIG_B64_LEN];
    size_t signed_len;
    int diff;

    if (d1 == NULL)
        return CV_AUTH_BAD;
    d2 = memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - tok));
    if (d2 == NULL || d1 == tok || d2 == d1 + 1)
        return CV_AUTH_BAD;
    signed_len = (size_t)(d2 - tok);
    /* Exactly three segments: a fourth would need another '.', which the
     * fixed-length signature cannot contain once it matches. */
    if (len - signed_len - 1 != SIG_B64_LEN)
        return CV_AUTH_BAD;
    /* Authenticate before parsing: unsigned JSON never reaches jansson. */
    if (sign(secret, tok, signed_len, want) != 0)
        return CV_AUTH_BAD;
    diff = CRYPTO_memcmp(want, d2 + 1, SIG_B64_LEN);
    OPENSSL_cleanse(want, sizeof(want));
    if (diff != 0)
        return CV_AUTH_BAD;
    if (!header_ok(tok, (size_t)(d1 - tok)))
        return CV_AUTH_BAD;
    return check_claims(d1 + 1, (size_t)(d2 - d1 - 1), agent_id, now, c);
}

enum cv_auth_result cv_auth_check_claims(const char *secret, const char *token, size_t token_len,
                                         const char *agent_id, int64_t now,
                                         struct cv_auth_claims *claims)
{
    struct cv_auth_claims c = {0};
    enum cv_auth_result r;

    if (token == NULL || token_len == 0)
        r = CV_AUTH_MISSING;
    else if (secret == NULL || secret[0] == '\0' || token_len > CV_AUTH_MAX_TOKEN)
        r = CV_AUTH_BAD;
    else if (is_secret(secret, token, token_len)) {
        c.exp = INT64_MAX;
        c.any_agent = true;
        r = CV_AUTH_OK;
    } else
        r = check_jwt(secret, token, token_len, agent_id, now, &c);
    if (r == CV_AUTH_MISSING || r == CV_AUTH_BAD)
        memset(&c, 0, sizeof(c));
    if (claims != NULL)
        *claims = c;
    return r;
}

enum cv_auth_result cv_auth_check(const char *secret, const char *token, size_t token_len,
                                  const char *agent_id, int64_t now)
{
    return cv_auth_check_claims(secret, token, token_len, agent_id, now, NULL);
}

const char *cv_auth_reason(enum cv_auth_result r)
{
    switch (r) {
    case CV_AUTH_OK: return "ok";
    case CV_AUTH_MISSING: return "missing token";
    case CV_AUTH_BAD: return "bad token";
    case CV_AUTH_EXPIRED: return "token expired";
    case CV_AUTH_AGENT_DENIED: return "token does not allow this agent";
    }
    return "unknown";
}

/* Serialises the claims object compactly, in insertion order, into
 * buf[0..cap). Returns its length, CV_EINVAL (an agent NULL or not UTF-8),
 * CV_ETOOBIG or CV_ENOMEM. */
static long payload_json(int64_t exp, const char *const *agents, size_t nagents, char *buf,
                         size_t cap)
{
    json_t *p = json_object(), *arr = NULL;
    long rc = CV_ENOMEM;
    size_t n;

    if (p == NULL || json_object_set_new(p, "exp", json_integer((json_int_t)exp)) != 0)
        goto out;
    if (agents != NULL) {
        arr = json_array();
        if (arr == NULL || json_object_set(p, "agents", arr) != 0)
            goto out;
        for (size_t i = 0; i < nagents; i++) {
            /* json_string refuses NULL and invalid UTF-8. */
            json_t *e = agents[i] != NULL ? json_string(agents[i]) : NULL;
            if (e == NULL) {
                rc = CV_EINVAL;
                goto out;
            }
            if (json_array_append_new(arr, e) != 0)
                goto out;
        }
    }
    /* json_dumpb returns the size it needs, writing only what fits. */
    n = json_dumpb(p, buf, cap, JSON_COMPACT);
    if (n > cap)
        rc = CV_ETOOBIG;
    else if (n > 0)
        rc = (long)n;
out:
    json_decref(arr);
    json_decref(p);
    return rc;
}

int cv_auth_make_jwt(const char *secret, int64_t exp, const char *const *agents, size_t nagents,
                     char *out, size_t cap)
{
    size_t hlen = b64url_len(sizeof(JWT_HEADER) - 1), plen, total;
    char payload[SEG_MAX];
    long n;

    if (secret == NULL || secret[0] == '\0' || out == NULL || (agents == NULL && nagents > 0))
        return CV_EINVAL;
    n = payload_json(exp, agents, nagents, payload, sizeof(payload));
    if (n < 0)
        return (int)n;
    plen = b64url_len((size_t)n);
    total = hlen + 1 + plen + 1 + SIG_B64_LEN;
    if (total > CV_AUTH_MAX_TOKEN || total >= cap)
        return CV_ETOOBIG;
    b64url_encode((const uint8_t *)JWT_HEADER, sizeof(JWT_HEADER) - 1, out);
    out[hlen] = '.';
    b64url_encode((const uint8_t *)payload, (size_t)n, out + hlen + 1);
    out[hlen + 1 + plen] = '.';
    if (sign(secret, out, hlen + 1 + plen, out + hlen + 1 + plen + 1) != 0)
        return CV_ENOMEM;
    out[total] = '\0';
    return (int)total;
}
