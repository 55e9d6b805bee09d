/* cv_rj_encode (rjson.h): a wire-form tree written as JSON.stringify
 * writes it, with JS's Number#toString for numbers. */
#include "codec/rjson.h"

#include <math.h> /* macros only (isfinite): the codec library does not link libm */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/err.h"

/* 2^53: integers up to this magnitude are exact JS numbers. */
#define MAX_EXACT_INT 9007199254740992.0

/* Nesting the encoder accepts: a decoded input (<= 1000) wrapped in a few
 * envelope levels fits; the bound keeps the recursion's stack small. */
#define ENCODE_MAX_DEPTH (2 * CV_RJ_MAX_DEPTH)

/* Formats a finite double as JS Number#toString does (ECMA-262
 * Number::toString): the shortest digits that round-trip, in decimal
 * notation for exponents in [-7, 21), else d.ddde±x. Returns the length
 * written to out (>= 32 bytes). */
static size_t js_number(double x, char *out)
{
    if (x == 0) {
        out[0] = '0'; /* -0 too */
        return 1;
    }
    if (x > -MAX_EXACT_INT && x < MAX_EXACT_INT && x == (double)(long long)x) {
        long long i = (long long)x;
        size_t neg = i < 0;
        out[0] = '-';
        return neg + cv_u64_dec(out + neg, neg ? (uint64_t)-i : (uint64_t)i);
    }

    /* Shortest round trip: for each precision p, the correctly rounded
     * p-digit decimal, or its neighbour in the last digit (at powers of two
     * the rounding interval is lopsided, so the nearest p-digit decimal can
     * miss it while the next one on the wide side hits). */
    double a = x < 0 ? -x : x;
    unsigned long long m = 0;
    int ex = 0; /* a == m * 10^ex */
    for (int p = 1; p <= 17; p++) {
        char e[40], c[48];
        snprintf(e, sizeof e, "%.*e", p - 1, a);
        m = 0;
        const char *q = e;
        for (; *q != 'e'; q++)
            if (*q != '.')
                m = m * 10 + (unsigned)(*q - '0');
        ex = (int)strtol(q + 1, NULL, 10) - (p - 1);
        if (strtod(e, NULL) == a)
            break;
        snprintf(c, sizeof c, "%llue%d", m + 1, ex);
        if (strtod(c, NULL) == a) {
            m++;
            break;
        }
        snprintf(c, sizeof c, "%llue%d", m - 1, ex);
        if (m > 1 && strtod(c, NULL) == a) {
            m--;
            break;
        }
    }
    while (m % 10 == 0) {
        m /= 10;
        ex++;
    }
    char dig[24];
    size_t k = (size_t)snprintf(dig, sizeof dig, "%llu", m), w = 0;
    int n = (int)k + ex; /* a = 0.dig * 10^n */
    if (x < 0)
        out[w++] = '-';
    if ((int)k <= n && n <= 21) {
        memcpy(out + w, dig, k);
        w += k;
        for (int i = (int)k; i < n; i++)
            out[w++] = '0';
    } else if (0 < n && n <= 21) {
        memcpy(out + w, dig, (size_t)n);
        w += (size_t)n;
        out[w++] = '.';
        memcpy(out + w, dig + n, k - (size_t)n);
        w += k - (size_t)n;
    } else if (-6 < n && n <= 0) {
        out[w++] = '0';
        out[w++] = '.';
        for (int i = n; i < 0; i++)
            out[w++] = '0';
        memcpy(out + w, dig, k);
        w += k;
    } else {
        out[w++] = dig[0];
        if (k > 1) {
            out[w++] = '.';
            memcpy(out + w, dig + 1, k - 1);
            w += k - 1;
        }
        w += (size_t)snprintf(out + w, 8, "e%c%d", n - 1 >= 0 ? '+' : '-', abs(n - 1));
    }
    return w;
}

struct enc {
    struct cv_buf *out;
    int rc;
};

static void put(struct enc *e, const void *p, size_t n)
{
    if (e->rc == 0 && n > 0)
        e->rc = cv_buf_append(e->out, p, n);
}

/* Bytes JSON.stringify writes as they are: printable ASCII but '"' and
 * '\\'. Control characters and non-ASCII take the slow path. */
static bool plain_byte(unsigned char c)
{
    return c >= 0x20 && c < 0x80 && c != '"' && c != '\\';
}

