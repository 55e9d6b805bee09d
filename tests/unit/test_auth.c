/* Relay credentials: the shared secret, HS256 JWTs (an independently computed
 * vector, tokens signed here over hand-written JSON), every refusal. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "codec/auth.h"
#include "codec/digest.h"
#include "core/err.h"

#define SECRET "s3cret-relay"
#define NOW INT64_C(1700000000)
#define LATER INT64_C(2000000000)

/* Computed independently of culvert with:
 * /usr/bin/python3 -c 'import hmac,hashlib,base64;b=lambda x:base64.urlsafe_b64encode(x)
 *   .rstrip(b"=").decode();h=b(b"{\"typ\":\"JWT\",\"alg\":\"HS256\"}");p=b(b"{\"sub\":\"ci\",
 *   \"exp\":2000000000,\"agents\":[\"c0ffee\",\"beef\"]}");m=(h+"."+p).encode();
 *   print(m.decode()+"."+b(hmac.new(b"s3cret-relay",m,hashlib.sha256).digest()))'
 * (one line in the shell). */
static const char PY_JWT[] =
    "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9."
    "eyJzdWIiOiJjaSIsImV4cCI6MjAwMDAwMDAwMCwiYWdlbnRzIjpbImMwZmZlZSIsImJlZWYiXX0."
    "s1cep26vyT8Bf8HZf4LrtNO0oMOp2QCvDL_bi8S4zE0";

/* What cv_auth_make_jwt(SECRET, 2000000000, {"c0ffee"}, 1) must produce, from
 * the same command with h = {"alg":"HS256","typ":"JWT"} and
 * p = {"exp":2000000000,"agents":["c0ffee"]}. */
static const char PY_MADE[] = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
                              "eyJleHAiOjIwMDAwMDAwMDAsImFnZW50cyI6WyJjMGZmZWUiXX0."
                              "lbMbfI-i9Hvz9yrrmAgdxx2cmU7TRxUQoLOeGM2M5rs";

static const char HS256[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";

/* Test-side base64url (no padding), independent of the codec's. */
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
    out[len] = '\0';
    return (size_t)len;
}

/* Joins two already-encoded segments and appends their HS256 signature. */
static size_t sign_raw(const char *secret, const char *hseg, const char *pseg, char *out)
{
    unsigned char md[32];
    unsigned md_len = 0;
    size_t n = (size_t)snprintf(out, 8192, "%s.%s", hseg, pseg);
    assert_non_null(
        HMAC(EVP_sha256(), secret, (int)strlen(secret), (unsigned char *)out, n, md, &md_len));
    out[n++] = '.';
    return n + b64url(md, md_len, out + n);
}

/* A token over arbitrary header and payload JSON, correctly signed, so a
 * refusal must come from the JSON checks and not from the signature. */
static size_t sign_json(const char *secret, const char *hdr, const char *payload, char *out)
{
    static char h[8192], p[8192];
    b64url(hdr, strlen(hdr), h);
    b64url(payload, strlen(payload), p);
    return sign_raw(secret, h, p, out);
}

static enum cv_auth_result check_json(const char *hdr, const char *payload, const char *agent,
                                      int64_t now)
{
    static char tok[16384];
    size_t n = sign_json(SECRET, hdr, payload, tok);
    return cv_auth_check(SECRET, tok, n, agent, now);
}

static enum cv_auth_result chk(const char *tok, const char *agent, int64_t now)
{
    return cv_auth_check(SECRET, tok, strlen(tok), agent, now);
}

