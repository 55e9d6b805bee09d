/* cv_rj_build (rjson.h): the jansson tree of a text cv_rj_compact accepted.
 *
 * Why not json_loadb: the text was already checked (syntax, UTF-8, escapes,
 * depth) by cv_rj_compact, so a builder only has to make the values.
 * jansson's loader checks everything again through a character stream and
 * parses every number with strtod; on the gateway's native path it was a
 * quarter of the user instructions per request (callgrind, `{"a":1,"b":2}`:
 * json_loadb ~5,300 instructions, this builder about a third of that).
 * The values are made with jansson's own constructors, so the tree is the
 * one json_loadb(JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL | JSON_ALLOW_NUL)
 * gives (fuzz/fuzz_rjson.c compares the two on every input), except that a
 * number beyond the double range becomes a NonFiniteNumber record, as
 * JSON.parse reads it as ±Infinity (jansson refuses it). */
#include "codec/rjson.h"

#include <errno.h>
#include <math.h> /* macros only (HUGE_VAL): the codec library does not link libm */
#include <stdlib.h>
#include <string.h>

#include "codec/text.h"
#include "core/buf.h"

struct bld {
    const char *p;
    size_t n, i;
    const char *why;
    struct cv_buf tmp; /* decoded strings with escapes */
};

static json_t *value(struct bld *b, int depth);

static json_t *bad(struct bld *b, const char *why)
{
    if (b->why == NULL)
        b->why = why;
    return NULL;
}

/* Four hex digits (checked by cv_rj_compact). */
static int hex4(const char *s)
{
    int v = 0;
    for (int k = 0; k < 4; k++)
        v = v * 16 + cv_hexval((unsigned char)s[k]);
    return v;
}

/* The string at p[i] ('"'): its bytes, in the text itself when it has no
 * escape, else decoded into b->tmp. Returns 0 or -1 (a lone surrogate,
 * which UTF-8 cannot hold: jansson refuses it too). */
static int string(struct bld *b, const char **s, size_t *len)
{
    const char *p = b->p;
    size_t i = b->i + 1, start = i;
    while (p[i] != '"' && p[i] != '\\')
        i++;
    if (p[i] == '"') {
        *s = p + start;
        *len = i - start;
        b->i = i + 1;
        return 0;
    }
    cv_buf_reset(&b->tmp);
    /* Decoded, a string is never longer than its text. */
    if (cv_buf_reserve(&b->tmp, b->n - start) < 0) {
        bad(b, "out of memory");
        return -1;
    }
    char *o = (char *)cv_buf_tail(&b->tmp);
    size_t w = 0;
    memcpy(o, p + start, i - start);
    w = i - start;
    while (p[i] != '"') {
        if (p[i] != '\\') {
            o[w++] = p[i++];
            continue;
        }
        char e = p[i + 1];
        i += 2;
        switch (e) {
        case 'b': o[w++] = '\b'; break;
        case 'f': o[w++] = '\f'; break;
        case 'n': o[w++] = '\n'; break;
        case 'r': o[w++] = '\r'; break;
        case 't': o[w++] = '\t'; break;
        case 'u': {
            unsigned cp = (unsigned)hex4(p + i);
            i += 4;
            if (cp >= 0xdc00 && cp <= 0xdfff) {
                bad(b, "invalid Unicode escape (lone low surrogate)");
                return -1;
            }
            if (cp >= 0xd800 && cp <= 0xdbff) {
                unsigned lo;
                if (p[i] != '\\' || p[i + 1] != 'u' ||
                    (lo = (unsigned)hex4(p + i + 2)) < 0xdc00 || lo > 0xdfff) {
                    bad(b, "invalid Unicode escape (lone high surrogate)");
                    return -1;
                }
                i += 6;
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            }
            w += cv_utf8_put(o + w, cp);
            break;
        }
        default: o[w++] = e; break; /* '"', '\\', '/' */
        }
    }
    b->i = i + 1;
    *s = o;
    *len = w;
    return 0;
}

/* {"__type":"NonFiniteNumber","value":"±Infinity"}, as JSON.parse reads a
 * number beyond the double range. */