/* Length of the valid UTF-8 sequence at p (p[0] >= 0x80), or 0. */
static size_t utf8_seq(const unsigned char *p, size_t avail)
{
    unsigned char c = p[0], lo = 0x80, hi = 0xbf;
    size_t n;
    if (c >= 0xc2 && c <= 0xdf)
        n = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        lo = c == 0xe0 ? 0xa0 : 0x80;
        hi = c == 0xed ? 0x9f : 0xbf;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        lo = c == 0xf0 ? 0x90 : 0x80;
        hi = c == 0xf4 ? 0x8f : 0xbf;
    } else
        return 0;
    if (avail < n || p[1] < lo || p[1] > hi)
        return 0;
    for (size_t k = 2; k < n; k++)
        if ((p[k] & 0xc0) != 0x80)
            return 0;
    return n;
}

static void put_string(struct enc *e, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;

    put(e, "\"", 1);
    while (i < n && e->rc == 0) {
        size_t run = i;
        while (i < n && plain_byte(p[i]))
            i++;
        put(e, p + run, i - run);
        if (i >= n)
            break;
        unsigned char c = p[i];
        char esc[8];
        switch (c) {
        case '"': put(e, "\\\"", 2); break;
        case '\\': put(e, "\\\\", 2); break;
        case '\b': put(e, "\\b", 2); break;
        case '\f': put(e, "\\f", 2); break;
        case '\n': put(e, "\\n", 2); break;
        case '\r': put(e, "\\r", 2); break;
        case '\t': put(e, "\\t", 2); break;
        default:
            if (c < 0x20) {
                snprintf(esc, sizeof esc, "\\u%04x", c);
                put(e, esc, 6);
            } else {
                size_t l = utf8_seq(p + i, n - i);
                if (l == 0) {
                    /* Output must be valid UTF-8 (§7.3): a stray byte from a
                     * handler's _nocheck string becomes U+FFFD. */
                    put(e, "\xef\xbf\xbd", 3);
                    l = 1;
                } else {
                    put(e, p + i, l);
                }
                i += l;
                continue;
            }
        }
        i++;
    }
    put(e, "\"", 1);
}

static void put_value(struct enc *e, const json_t *v, int depth)
{
    char num[40];
    if (e->rc != 0)
        return;
    if (depth > ENCODE_MAX_DEPTH) {
        e->rc = CV_ETOOBIG;
        return;
    }
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        const char *k;
        size_t kl;
        json_t *c;
        bool first = true;
        put(e, "{", 1);
        json_object_keylen_foreach((json_t *)v, k, kl, c)
        {
            if (!first)
                put(e, ",", 1);
            first = false;
            put_string(e, k, kl);
            put(e, ":", 1);
            put_value(e, c, depth + 1);
        }
        put(e, "}", 1);
        break;
    }
    case JSON_ARRAY:
        put(e, "[", 1);
        for (size_t i = 0; i < json_array_size(v); i++) {
            if (i > 0)
                put(e, ",", 1);
            put_value(e, json_array_get(v, i), depth + 1);
        }
        put(e, "]", 1);
        break;
    case JSON_STRING: put_string(e, json_string_value(v), json_string_length(v)); break;
    case JSON_INTEGER: {
        json_int_t i = json_integer_value(v);
        if (i >= -(json_int_t)MAX_EXACT_INT && i <= (json_int_t)MAX_EXACT_INT) {
            put(e, num, (size_t)snprintf(num, sizeof num, "%lld", (long long)i));
        } else {
            /* Not a JS number: travels as a BigInt record, as cv_rj_make_int makes it. */
            static const char head[] = "{\"__type\":\"BigInt\",\"value\":\"";
            put(e, head, sizeof head - 1);
            put(e, num, (size_t)snprintf(num, sizeof num, "%lld", (long long)i));
            put(e, "\"}", 2);
        }
        break;
    }
    case JSON_REAL: {
        double x = json_real_value(v);
        if (!isfinite(x)) { /* jansson refuses these, but be safe */
            json_t *r = cv_rj_make_number(x);
            if (r == NULL) {
                e->rc = CV_ENOMEM;
                return;
            }
            put_value(e, r, depth);
            json_decref(r);
        } else {
            put(e, num, js_number(x, num));
        }
        break;
    }
    case JSON_TRUE: put(e, "true", 4); break;
    case JSON_FALSE: put(e, "false", 5); break;
    case JSON_NULL: put(e, "null", 4); break;
    }
}

int cv_rj_encode(const json_t *v, struct cv_buf *out)
{
    struct enc e = {out, 0};
    size_t saved = out->len;

    if (v == NULL)
        return CV_EINVAL;
    put_value(&e, v, 0);
    if (e.rc != 0)
        out->len = saved; /* no partial text left behind */
    return e.rc;
}