static void test_shared_secret(void **state)
{
    struct cv_auth_claims c;

    assert_int_equal(chk(SECRET, NULL, NOW), CV_AUTH_OK);
    assert_int_equal(chk(SECRET, "c0ffee", NOW), CV_AUTH_OK);
    assert_int_equal(cv_auth_check_claims(SECRET, SECRET, strlen(SECRET), "x", INT64_MAX, &c),
                     CV_AUTH_OK);
    assert_false(c.is_jwt);
    assert_true(c.any_agent);
    assert_true(c.exp == INT64_MAX);

    assert_int_equal(chk("s3cret-relaX", NULL, NOW), CV_AUTH_BAD);
    assert_int_equal(chk("s3cret-rela", NULL, NOW), CV_AUTH_BAD);
    assert_int_equal(chk("s3cret-relay ", NULL, NOW), CV_AUTH_BAD);
    assert_int_equal(chk("S3CRET-RELAY", NULL, NOW), CV_AUTH_BAD);
    /* token_len counts: an embedded NUL is part of the token. */
    assert_int_equal(cv_auth_check(SECRET, SECRET "\0x", sizeof(SECRET) + 1, NULL, NOW),
                     CV_AUTH_BAD);
    assert_int_equal(cv_auth_check(SECRET, SECRET, strlen(SECRET) - 1, NULL, NOW), CV_AUTH_BAD);

    assert_int_equal(cv_auth_check(SECRET, NULL, 0, NULL, NOW), CV_AUTH_MISSING);
    assert_int_equal(cv_auth_check(SECRET, NULL, 5, NULL, NOW), CV_AUTH_MISSING);
    assert_int_equal(cv_auth_check(SECRET, "", 0, "c0ffee", NOW), CV_AUTH_MISSING);
    assert_int_equal(cv_auth_check(SECRET, SECRET, 0, NULL, NOW), CV_AUTH_MISSING);

    /* A relay without a secret accepts nothing, not even an empty match. */
    assert_int_equal(cv_auth_check("", "x", 1, NULL, NOW), CV_AUTH_BAD);
    assert_int_equal(cv_auth_check(NULL, "x", 1, NULL, NOW), CV_AUTH_BAD);
    assert_int_equal(cv_auth_check("", NULL, 0, NULL, NOW), CV_AUTH_MISSING);
    assert_int_equal(cv_auth_check_claims(SECRET, "nope", 4, NULL, NOW, &c), CV_AUTH_BAD);
    assert_false(c.is_jwt || c.any_agent || c.exp != 0);
}

static void test_make_jwt(void **state)
{
    const char *agents[] = {"c0ffee"};
    char tok[CV_AUTH_MAX_TOKEN + 1];
    struct cv_auth_claims c;
    int n = cv_auth_make_jwt(SECRET, LATER, agents, 1, tok, sizeof(tok));

    assert_int_equal(n, (int)strlen(PY_MADE));
    assert_string_equal(tok, PY_MADE);
    assert_int_equal(cv_auth_check_claims(SECRET, tok, (size_t)n, "c0ffee", NOW, &c), CV_AUTH_OK);
    assert_true(c.is_jwt);
    assert_false(c.any_agent);
    assert_true(c.exp == LATER);
    assert_int_equal(cv_auth_check(SECRET, tok, (size_t)n, NULL, NOW), CV_AUTH_OK);
    assert_int_equal(cv_auth_check(SECRET, tok, (size_t)n, "c0ffe", NOW), CV_AUTH_AGENT_DENIED);

    /* No agents claim: forward sessions only. */
    n = cv_auth_make_jwt(SECRET, LATER, NULL, 0, tok, sizeof(tok));
    assert_true(n > 0);
    assert_int_equal(cv_auth_check(SECRET, tok, (size_t)n, NULL, NOW), CV_AUTH_OK);
    assert_int_equal(cv_auth_check(SECRET, tok, (size_t)n, "c0ffee", NOW), CV_AUTH_AGENT_DENIED);

    /* An empty list behaves like none; "*" like all; ids with JSON escapes. */
    n = cv_auth_make_jwt(SECRET, LATER, agents, 0, tok, sizeof(tok));
    assert_int_equal(cv_auth_check(SECRET, tok, (size_t)n, "c0ffee", NOW), CV_AUTH_AGENT_DENIED);
    const char *star[] = {"a\"b\\c", "*"};
    n = cv_auth_make_jwt(SECRET, LATER, star, 2, tok, sizeof(tok));
    assert_int_equal(cv_auth_check_claims(SECRET, tok, (size_t)n, "anything", NOW, &c), CV_AUTH_OK);
    assert_true(c.any_agent);
    const char *esc[] = {"a\"b\\c\n\xc3\xa9"};
    n = cv_auth_make_jwt(SECRET, LATER, esc, 1, tok, sizeof(tok));
    assert_int_equal(cv_auth_check(SECRET, tok, (size_t)n, esc[0], NOW), CV_AUTH_OK);
    assert_int_equal(cv_auth_check(SECRET, tok, (size_t)n, "a\"b\\c\n", NOW), CV_AUTH_AGENT_DENIED);

    /* Negative and extreme exp round-trip. */
    n = cv_auth_make_jwt(SECRET, INT64_MAX, NULL, 0, tok, sizeof(tok));
    assert_int_equal(cv_auth_check(SECRET, tok, (size_t)n, NULL, INT64_MAX - 1), CV_AUTH_OK);
    n = cv_auth_make_jwt(SECRET, INT64_MIN, NULL, 0, tok, sizeof(tok));
    assert_int_equal(cv_auth_check(SECRET, tok, (size_t)n, NULL, INT64_MIN), CV_AUTH_EXPIRED);
}

