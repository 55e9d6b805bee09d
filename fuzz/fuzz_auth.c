/* Fuzzes the relay credential check four ways:
 *  1. the input as a token against a fixed secret;
 *  2. the input split at its first NUL into secret and token;
 *  3. the input split at its first NUL into header and payload JSON, signed
 *     here with the fixed secret, so the JSON checks are reached, and compared
 *     with a reference decision written here with jansson;
 *  4. the input up to its first NUL as an agent id for cv_auth_make_jwt.
 * In every mode an accepted token must equal the secret or carry the HS256
 * signature recomputed here. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "codec/auth.h"
#include "core/err.h"

#define SECRET "fuzz-secret"
#define NOW INT64_C(1700000000)
#define LATER INT64_C(2000000000)

static const char *const AGENTS[] = {NULL, "c0ffee", "", "*", "beef"};
#define NAGENTS (sizeof(AGENTS) / sizeof(AGENTS[0]))

/* base64url without padding via OpenSSL's standard encoder; out needs
 * 4 * ceil(n / 3) + 1 bytes. */
static size_t b64url(const void *p, size_t n, char *out)
{
    int len = EVP_EncodeBlock((unsigned char *)out, p, (int)n);
    while (len > 0 && out[len - 1] == '=')
        len--;
    for (int i = 0; i < len; i++) {
        if (out[i] == '+')
            out[i] = '-';
        else if (out[i] == '/')
            out[i] = '_';
    }
    return (size_t)len;
}

/* out gets the 43-character signature of msg[0..n). */
static void hs256(const char *secret, size_t slen, const char *msg, size_t n, char *out)
{
    unsigned char md[32];
    unsigned md_len = 0;
    if (HMAC(EVP_sha256(), secret, (int)slen, (const unsigned char *)msg, n, md, &md_len) == NULL ||
        md_len != 32 || b64url(md, 32, out) != 43)
        abort();
}

/* Whether tok is the secret or a three-segment token whose last segment is
 * the HMAC of the rest. */
static bool authentic(const char *secret, const char *tok, size_t n)
{
    size_t slen = strlen(secret), dots = 0, last = 0;
    char sig[64];

    if (n == slen && memcmp(tok, secret, n) == 0)
        return true;
    for (size_t i = 0; i < n; i++)
        if (tok[i] == '.') {
            dots++;
            last = i;
        }
    if (dots != 2 || n - last - 1 != 43)
        return false;
    hs256(secret, slen, tok, last, sig);
    return memcmp(sig, tok + last + 1, 43) == 0;
}

/* Checks tok against secret for every agent id, with the invariants that
 * hold whatever the token. Fills res[] with the results. */
static void check_all(const char *secret, const char *tok, size_t n, int64_t now,
                      enum cv_auth_result res[NAGENTS])
{
    bool auth = authentic(secret, tok, n);

    for (size_t i = 0; i < NAGENTS; i++) {
        struct cv_auth_claims c;
        enum cv_auth_result r = cv_auth_check_claims(secret, tok, n, AGENTS[i], now, &c);
        res[i] = r;
        if (r != cv_auth_check(secret, tok, n, AGENTS[i], now))
            abort();
        if (cv_auth_reason(r) == NULL || strcmp(cv_auth_reason(r), "unknown") == 0)
            abort();
        /* Nothing unauthentic gets past BAD; MISSING only when empty. */
        if (r != CV_AUTH_BAD && r != CV_AUTH_MISSING && !auth)
            abort();
        if ((r == CV_AUTH_MISSING) != (n == 0))
            abort();
        if (n > CV_AUTH_MAX_TOKEN && r != CV_AUTH_BAD)
            abort();
        if ((r == CV_AUTH_BAD || r == CV_AUTH_MISSING) && (c.is_jwt || c.any_agent || c.exp))
            abort();
        if (r == CV_AUTH_OK && now >= c.exp)
            abort();
        if (r == CV_AUTH_EXPIRED && now < c.exp)
            abort();
        if (AGENTS[i] == NULL && r == CV_AUTH_AGENT_DENIED)
            abort();
        if (c.any_agent && r == CV_AUTH_AGENT_DENIED)
            abort();
        /* Validity and expiry do not depend on which agent asks. */
        if ((r == CV_AUTH_BAD) != (res[0] == CV_AUTH_BAD) ||
            (r == CV_AUTH_EXPIRED) != (res[0] == CV_AUTH_EXPIRED))
            abort();
    }
}