static json_t *infinity(bool neg)
{
    json_t *o = json_object();
    if (o == NULL || json_object_set_new_nocheck(o, "__type", json_string("NonFiniteNumber")) != 0 ||
        json_object_set_new_nocheck(o, "value", json_string(neg ? "-Infinity" : "Infinity")) != 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static json_t *number(struct bld *b)
{
    const char *p = b->p;
    size_t i = b->i, start = i;
    bool neg = p[i] == '-', plain = true;
    i += neg;
    uint64_t v = 0;
    while (i < b->n && p[i] >= '0' && p[i] <= '9')
        v = v * 10 + (uint64_t)(p[i++] - '0');
    size_t digits = i - start - neg;
    while (i < b->n && (p[i] == '.' || p[i] == 'e' || p[i] == 'E' || p[i] == '+' || p[i] == '-' ||
                        (p[i] >= '0' && p[i] <= '9'))) {
        plain = false;
        i++;
    }
    b->i = i;
    if (plain && digits <= 15) {
        /* Exact in a double (< 2^53): no rounding to do. -0 stays -0. */
        double d = (double)v;
        return json_real(neg ? -d : d);
    }
    char small[64];
    size_t len = i - start;
    char *tok = len < sizeof small ? small : malloc(len + 1);
    if (tok == NULL)
        return bad(b, "out of memory");
    memcpy(tok, p + start, len);
    tok[len] = '\0';
    errno = 0;
    double d = strtod(tok, NULL); /* the C locale: culvert never calls setlocale */
    if (tok != small)
        free(tok);
    if ((d == HUGE_VAL || d == -HUGE_VAL) && errno == ERANGE)
        return infinity(d < 0);
    return json_real(d);
}

static json_t *object(struct bld *b, int depth)
{
    json_t *o = json_object();
    if (o == NULL)
        return bad(b, "out of memory");
    b->i++;
    if (b->p[b->i] == '}') {
        b->i++;
        return o;
    }
    for (;;) {
        const char *k;
        size_t kl;
        if (string(b, &k, &kl) < 0)
            break;
        if (memchr(k, '\0', kl) != NULL) {
            bad(b, "NUL byte in object key not supported");
            break;
        }
        /* The key must outlive the value's decoding (which reuses tmp). */
        char small[128];
        char *key = kl < sizeof small ? small : malloc(kl + 1);
        if (key == NULL) {
            bad(b, "out of memory");
            break;
        }
        memcpy(key, k, kl);
        key[kl] = '\0';
        b->i++; /* ':' */
        json_t *v = value(b, depth + 1);
        /* A repeated key keeps its first place and takes the last value,
         * as json_loadb does. */
        int rc = v != NULL ? json_object_setn_new_nocheck(o, key, kl, v) : -1;
        if (key != small)
            free(key);
        if (rc != 0) {
            bad(b, "out of memory");
            break;
        }
        if (b->p[b->i++] == '}')
            return o;
    }
    json_decref(o);
    return NULL;
}

static json_t *array(struct bld *b, int depth)
{
    json_t *a = json_array();
    if (a == NULL)
        return bad(b, "out of memory");
    b->i++;
    if (b->p[b->i] == ']') {
        b->i++;
        return a;
    }
    for (;;) {
        json_t *v = value(b, depth + 1);
        if (v == NULL || json_array_append_new(a, v) != 0) {
            bad(b, "out of memory");
            break;
        }
        if (b->p[b->i++] == ']')
            return a;
    }
    json_decref(a);
    return NULL;
}

static json_t *value(struct bld *b, int depth)
{
    if (depth > CV_RJ_MAX_DEPTH)
        return bad(b, "nested too deep"); /* cv_rj_compact refuses it first */
    switch (b->p[b->i]) {
    case '{': return object(b, depth);
    case '[': return array(b, depth);
    case '"': {
        const char *s;
        size_t len;
        if (string(b, &s, &len) < 0)
            return NULL;
        json_t *v = json_stringn_nocheck(s, len);
        return v != NULL ? v : bad(b, "out of memory");
    }
    case 't': b->i += 4; return json_true();
    case 'f': b->i += 5; return json_false();
    case 'n': b->i += 4; return json_null();
    default: return number(b);
    }
}

json_t *cv_rj_build(const char *p, size_t n, const char **why)
{
    struct bld b = {.p = p, .n = n};
    cv_buf_init(&b.tmp, n + 1);
    json_t *v = n > 0 ? value(&b, 0) : bad(&b, "empty text");
    cv_buf_fini(&b.tmp);
    if (v == NULL && why != NULL)
        *why = b.why ? b.why : "out of memory";
    return v;
}