static void test_make_jwt_errors(void **state)
{
    const char *agents[] = {"c0ffee"};
    const char *bad_utf8[] = {"ok", "\xff\xfe"};
    const char *null_entry[] = {"ok", NULL};
    char tok[CV_AUTH_MAX_TOKEN + 1];
    size_t len = strlen(PY_MADE);

    assert_int_equal(cv_auth_make_jwt(NULL, LATER, agents, 1, tok, sizeof(tok)), CV_EINVAL);
    assert_int_equal(cv_auth_make_jwt("", LATER, agents, 1, tok, sizeof(tok)), CV_EINVAL);
    assert_int_equal(cv_auth_make_jwt(SECRET, LATER, agents, 1, NULL, 100), CV_EINVAL);
    assert_int_equal(cv_auth_make_jwt(SECRET, LATER, NULL, 1, tok, sizeof(tok)), CV_EINVAL);
    assert_int_equal(cv_auth_make_jwt(SECRET, LATER, bad_utf8, 2, tok, sizeof(tok)), CV_EINVAL);
    assert_int_equal(cv_auth_make_jwt(SECRET, LATER, null_entry, 2, tok, sizeof(tok)), CV_EINVAL);

    /* cap must hold the NUL too. */
    assert_int_equal(cv_auth_make_jwt(SECRET, LATER, agents, 1, tok, len), CV_ETOOBIG);
    assert_int_equal(cv_auth_make_jwt(SECRET, LATER, agents, 1, tok, len + 1), (int)len);
    assert_string_equal(tok, PY_MADE);
    assert_int_equal(cv_auth_make_jwt(SECRET, LATER, agents, 1, tok, 0), CV_ETOOBIG);

    /* A token the checker would refuse as oversized is never made. */
    static char big[3000];
    memset(big, 'a', sizeof(big) - 1);
    const char *many[] = {big};
    static char huge[16384];
    assert_int_equal(cv_auth_make_jwt(SECRET, LATER, many, 1, huge, sizeof(huge)), CV_ETOOBIG);
}

static void test_python_vector(void **state)
{
    struct cv_auth_claims c;

    assert_int_equal(chk(PY_JWT, "c0ffee", NOW), CV_AUTH_OK);
    assert_int_equal(chk(PY_JWT, "beef", NOW), CV_AUTH_OK);
    assert_int_equal(chk(PY_JWT, NULL, NOW), CV_AUTH_OK);
    assert_int_equal(chk(PY_JWT, "c0ffe", NOW), CV_AUTH_AGENT_DENIED);
    assert_int_equal(chk(PY_JWT, "c0ffee ", NOW), CV_AUTH_AGENT_DENIED);
    assert_int_equal(chk(PY_JWT, "", NOW), CV_AUTH_AGENT_DENIED);
    /* exp is exclusive: expired from exp on; expiry before agent. */
    assert_int_equal(chk(PY_JWT, "beef", LATER - 1), CV_AUTH_OK);
    assert_int_equal(chk(PY_JWT, "beef", LATER), CV_AUTH_EXPIRED);
    assert_int_equal(chk(PY_JWT, "other", LATER + 1), CV_AUTH_EXPIRED);
    assert_int_equal(cv_auth_check_claims(SECRET, PY_JWT, strlen(PY_JWT), NULL, LATER, &c),
                     CV_AUTH_EXPIRED);
    assert_true(c.is_jwt && c.exp == LATER && !c.any_agent);
    /* Signed with another secret. */
    assert_int_equal(cv_auth_check("s3cret-relaz", PY_JWT, strlen(PY_JWT), NULL, NOW), CV_AUTH_BAD);
    assert_int_equal(cv_auth_check("s3cret-rela", PY_JWT, strlen(PY_JWT), NULL, NOW), CV_AUTH_BAD);
}