/* The decision PROTOCOL.md §1 asks for, given the JSON that was signed. */
static enum cv_auth_result reference(const char *h, size_t hn, const char *p, size_t pn,
                                     const char *agent, int64_t now)
{
    json_t *hj = json_loadb(h, hn, JSON_REJECT_DUPLICATES, NULL);
    json_t *pj = json_loadb(p, pn, JSON_REJECT_DUPLICATES, NULL);
    enum cv_auth_result r = CV_AUTH_BAD;
    const json_t *exp, *agents, *e;
    bool match = false;
    size_t i;

    if (!json_is_object(hj) || !json_is_object(pj) || json_object_get(hj, "crit") != NULL ||
        !json_is_string(json_object_get(hj, "alg")) ||
        strcmp(json_string_value(json_object_get(hj, "alg")), "HS256") != 0)
        goto out;
    exp = json_object_get(pj, "exp");
    agents = json_object_get(pj, "agents");
    if (!json_is_number(exp) || (agents != NULL && !json_is_array(agents)))
        goto out;
    json_array_foreach(agents, i, e)
    {
        if (!json_is_string(e))
            goto out;
        if (strcmp(json_string_value(e), "*") == 0 ||
            (agent != NULL && strcmp(json_string_value(e), agent) == 0))
            match = true;
    }
    if (json_is_integer(exp) ? now >= json_integer_value(exp) : (double)now >= json_real_value(exp))
        r = CV_AUTH_EXPIRED;
    else if (agent != NULL && !match)
        r = CV_AUTH_AGENT_DENIED;
    else
        r = CV_AUTH_OK;
out:
    json_decref(hj);
    json_decref(pj);
    return r;
}

static void signed_json(const uint8_t *data, size_t size)
{
    static char tok[2 * CV_AUTH_MAX_TOKEN + 64];
    const uint8_t *nul = memchr(data, '\0', size);
    enum cv_auth_result res[NAGENTS];

    if (nul == NULL || size > CV_AUTH_MAX_TOKEN)
        return;
    size_t hn = (size_t)(nul - data), pn = size - hn - 1;
    size_t n = b64url(data, hn, tok);
    tok[n++] = '.';
    n += b64url(nul + 1, pn, tok + n);
    hs256(SECRET, strlen(SECRET), tok, n, tok + n + 1);
    tok[n] = '.';
    n += 44;
    check_all(SECRET, tok, n, NOW, res);
    if (n > CV_AUTH_MAX_TOKEN)
        return;
    for (size_t i = 0; i < NAGENTS; i++)
        if (res[i] != reference((const char *)data, hn, (const char *)nul + 1, pn, AGENTS[i], NOW))
            abort();
}

static void made(const uint8_t *data, size_t size)
{
    char agent[256], other[258], tok[CV_AUTH_MAX_TOKEN + 1];
    const char *list[] = {agent};
    size_t n = strnlen((const char *)data, size < 255 ? size : 255);

    memcpy(agent, data, n);
    agent[n] = '\0';
    int len = cv_auth_make_jwt(SECRET, LATER, list, 1, tok, sizeof(tok));
    if (len == CV_EINVAL)
        return; /* not UTF-8 */
    if (len <= 0 || (size_t)len != strlen(tok))
        abort();
    if (cv_auth_check(SECRET, tok, (size_t)len, agent, NOW) != CV_AUTH_OK ||
        cv_auth_check(SECRET, tok, (size_t)len, NULL, NOW) != CV_AUTH_OK ||
        cv_auth_check(SECRET, tok, (size_t)len, agent, LATER) != CV_AUTH_EXPIRED ||
        cv_auth_check(SECRET "x", tok, (size_t)len, agent, NOW) != CV_AUTH_BAD)
        abort();
    memcpy(other, agent, n);
    memcpy(other + n, "\x01", 2);
    if (cv_auth_check(SECRET, tok, (size_t)len, other, NOW) !=
        (strcmp(agent, "*") == 0 ? CV_AUTH_OK : CV_AUTH_AGENT_DENIED))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    enum cv_auth_result res[NAGENTS];
    const uint8_t *nul = memchr(data, '\0', size);

    check_all(SECRET, (const char *)data, size, NOW, res);
    if (nul != NULL && nul != data) {
        /* The secret must be NUL-terminated: copy it out. */
        size_t slen = (size_t)(nul - data);
        char *secret = malloc(slen + 1);
        if (secret == NULL)
            return 0;
        memcpy(secret, data, slen);
        secret[slen] = '\0';
        check_all(secret, (const char *)nul + 1, size - slen - 1, NOW, res);
        free(secret);
    }
    signed_json(data, size);
    made(data, size);
    return 0;
}