static void test_wrong_secret(void **state)
{
    char tok[CV_AUTH_MAX_TOKEN + 1];
    int n = cv_auth_make_jwt("other-secret", LATER, NULL, 0, tok, sizeof(tok));
    assert_int_equal(cv_auth_check(SECRET, tok, (size_t)n, NULL, NOW), CV_AUTH_BAD);
    assert_int_equal(cv_auth_check("other-secret", tok, (size_t)n, NULL, NOW), CV_AUTH_OK);
}

static void test_alg(void **state)
{
    const char *p = "{\"exp\":2000000000}";
    char tok[1024];
    char h[256], pl[256];

    assert_int_equal(check_json(HS256, p, NULL, NOW), CV_AUTH_OK);
    assert_int_equal(check_json("{\"alg\":\"HS256\"}", p, NULL, NOW), CV_AUTH_OK);
    assert_int_equal(check_json("{\"typ\":\"whatever\",\"alg\":\"HS256\"}", p, NULL, NOW),
                     CV_AUTH_OK);
    /* Correctly HMAC'd, yet the header names another algorithm. */
    assert_int_equal(check_json("{\"alg\":\"none\",\"typ\":\"JWT\"}", p, NULL, NOW), CV_AUTH_BAD);
    assert_int_equal(check_json("{\"alg\":\"HS512\"}", p, NULL, NOW), CV_AUTH_BAD);
    assert_int_equal(check_json("{\"alg\":\"RS256\"}", p, NULL, NOW), CV_AUTH_BAD);
    assert_int_equal(check_json("{\"alg\":\"hs256\"}", p, NULL, NOW), CV_AUTH_BAD);
    assert_int_equal(check_json("{\"alg\":\"HS256 \"}", p, NULL, NOW), CV_AUTH_BAD);
    assert_int_equal(check_json("{\"typ\":\"JWT\"}", p, NULL, NOW), CV_AUTH_BAD);
    assert_int_equal(check_json("{\"alg\":null}", p, NULL, NOW), CV_AUTH_BAD);
    assert_int_equal(check_json("{\"alg\":[\"HS256\"]}", p, NULL, NOW), CV_AUTH_BAD);
    assert_int_equal(check_json("{\"alg\":\"HS256\",\"alg\":\"HS256\"}", p, NULL, NOW),
                     CV_AUTH_BAD);
    assert_int_equal(check_json("{\"alg\":\"HS256\",\"crit\":[\"b64\"]}", p, NULL, NOW),
                     CV_AUTH_BAD);
    assert_int_equal(check_json("[\"HS256\"]", p, NULL, NOW), CV_AUTH_BAD);
    assert_int_equal(check_json("\"HS256\"", p, NULL, NOW), CV_AUTH_BAD);
    assert_int_equal(check_json("{\"alg\":\"HS256\"", p, NULL, NOW), CV_AUTH_BAD);

    /* The classic unsigned token: alg none with an empty signature. */
    b64url("{\"alg\":\"none\"}", 14, h);
    b64url(p, strlen(p), pl);
    snprintf(tok, sizeof(tok), "%s.%s.", h, pl);
    assert_int_equal(chk(tok, NULL, NOW), CV_AUTH_BAD);
}

static void test_tampered(void **state)
{
    char tok[CV_AUTH_MAX_TOKEN + 1], t2[CV_AUTH_MAX_TOKEN + 1];
    const char *agents[] = {"c0ffee"};
    int n = cv_auth_make_jwt(SECRET, LATER, agents, 1, tok, sizeof(tok));

    /* Every single-byte change anywhere is refused (never OK). */
    for (int i = 0; i < n; i++) {
        const char subst[] = {'A', 'e', '_', '-', '.', '=', '\0'};
        for (size_t k = 0; k < sizeof(subst); k++) {
            if (tok[i] == subst[k])
                continue;
            memcpy(t2, tok, (size_t)n + 1);
            t2[i] = subst[k];
            assert_int_equal(cv_auth_check(SECRET, t2, (size_t)n, "c0ffee", NOW), CV_AUTH_BAD);
        }
    }
    /* Every truncation, and every extension by one byte. */
    for (int i = 1; i < n; i++)
        assert_int_equal(cv_auth_check(SECRET, tok, (size_t)i, "c0ffee", NOW), CV_AUTH_BAD);
    memcpy(t2, tok, (size_t)n);
    t2[n] = 'A';
    assert_int_equal(cv_auth_check(SECRET, t2, (size_t)n + 1, "c0ffee", NOW), CV_AUTH_BAD);
    t2[n] = '=';
    assert_int_equal(cv_auth_check(SECRET, t2, (size_t)n + 1, "c0ffee", NOW), CV_AUTH_BAD);

    /* A payload swapped in from another token (more agents) keeps the old
     * signature. */
    const char *more[] = {"c0ffee", "*"};
    char other[CV_AUTH_MAX_TOKEN + 1];
    cv_auth_make_jwt(SECRET, LATER, more, 2, other, sizeof(other));
    char *d1 = strchr(tok, '.'), *d2 = strrchr(tok, '.');
    char *o1 = strchr(other, '.'), *o2 = strrchr(other, '.');
    snprintf(t2, sizeof(t2), "%.*s%.*s%s", (int)(d1 - tok), tok, (int)(o2 - o1), o1, d2);
    assert_int_equal(chk(t2, "x", NOW), CV_AUTH_BAD);
}

static void test_bad_base64url(void **state)
{
    char tok[1024], h[256], p[256];

    b64url(HS256, strlen(HS256), h);
    b64url("{\"exp\":2000000000}", 18, p);
    sign_raw(SECRET, h, p, tok);
    assert_int_equal(chk(tok, NULL, NOW), CV_AUTH_OK);

    /* Each of these is signed correctly over its own (bad) text. */
    char bad[2048];
    /* Standard alphabet / padding characters. */
    snprintf(bad, sizeof(bad), "%s=", p);
    sign_raw(SECRET, h, bad, tok);
    assert_int_equal(chk(tok, NULL, NOW), CV_AUTH_BAD);
    snprintf(bad, sizeof(bad), "%s", p);
    bad[3] = '+';
    sign_raw(SECRET, h, bad, tok);
    assert_int_equal(chk(tok, NULL, NOW), CV_AUTH_BAD);
    bad[3] = '/';
    sign_raw(SECRET, h, bad, tok);
    assert_int_equal(chk(tok, NULL, NOW), CV_AUTH_BAD);
    bad[3] = ' ';
    sign_raw(SECRET, h, bad, tok);
    assert_int_equal(chk(tok, NULL, NOW), CV_AUTH_BAD);
    /* Length 1 mod 4 cannot be base64 (h is 36 characters). */
    snprintf(bad, sizeof(bad), "%sA", h);
    assert_int_equal(strlen(bad) % 4, 1);
    sign_raw(SECRET, bad, p, tok);
    assert_int_equal(chk(tok, NULL, NOW), CV_AUTH_BAD);
    /* Non-canonical: {"exp":20} is eyJleHAiOjIwfQ; lenient decoders also read
     * ...fR and ...fS as the same bytes, whose stray low bits we refuse. */
    sign_raw(SECRET, "eyJhbGciOiJIUzI1NiJ9", "eyJleHAiOjIwfQ", tok);
    assert_int_equal(chk(tok, NULL, 19), CV_AUTH_OK);
    sign_raw(SECRET, "eyJhbGciOiJIUzI1NiJ9", "eyJleHAiOjIwfR", tok);
    assert_int_equal(chk(tok, NULL, 19), CV_AUTH_BAD);
    sign_raw(SECRET, "eyJhbGciOiJIUzI1NiJ9", "eyJleHAiOjIwfS", tok);
    assert_int_equal(chk(tok, NULL, 19), CV_AUTH_BAD);

    /* A signature in the standard alphabet or with padding. */
    sign_raw(SECRET, h, p, tok);
    size_t n = strlen(tok);
    snprintf(bad, sizeof(bad), "%s=", tok);
    assert_int_equal(chk(bad, NULL, NOW), CV_AUTH_BAD);
    for (size_t i = n - 43; i < n; i++) {
        if (tok[i] == '-' || tok[i] == '_') {
            char save = tok[i];
            tok[i] = save == '-' ? '+' : '/';
            assert_int_equal(chk(tok, NULL, NOW), CV_AUTH_BAD);
            tok[i] = save;
        }
    }
}

static void test_segments(void **state)
{
    char tok[1024], t2[2048], h[256], p[256];

    b64url(HS256, strlen(HS256), h);
    b64url("{\"exp\":2000000000}", 18, p);
    size_t n = sign_raw(SECRET, h, p, tok);

    snprintf(t2, sizeof(t2), "%s.", tok);
    assert_int_equal(chk(t2, NULL, NOW), CV_AUTH_BAD);
    snprintf(t2, sizeof(t2), "%s.AAAA", tok);
    assert_int_equal(chk(t2, NULL, NOW), CV_AUTH_BAD);
    snprintf(t2, sizeof(t2), "%s.%s", h, tok);
    assert_int_equal(chk(t2, NULL, NOW), CV_AUTH_BAD);
    /* Four segments signed as if the first three were header.payload. */
    char hp[600];
    snprintf(hp, sizeof(hp), "%s.%s", h, p);
    sign_raw(SECRET, hp, p, t2);
    assert_int_equal(chk(t2, NULL, NOW), CV_AUTH_BAD);
    /* Two segments, one, empty ones. */
    snprintf(t2, sizeof(t2), "%s.%s", h, p);
    assert_int_equal(chk(t2, NULL, NOW), CV_AUTH_BAD);
    assert_int_equal(chk(h, NULL, NOW), CV_AUTH_BAD);
    assert_int_equal(chk(".", NULL, NOW), CV_AUTH_BAD);
    assert_int_equal(chk("..", NULL, NOW), CV_AUTH_BAD);
    assert_int_equal(chk("...", NULL, NOW), CV_AUTH_BAD);
    sign_raw(SECRET, "", p, t2);
    assert_int_equal(chk(t2, NULL, NOW), CV_AUTH_BAD);
    sign_raw(SECRET, h, "", t2);
    assert_int_equal(chk(t2, NULL, NOW), CV_AUTH_BAD);
    /* The signature alone, or without its first segment. */
    assert_int_equal(chk(tok + n - 43, NULL, NOW), CV_AUTH_BAD);
    assert_int_equal(chk(tok + strlen(h), NULL, NOW), CV_AUTH_BAD);
}

static void test_agents(void **state)
{
    const char *h = HS256;
    const char *list = "{\"exp\":2000000000,\"agents\":[\"c0ffee\",\"beef\"]}";
    const char *star = "{\"agents\":[\"x\",\"*\"],\"exp\":2000000000}";
    const char *none = "{\"exp\":2000000000}";
    const char *empty = "{\"exp\":2000000000,\"agents\":[]}";

    assert_int_equal(check_json(h, list, "c0ffee", NOW), CV_AUTH_OK);
    assert_int_equal(check_json(h, list, "beef", NOW), CV_AUTH_OK);
    assert_int_equal(check_json(h, list, "dead", NOW), CV_AUTH_AGENT_DENIED);
    assert_int_equal(check_json(h, list, "C0FFEE", NOW), CV_AUTH_AGENT_DENIED);
    assert_int_equal(check_json(h, list, "*", NOW), CV_AUTH_AGENT_DENIED);
    assert_int_equal(check_json(h, list, NULL, NOW), CV_AUTH_OK);
    assert_int_equal(check_json(h, star, "dead", NOW), CV_AUTH_OK);
    assert_int_equal(check_json(h, star, "", NOW), CV_AUTH_OK);
    assert_int_equal(check_json(h, none, "c0ffee", NOW), CV_AUTH_AGENT_DENIED);
    assert_int_equal(check_json(h, none, NULL, NOW), CV_AUTH_OK);
    assert_int_equal(check_json(h, empty, "c0ffee", NOW), CV_AUTH_AGENT_DENIED);
    assert_int_equal(check_json(h, empty, NULL, NOW), CV_AUTH_OK);
    /* Expiry is reported before the agent. */
    assert_int_equal(check_json(h, none, "c0ffee", LATER), CV_AUTH_EXPIRED);

    /* Malformed agents claims are bad whether or not an agent is asked for. */
    const char *malformed[] = {
        "{\"exp\":2000000000,\"agents\":[\"c0ffee\",1]}",
        "{\"exp\":2000000000,\"agents\":[null]}",
        "{\"exp\":2000000000,\"agents\":[[\"c0ffee\"]]}",
        "{\"exp\":2000000000,\"agents\":[\"*\",{}]}",
        "{\"exp\":2000000000,\"agents\":\"c0ffee\"}",
        "{\"exp\":2000000000,\"agents\":\"*\"}",
        "{\"exp\":2000000000,\"agents\":null}",
        "{\"exp\":2000000000,\"agents\":{\"c0ffee\":true}}",
        "{\"exp\":2000000000,\"agents\":[\"a\\u0000b\"]}",
        "{\"exp\":2000000000,\"agents\":[\"a\"],\"agents\":[\"*\"]}",
    };
    for (size_t i = 0; i < sizeof(malformed) / sizeof(malformed[0]); i++) {
        assert_int_equal(check_json(h, malformed[i], "c0ffee", NOW), CV_AUTH_BAD);
        assert_int_equal(check_json(h, malformed[i], NULL, NOW), CV_AUTH_BAD);
    }
}

static void test_exp(void **state)
{
    const char *h = HS256;

    assert_int_equal(check_json(h, "{\"exp\":1700000001}", NULL, NOW), CV_AUTH_OK);
    assert_int_equal(check_json(h, "{\"exp\":1700000000}", NULL, NOW), CV_AUTH_EXPIRED);
    assert_int_equal(check_json(h, "{\"exp\":0}", NULL, NOW), CV_AUTH_EXPIRED);
    assert_int_equal(check_json(h, "{\"exp\":-5}", NULL, NOW), CV_AUTH_EXPIRED);
    /* Reals: a fractional exp expires at the first whole second past it. */
    assert_int_equal(check_json(h, "{\"exp\":1700000000.5}", NULL, NOW), CV_AUTH_OK);
    assert_int_equal(check_json(h, "{\"exp\":1700000000.5}", NULL, NOW + 1), CV_AUTH_EXPIRED);
    assert_int_equal(check_json(h, "{\"exp\":1699999999.9}", NULL, NOW), CV_AUTH_EXPIRED);
    assert_int_equal(check_json(h, "{\"exp\":2e9}", NULL, NOW), CV_AUTH_OK);
    assert_int_equal(check_json(h, "{\"exp\":1e300}", NULL, INT64_MAX - 1), CV_AUTH_OK);
    assert_int_equal(check_json(h, "{\"exp\":-1e300}", NULL, INT64_MIN), CV_AUTH_EXPIRED);
    assert_int_equal(check_json(h, "{\"exp\":9223372036854775807}", NULL, NOW), CV_AUTH_OK);
    /* Beyond what a number can hold: jansson refuses it. */
    assert_int_equal(check_json(h, "{\"exp\":99999999999999999999}", NULL, NOW), CV_AUTH_BAD);
    assert_int_equal(check_json(h, "{\"exp\":1e400}", NULL, NOW), CV_AUTH_BAD);

    assert_int_equal(check_json(h, "{}", NULL, NOW), CV_AUTH_BAD);
    assert_int_equal(check_json(h, "{\"agents\":[\"*\"]}", NULL, NOW), CV_AUTH_BAD);
    assert_int_equal(check_json(h, "{\"exp\":\"2000000000\"}", NULL, NOW), CV_AUTH_BAD);
    assert_int_equal(check_json(h, "{\"exp\":true}", NULL, NOW), CV_AUTH_BAD);
    assert_int_equal(check_json(h, "{\"exp\":null}", NULL, NOW), CV_AUTH_BAD);
    assert_int_equal(check_json(h, "{\"exp\":[2000000000]}", NULL, NOW), CV_AUTH_BAD);
    assert_int_equal(check_json(h, "{\"exp\":1,\"exp\":2000000000}", NULL, NOW), CV_AUTH_BAD);
    assert_int_equal(check_json(h, "{\"EXP\":2000000000}", NULL, NOW), CV_AUTH_BAD);
    /* Not an object, not JSON, trailing garbage. */
    assert_int_equal(check_json(h, "[2000000000]", NULL, NOW), CV_AUTH_BAD);
    assert_int_equal(check_json(h, "2000000000", NULL, NOW), CV_AUTH_BAD);
    assert_int_equal(check_json(h, "{\"exp\":2000000000", NULL, NOW), CV_AUTH_BAD);
    assert_int_equal(check_json(h, "{\"exp\":2000000000}x", NULL, NOW), CV_AUTH_BAD);
    assert_int_equal(check_json(h, "{\"exp\":2000000000}{}", NULL, NOW), CV_AUTH_BAD);
    /* Unknown claims are ignored. */
    assert_int_equal(check_json(h, "{\"sub\":\"x\",\"nbf\":\"?\",\"exp\":2000000000}", NULL, NOW),
                     CV_AUTH_OK);
}

static void test_oversized(void **state)
{
    static char secret[CV_AUTH_MAX_TOKEN + 2], tok[16384], p[8192];

    /* A secret over the cap cannot be presented as a token. */
    memset(secret, 'k', CV_AUTH_MAX_TOKEN + 1);
    assert_int_equal(cv_auth_check(secret, secret, CV_AUTH_MAX_TOKEN + 1, NULL, NOW), CV_AUTH_BAD);
    secret[CV_AUTH_MAX_TOKEN] = '\0';
    assert_int_equal(cv_auth_check(secret, secret, CV_AUTH_MAX_TOKEN, NULL, NOW), CV_AUTH_OK);

    /* A correctly signed JWT just over the cap, and one just under it. */
    size_t fill = 3000;
    int len = snprintf(p, sizeof(p), "{\"exp\":2000000000,\"sub\":\"");
    memset(p + len, 'x', fill);
    snprintf(p + len + fill, sizeof(p) - (size_t)len - fill, "\"}");
    size_t n = sign_json(SECRET, HS256, p, tok);
    assert_true(n > CV_AUTH_MAX_TOKEN);
    assert_int_equal(cv_auth_check(SECRET, tok, n, NULL, NOW), CV_AUTH_BAD);
    /* Trim the filler until the token fits exactly. */
    size_t over = n - CV_AUTH_MAX_TOKEN;
    fill -= over * 3 / 4 + 3;
    snprintf(p + len + fill, sizeof(p) - (size_t)len - fill, "\"}");
    n = sign_json(SECRET, HS256, p, tok);
    assert_true(n <= CV_AUTH_MAX_TOKEN && n > CV_AUTH_MAX_TOKEN - 8);
    assert_int_equal(cv_auth_check(SECRET, tok, n, NULL, NOW), CV_AUTH_OK);
}

/* cv_secret_eq: equal only for the same bytes and length, whatever the
 * given length (shorter, longer, a multiple of the secret). */
static void test_secret_eq(void **state)
{
    (void)state;
    assert_true(cv_secret_eq("secret", 6, "secret", 6));
    assert_false(cv_secret_eq("secreT", 6, "secret", 6));
    assert_false(cv_secret_eq("Secret", 6, "secret", 6));
    assert_false(cv_secret_eq("secre", 5, "secret", 6));
    assert_false(cv_secret_eq("secrets", 7, "secret", 6));
    assert_false(cv_secret_eq("secretsecret", 12, "secret", 6)); /* the cyclic read */
    assert_false(cv_secret_eq("", 0, "secret", 6));
    assert_false(cv_secret_eq("s", 1, "s\0", 2));
    assert_true(cv_secret_eq("s\0", 2, "s\0", 2));
    assert_true(cv_secret_eq("", 0, "", 0));
    assert_false(cv_secret_eq("x", 1, "", 0));
}

static void test_reasons(void **state)
{
    assert_string_equal(cv_auth_reason(CV_AUTH_OK), "ok");
    assert_string_equal(cv_auth_reason(CV_AUTH_MISSING), "missing token");
    assert_string_equal(cv_auth_reason(CV_AUTH_BAD), "bad token");
    assert_string_equal(cv_auth_reason(CV_AUTH_EXPIRED), "token expired");
    assert_string_equal(cv_auth_reason(CV_AUTH_AGENT_DENIED), "token does not allow this agent");
    assert_string_equal(cv_auth_reason((enum cv_auth_result)99), "unknown");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shared_secret),
        cmocka_unit_test(test_make_jwt),
        cmocka_unit_test(test_make_jwt_errors),
        cmocka_unit_test(test_python_vector),
        cmocka_unit_test(test_wrong_secret),
        cmocka_unit_test(test_alg),
        cmocka_unit_test(test_tampered),
        cmocka_unit_test(test_bad_base64url),
        cmocka_unit_test(test_segments),
        cmocka_unit_test(test_agents),
        cmocka_unit_test(test_exp),
        cmocka_unit_test(test_oversized),
        cmocka_unit_test(test_reasons),
        cmocka_unit_test(test_secret_eq),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
