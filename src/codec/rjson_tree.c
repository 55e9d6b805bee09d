/* The decoded view of serializer JSON (rjson.h): cv_rj_decode, the
 * accessors and constructors, and cv_rj_encode. The pass-through scanner
 * is in rjson.c. Behaviour follows Runner's Serializer.parse: a graph
 * payload is resolved from its nodes, anything else is a tree whose typed
 * records are checked by their type's rules and whose plain keys lose one
 * escape prefix (here: are normalised to exactly one canonical spelling). */
#include "codec/rjson.h"

#include <errno.h>
#include <math.h> /* macros only (isnan, INFINITY): the codec library does not link libm */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"

#define ESCAPE_PREFIX "$runner.escape::"
#define ESCAPE_LEN (sizeof(ESCAPE_PREFIX) - 1)
/* Runner's maxRegExpPatternLength default, in UTF-16 code units. */
#define MAX_REGEXP_PATTERN 1024
/* Its length in UTF-8 bytes: at most 3 bytes per UTF-16 code unit. */
#define MAX_REGEXP_BYTES (MAX_REGEXP_PATTERN * 3)
/* JS Date range: ±100,000,000 days from the epoch, in ms. */
#define MAX_DATE_MS 8640000000000000.0
/* 2^53: integers up to this magnitude are exact JS numbers. */
#define MAX_EXACT_INT 9007199254740992.0

/* ------------------------------------------------------------------------
 * Keys. A plain object's real key K travels as K, except that "__type",
 * "__graph" and keys already starting with the prefix get one more prefix
 * (Runner's escapeReservedMarkerKey); decoding strips exactly one. */

static bool has_prefix(const char *k, size_t n)
{
    return n >= ESCAPE_LEN && memcmp(k, ESCAPE_PREFIX, ESCAPE_LEN) == 0;
}

static bool needs_escape(const char *k, size_t n)
{
    return (n == 6 && memcmp(k, "__type", 6) == 0) || (n == 7 && memcmp(k, "__graph", 7) == 0) ||
           has_prefix(k, n);
}

static bool is_unsafe_key(const char *k, size_t n)
{
    return (n == 9 && memcmp(k, "__proto__", 9) == 0) ||
           (n == 11 && memcmp(k, "constructor", 11) == 0) ||
           (n == 9 && memcmp(k, "prototype", 9) == 0);
}

/* Sets obj[real key k] = v (stolen), writing the wire spelling. A key set
 * twice keeps its first position and its last value, as a JS object does. */
static int set_real(json_t *obj, const char *k, size_t n, json_t *v)
{
    if (v == NULL)
        return CV_ENOMEM;
    if (!needs_escape(k, n))
        return json_object_setn_new(obj, k, n, v) == 0 ? 0 : CV_ENOMEM;
    char small[128];
    char *w = n + ESCAPE_LEN <= sizeof small ? small : malloc(n + ESCAPE_LEN);
    if (w == NULL) {
        json_decref(v);
        return CV_ENOMEM;
    }
    memcpy(w, ESCAPE_PREFIX, ESCAPE_LEN);
    memcpy(w + ESCAPE_LEN, k, n);
    int rc = json_object_setn_new(obj, w, n + ESCAPE_LEN, v) == 0 ? 0 : CV_ENOMEM;
    if (w != small)
        free(w);
    return rc;
}

json_t *cv_rj_get(const json_t *obj, const char *key)
{
    size_t n = strlen(key);
    if (!json_is_object(obj))
        return NULL;
    if (!needs_escape(key, n))
        return json_object_getn(obj, key, n);
    char small[128];
    char *w = n + ESCAPE_LEN <= sizeof small ? small : malloc(n + ESCAPE_LEN);
    if (w == NULL)
        return NULL;
    memcpy(w, ESCAPE_PREFIX, ESCAPE_LEN);
    memcpy(w + ESCAPE_LEN, key, n);
    json_t *v = json_object_getn(obj, w, n + ESCAPE_LEN);
    if (w != small)
        free(w);
    return v;
}

int cv_rj_set(json_t *obj, const char *key, json_t *v)
{
    if (!json_is_object(obj) || key == NULL || v == NULL) {
        json_decref(v);
        return CV_EINVAL;
    }
    return set_real(obj, key, strlen(key), v);
}

/* ------------------------------------------------------------------------
 * Records. */

const char *cv_rj_record_type(const json_t *v)
{
    if (!json_is_object(v) || json_object_get(v, "value") == NULL)
        return NULL;
    return json_string_value(json_object_get(v, "__type"));
}

static bool type_is(const json_t *v, const char *t)
{
    const char *rt = cv_rj_record_type(v);
    return rt != NULL && strcmp(rt, t) == 0;
}

/* A new record {"__type":type,"value":value}; steals value (even on failure). */
static json_t *record(const char *type, json_t *value)
{
    json_t *r = json_object();
    if (r == NULL || value == NULL) {
        json_decref(r);
        json_decref(value);
        return NULL;
    }
    if (json_object_set_new(r, "__type", json_string(type)) != 0) {
        json_decref(value);
        json_decref(r);
        return NULL;
    }
    if (json_object_set_new(r, "value", value) != 0) {
        json_decref(r);
        return NULL;
    }
    return r;
}

bool cv_rj_is_undefined(const json_t *v)
{
    return type_is(v, "Undefined");
}

int cv_rj_number(const json_t *v, double *out)
{
    if (json_is_number(v)) {
        *out = json_number_value(v);
        return 0;
    }
    if (!type_is(v, "NonFiniteNumber"))
        return CV_EINVAL;
    const char *s = json_string_value(json_object_get(v, "value"));
    if (s == NULL)
        return CV_EINVAL;
    if (strcmp(s, "NaN") == 0)
        *out = NAN;
    else if (strcmp(s, "Infinity") == 0)
        *out = INFINITY;
    else if (strcmp(s, "-Infinity") == 0)
        *out = -INFINITY;
    else
        return CV_EINVAL;
    return 0;
}

const char *cv_rj_bigint(const json_t *v)
{
    return type_is(v, "BigInt") ? json_string_value(json_object_get(v, "value")) : NULL;
}

/* Days from 1970-01-01 to y-m-d (proleptic Gregorian; H. Hinnant). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

static bool digits(const char *s, size_t n, int64_t *out)
{
    int64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return true;
}

/* Date.prototype.toISOString's form: YYYY-MM-DDTHH:MM:SS.sssZ, or
 * ±YYYYYY-... outside years 0..9999; the fraction may have 0..9 digits. */
static bool parse_iso(const char *s, size_t n, int64_t *ms)
{
    int64_t y, mo, d, h, mi, sec, frac = 0;
    size_t i = 0;
    if (n > 0 && (s[0] == '+' || s[0] == '-')) {
        if (n < 7 || !digits(s + 1, 6, &y) || (s[0] == '-' && y == 0))
            return false;
        if (s[0] == '-')
            y = -y;
        i = 7;
    } else {
        if (n < 4 || !digits(s, 4, &y))
            return false;
        i = 4;
    }
    if (n - i < 16 || s[i] != '-' || !digits(s + i + 1, 2, &mo) || s[i + 3] != '-' ||
        !digits(s + i + 4, 2, &d) || s[i + 6] != 'T' || !digits(s + i + 7, 2, &h) ||
        s[i + 9] != ':' || !digits(s + i + 10, 2, &mi) || s[i + 12] != ':' ||
        !digits(s + i + 13, 2, &sec))
        return false;
    i += 15;
    if (s[i] == '.') {
        size_t f = ++i;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
        if (i == f || i - f > 9)
            return false;
        for (size_t k = 0; k < 3; k++)
            frac = frac * 10 + (f + k < i ? s[f + k] - '0' : 0);
    }
    if (i + 1 != n || s[i] != 'Z')
        return false;
    static const unsigned char mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    if (mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] || (mo == 2 && d == 29 && !leap))
        return false;
    if (mi > 59 || sec > 59 || h > 24 || (h == 24 && (mi | sec | frac) != 0))
        return false;
    int64_t days = days_from_civil(y, (unsigned)mo, (unsigned)d);
    *ms = ((days * 24 + h) * 60 + mi) * 60000 + sec * 1000 + frac;
    return *ms >= -(int64_t)MAX_DATE_MS && *ms <= (int64_t)MAX_DATE_MS;
}

static bool date_value_ms(const json_t *val, int64_t *ms)
{
    if (json_is_number(val)) {
        double x = json_number_value(val);
        if (!(x >= -MAX_DATE_MS && x <= MAX_DATE_MS)) /* NaN fails too */
            return false;
        *ms = (int64_t)x; /* TimeClip truncates toward zero */
        return true;
    }
    if (json_is_string(val))
        return parse_iso(json_string_value(val), json_string_length(val), ms);
    return false;
}

int cv_rj_date_ms(const json_t *v, int64_t *ms)
{
    if (!type_is(v, "Date") || !date_value_ms(json_object_get(v, "value"), ms))
        return CV_EINVAL;
    return 0;
}

json_t *cv_rj_make_undefined(void)
{
    return record("Undefined", json_null());
}

json_t *cv_rj_make_number(double d)
{
    if (isnan(d))
        return record("NonFiniteNumber", json_string("NaN"));
    if (isinf(d))
        return record("NonFiniteNumber", json_string(d > 0 ? "Infinity" : "-Infinity"));
    return json_real(d == 0 ? 0.0 : d); /* -0 travels as 0 */
}

json_t *cv_rj_make_int(int64_t i)
{
    if (i >= -(int64_t)MAX_EXACT_INT && i <= (int64_t)MAX_EXACT_INT)
        return json_real((double)i);
    char b[24];
    snprintf(b, sizeof b, "%lld", (long long)i);
    return record("BigInt", json_string(b));
}

/* Date#toISOString of ms (within ±8.64e15) into b (>= 40 bytes). */
static void iso_string(int64_t ms, char *b, size_t n)
{
    int64_t days = ms >= 0 ? ms / 86400000 : -((-ms + 86399999) / 86400000);
    int64_t rem = ms - days * 86400000, y;
    unsigned m, d;
    char yb[24];
    civil_from_days(days, &y, &m, &d);
    if (y >= 0 && y <= 9999)
        snprintf(yb, sizeof yb, "%04lld", (long long)y);
    else
        snprintf(yb, sizeof yb, "%c%06lld", y < 0 ? '-' : '+', (long long)(y < 0 ? -y : y));
    snprintf(b, n, "%s-%02u-%02uT%02u:%02u:%02u.%03uZ", yb, m, d, (unsigned)(rem / 3600000),
             (unsigned)(rem / 60000 % 60), (unsigned)(rem / 1000 % 60), (unsigned)(rem % 1000));
}

json_t *cv_rj_make_date(int64_t ms)
{
    char b[96];
    if (ms < -(int64_t)MAX_DATE_MS || ms > (int64_t)MAX_DATE_MS)
        return NULL;
    iso_string(ms, b, sizeof b);
    return record("Date", json_string(b));
}

/* BigInt payload: /^[+-]?\d+$/ after trimming whitespace (Runner's
 * assertBigIntPayload), normalised to BigInt#toString form. Returns the
 * canonical string (malloc'd) or NULL. */
static char *bigint_canon(const char *s, size_t n)
{
    while (n > 0 && strchr(" \t\n\r\v\f", s[0]) != NULL)
        s++, n--;
    while (n > 0 && strchr(" \t\n\r\v\f", s[n - 1]) != NULL)
        n--;
    bool neg = false;
    if (n > 0 && (s[0] == '+' || s[0] == '-')) {
        neg = s[0] == '-';
        s++, n--;
    }
    if (n == 0)
        return NULL;
    for (size_t i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return NULL;
    while (n > 1 && s[0] == '0')
        s++, n--;
    if (n == 1 && s[0] == '0')
        neg = false;
    char *c = malloc(n + 2);
    if (c == NULL)
        return NULL;
    size_t w = 0;
    if (neg)
        c[w++] = '-';
    memcpy(c + w, s, n);
    c[w + n] = '\0';
    return c;
}

json_t *cv_rj_make_bigint(const char *digits_)
{
    if (digits_ == NULL)
        return NULL;
    char *c = bigint_canon(digits_, strlen(digits_));
    if (c == NULL)
        return NULL;
    json_t *r = record("BigInt", json_string(c));
    free(c);
    return r;
}

/* Byte-array types and their element sizes (§7.2: raw little-endian bytes). */
static const struct {
    const char *name;
    unsigned size;
} byte_types[] = {
    {"Buffer", 1},        {"ArrayBuffer", 1},       {"DataView", 1},     {"Uint8Array", 1},
    {"Int8Array", 1},     {"Uint8ClampedArray", 1}, {"Int16Array", 2},   {"Uint16Array", 2},
    {"Int32Array", 4},    {"Uint32Array", 4},       {"Float32Array", 4}, {"Float64Array", 8},
    {"BigInt64Array", 8}, {"BigUint64Array", 8},
};

static unsigned byte_type_size(const char *t)
{
    for (size_t i = 0; i < sizeof byte_types / sizeof *byte_types; i++)
        if (strcmp(t, byte_types[i].name) == 0)
            return byte_types[i].size;
    return 0;
}

json_t *cv_rj_make_bytes(const char *type, const uint8_t *p, size_t n)
{
    unsigned size = type != NULL ? byte_type_size(type) : 0;
    if (size == 0 || n % size != 0 || (n > 0 && p == NULL))
        return NULL;
    json_t *a = json_array();
    if (a == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (json_array_append_new(a, json_real(p[i])) != 0) {
            json_decref(a);
            return NULL;
        }
    }
    return record(type, a);
}

/* ------------------------------------------------------------------------
 * RegExp safety: Runner's isRegExpPatternSafe heuristic, ported to UTF-8
 * bytes (its syntax characters are all ASCII, and a byte prefix of whole
 * UTF-8 strings is a code-unit prefix). A quantified group whose body holds
 * a quantifier, or whose top-level alternatives overlap ("(a|a)*", an empty
 * branch), is refused. */

static bool bounded_quantifier(const char *p, size_t n, size_t i)
{
    bool digit = false, comma = false;
    for (i++; i < n; i++) {
        if (p[i] >= '0' && p[i] <= '9')
            digit = true;
        else if (p[i] == ',' && !comma)
            comma = true;
        else
            return p[i] == '}' && digit;
    }
    return false;
}

static bool quantifier_at(const char *p, size_t n, size_t i)
{
    if (i >= n)
        return false;
    if (p[i] == '*' || p[i] == '+' || p[i] == '?')
        return true;
    return p[i] == '{' && bounded_quantifier(p, n, i);
}

static bool quantifier_char(const char *p, size_t n, size_t i)
{
    if (p[i] == '*' || p[i] == '+')
        return true;
    if (p[i] == '?')
        return !(i > 0 && p[i - 1] == '(');
    return p[i] == '{' && bounded_quantifier(p, n, i);
}

static bool starts(const char *p, size_t n, const char *lit)
{
    size_t l = strlen(lit);
    return n >= l && memcmp(p, lit, l) == 0;
}

/* Does the group body p[0..n) have overlapping top-level alternatives? */
static bool overlapping_alternatives(const char *p, size_t n)
{
    /* Strip a group prefix: ?: ?= ?! ?> ?<= ?<! or a ?<name>. */
    if (starts(p, n, "?:") || starts(p, n, "?=") || starts(p, n, "?!") || starts(p, n, "?>")) {
        p += 2, n -= 2;
    } else if (starts(p, n, "?<=") || starts(p, n, "?<!")) {
        p += 3, n -= 3;
    } else if (starts(p, n, "?<") && n > 2 && p[2] != '>') {
        const char *gt = memchr(p + 2, '>', n - 2);
        if (gt != NULL) {
            n -= (size_t)(gt + 1 - p);
            p = gt + 1;
        }
    }
    /* Split on top-level '|' (outside escapes, classes and inner groups). */
    uint16_t starts_[MAX_REGEXP_BYTES + 2];
    size_t nb = 0;
    bool esc = false, cls = false;
    size_t depth = 0;
    starts_[nb++] = 0;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (esc) {
            esc = false;
        } else if (c == '\\') {
            esc = true;
        } else if (cls) {
            cls = c != ']';
        } else if (c == '[') {
            cls = true;
        } else if (c == '(') {
            depth++;
        } else if (c == ')') {
            depth = depth ? depth - 1 : 0;
        } else if (c == '|' && depth == 0) {
            starts_[nb++] = (uint16_t)(i + 1);
        }
    }
    if (nb < 2)
        return false;
    starts_[nb] = (uint16_t)(n + 1); /* branch k is p[starts_[k] .. starts_[k+1]-1) */
    for (size_t i = 0; i < nb; i++) {
        for (size_t j = i + 1; j < nb; j++) {
            const char *a = p + starts_[i], *b = p + starts_[j];
            size_t al = starts_[i + 1] - 1 - starts_[i], bl = starts_[j + 1] - 1 - starts_[j];
            size_t m = al < bl ? al : bl;
            if (m == 0 || memcmp(a, b, m) == 0)
                return true;
        }
    }
    return false;
}

static bool regexp_safe(const char *p, size_t n)
{
    struct {
        bool quantified;
        uint16_t start;
    } stack[MAX_REGEXP_BYTES + 1];
    size_t top = 0;
    bool esc = false, cls = false;

    if (n > MAX_REGEXP_BYTES)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (esc) {
            esc = false;
            continue;
        }
        if (c == '\\') {
            esc = true;
            continue;
        }
        if (cls) {
            cls = c != ']';
            continue;
        }
        if (c == '[') {
            cls = true;
            continue;
        }
        if (c == '(') {
            stack[top].quantified = false;
            stack[top].start = (uint16_t)i;
            top++;
            continue;
        }
        if (c == ')') {
            if (top == 0)
                continue;
            top--;
            if (quantifier_at(p, n, i + 1)) {
                if (stack[top].quantified)
                    return false;
                if (overlapping_alternatives(p + stack[top].start + 1, i - stack[top].start - 1))
                    return false;
            }
            if (stack[top].quantified && top > 0)
                stack[top - 1].quantified = true;
            continue;
        }
        if (quantifier_char(p, n, i) && top > 0)
            stack[top - 1].quantified = true;
    }
    return true;
}

/* A {n}, {n,} or {n,m} quantifier at p[i] == '{': sets *end past the '}'.
 * Returns 1, 0 if it is not one (Annex B: then '{' is a literal), or -1 if
 * its numbers are out of order. */
static int brace_quantifier(const char *p, size_t n, size_t i, size_t *end)
{
    size_t j = i + 1, d0 = j;
    unsigned long long lo = 0, hi;
    while (j < n && p[j] >= '0' && p[j] <= '9')
        lo = lo < 1000000000ULL ? lo * 10 + (unsigned)(p[j++] - '0') : (j++, lo);
    if (j == d0)
        return 0;
    hi = lo;
    if (j < n && p[j] == ',') {
        size_t d1 = ++j;
        hi = 0;
        while (j < n && p[j] >= '0' && p[j] <= '9')
            hi = hi < 1000000000ULL ? hi * 10 + (unsigned)(p[j++] - '0') : (j++, hi);
        if (j == d1)
            hi = ~0ULL;
    }
    if (j >= n || p[j] != '}')
        return 0;
    *end = j + 1;
    return hi < lo ? -1 : 1;
}

/* The syntax errors new RegExp(pattern) throws on without the u/v flags
 * (Annex B grammar), so that a pattern Runner would refuse is refused
 * here too: a trailing backslash, an unterminated class or group, an
 * unmatched ')', a bad "(?" group, a quantifier with nothing to repeat,
 * {n,m} out of order. Escapes and class contents are not checked further. */
static bool regexp_syntax_ok(const char *p, size_t n)
{
    size_t depth = 0, i = 0;
    bool atom = false; /* the previous token can take a quantifier */

    while (i < n) {
        char c = p[i];
        size_t end;
        switch (c) {
        case '\\':
            if (i + 1 >= n)
                return false;
            atom = p[i + 1] != 'b' && p[i + 1] != 'B'; /* \b and \B are assertions */
            i += 2;
            break;
        case '[':
            i++;
            if (i < n && p[i] == '^')
                i++;
            while (i < n && p[i] != ']')
                i += p[i] == '\\' ? 2 : 1;
            if (i >= n)
                return false;
            i++;
            atom = true;
            break;
        case '(':
            i++;
            if (i < n && p[i] == '?') {
                if (i + 1 < n && (p[i + 1] == ':' || p[i + 1] == '=' || p[i + 1] == '!')) {
                    i += 2;
                } else if (i + 2 < n && p[i + 1] == '<' && (p[i + 2] == '=' || p[i + 2] == '!')) {
                    i += 3;
                } else if (i + 1 < n && p[i + 1] == '<') {
                    size_t j = i + 2;
                    while (j < n && (((unsigned char)p[j] >= 0x80) || p[j] == '_' || p[j] == '$' ||
                                     (p[j] >= '0' && p[j] <= '9') ||
                                     ((p[j] | 0x20) >= 'a' && (p[j] | 0x20) <= 'z')))
                        j++;
                    if (j == i + 2 || j >= n || p[j] != '>' || (p[i + 2] >= '0' && p[i + 2] <= '9'))
                        return false;
                    i = j + 1;
                } else {
                    return false;
                }
            }
            depth++;
            atom = false;
            break;
        case ')':
            if (depth == 0)
                return false;
            depth--;
            i++;
            atom = true;
            break;
        case '|':
        case '^':
        case '$':
            i++;
            atom = false;
            break;
        case '*':
        case '+':
        case '?': end = i + 1; goto quantifier;
        case '{': {
            int q = brace_quantifier(p, n, i, &end);
            if (q < 0)
                return false;
            if (q > 0)
                goto quantifier;
            i++; /* a literal '{' */
            atom = true;
            break;
        }
        default:
            i++;
            atom = true;
            break;
        }
        continue;
    quantifier:
        if (!atom)
            return false; /* nothing to repeat */
        i = end;
        if (i < n && p[i] == '?')
            i++; /* lazy */
        atom = false;
    }
    return depth == 0;
}

/* Length in UTF-16 code units of valid UTF-8 (JS String#length). */
static size_t utf16_len(const char *s, size_t n)
{
    size_t units = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c & 0xc0) != 0x80)
            units += c >= 0xf0 ? 2 : 1;
    }
    return units;
}

/* ------------------------------------------------------------------------
 * Decoding. */

struct slot {
    json_t *v; /* owned; NULL while the node is being resolved */
    int height;
};

struct dec {
    char *why;
    size_t whylen;
    bool graph;          /* inside a graph payload: refs resolve, keys are real */
    const json_t *nodes; /* borrowed: the graph's nodes */
    json_t *ids;         /* id -> slot index */
    struct slot *slots;  /* owned */
    size_t nslots, cap;
};

static json_t *fail(struct dec *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static json_t *fail(struct dec *d, const char *fmt, ...)
{
    if (d->why != NULL && d->whylen > 0 && d->why[0] == '\0') {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(d->why, d->whylen, fmt, ap);
        va_end(ap);
    }
    return NULL;
}

static json_t *walk(struct dec *d, json_t *v, int depth, int *h);

static bool is_byte_array(const json_t *a, unsigned size)
{
    if (!json_is_array(a) || json_array_size(a) % size != 0)
        return false;
    for (size_t i = 0; i < json_array_size(a); i++) {
        const json_t *e = json_array_get(a, i);
        double x = json_number_value(e);
        if (!json_is_number(e) || !(x >= 0 && x <= 255) || x != (double)(int)x)
            return false;
    }
    return true;
}

static bool is_primitive_record(const json_t *v)
{
    return type_is(v, "Undefined") || type_is(v, "NonFiniteNumber") || type_is(v, "BigInt") ||
           type_is(v, "Symbol");
}

static bool error_payload_ok(const json_t *v)
{
    const json_t *stack = json_object_get(v, "stack"), *cf = json_object_get(v, "customFields");
    if (!json_is_object(v) || !json_is_string(json_object_get(v, "name")) ||
        !json_is_string(json_object_get(v, "message")))
        return false;
    if (stack != NULL && !json_is_string(stack) && !cv_rj_is_undefined(stack))
        return false;
    return cf == NULL || cv_rj_is_undefined(cf) || (json_is_object(cf) && !is_primitive_record(cf));
}

static bool symbol_payload_ok(const json_t *v)
{
    static const char *const well_known[] = {
        "asyncIterator", "hasInstance", "isConcatSpreadable",
        "iterator",      "match",       "matchAll",
        "replace",       "search",      "species",
        "split",         "toPrimitive", "toStringTag",
        "unscopables",
    };
    const char *kind = json_string_value(json_object_get(v, "kind"));
    const char *key = json_string_value(json_object_get(v, "key"));
    if (kind == NULL || key == NULL)
        return false;
    if (strcmp(kind, "For") == 0)
        return true;
    if (strcmp(kind, "WellKnown") != 0)
        return false;
    for (size_t i = 0; i < sizeof well_known / sizeof *well_known; i++)
        if (strcmp(key, well_known[i]) == 0)
            return true;
    return false;
}

static bool regexp_payload_ok(struct dec *d, const json_t *v)
{
    const json_t *pat = json_object_get(v, "pattern");
    const char *flags = json_string_value(json_object_get(v, "flags"));
    if (!json_is_object(v) || !json_is_string(pat) || flags == NULL) {
        fail(d, "invalid RegExp payload");
        return false;
    }
    const char *p = json_string_value(pat);
    size_t n = json_string_length(pat);
    if (utf16_len(p, n) > MAX_REGEXP_PATTERN) {
        fail(d, "RegExp pattern exceeds limit (%d)", MAX_REGEXP_PATTERN);
        return false;
    }
    if (!regexp_safe(p, n)) {
        fail(d, "unsafe RegExp pattern");
        return false;
    }
    if (!regexp_syntax_ok(p, n)) {
        fail(d, "invalid RegExp pattern");
        return false;
    }
    unsigned seen = 0;
    for (const char *f = flags; *f != '\0'; f++) {
        const char *at = strchr("dgimsuvy", *f);
        if (at == NULL || (seen & (1u << (at - "dgimsuvy")))) {
            fail(d, "invalid RegExp flags");
            return false;
        }
        seen |= 1u << (at - "dgimsuvy");
    }
    /* u and v together: new RegExp throws. */
    if ((seen & (1u << 5)) && (seen & (1u << 6))) {
        fail(d, "invalid RegExp flags");
        return false;
    }
    if (json_string_length(json_object_get(v, "flags")) != strlen(flags)) {
        fail(d, "invalid RegExp flags");
        return false;
    }
    return true;
}

static bool has_scheme(const char *s);

/* Checks a record's decoded value against its type; may replace *v with
 * a normalised value. Returns false (reason set) if invalid. */
static bool check_record(struct dec *d, const char *type, size_t type_len, json_t **v)
{
    json_t *x = *v;
    bool ok;

    if (strlen(type) != type_len) {
        fail(d, "unknown __type");
        return false;
    }
    if (strcmp(type, "Undefined") == 0) {
        /* Runner ignores the value; keep the canonical null. */
        if (!json_is_null(x)) {
            json_decref(x);
            *v = json_null();
        }
        ok = true;
    } else if (strcmp(type, "NonFiniteNumber") == 0) {
        const char *s = json_string_value(x);
        ok = s != NULL && json_string_length(x) == strlen(s) &&
             (strcmp(s, "NaN") == 0 || strcmp(s, "Infinity") == 0 || strcmp(s, "-Infinity") == 0);
    } else if (strcmp(type, "BigInt") == 0) {
        char *c =
            json_is_string(x) ? bigint_canon(json_string_value(x), json_string_length(x)) : NULL;
        ok = c != NULL;
        if (ok) {
            json_t *nv = json_string(c);
            free(c);
            if (nv == NULL) {
                fail(d, "out of memory");
                return false;
            }
            json_decref(x);
            *v = nv;
        }
    } else if (strcmp(type, "Date") == 0) {
        /* Stored as Date#toISOString gives it (epoch ms and fractions of
         * other lengths normalised), as Runner re-serializes a Date. */
        int64_t ms;
        ok = date_value_ms(x, &ms);
        if (ok) {
            char b[96];
            iso_string(ms, b, sizeof b);
            json_t *nv = json_string(b);
            if (nv == NULL) {
                fail(d, "out of memory");
                return false;
            }
            json_decref(x);
            *v = nv;
        }
    } else if (strcmp(type, "RegExp") == 0) {
        return regexp_payload_ok(d, x);
    } else if (strcmp(type, "Map") == 0) {
        /* new Map(entries): each entry an array; a missing key or value is
         * undefined and extra items are ignored, so entries become pairs.
         * Built anew: in a graph the arrays may be shared. */
        json_t *pairs = json_is_array(x) ? json_array() : NULL;
        ok = pairs != NULL;
        for (size_t i = 0; ok && i < json_array_size(x); i++) {
            json_t *e = json_array_get(x, i), *pair = json_array();
            ok = json_is_array(e) && pair != NULL;
            for (size_t k = 0; ok && k < 2; k++) {
                json_t *item = json_array_get(e, k);
                ok = json_array_append_new(pair,
                                           item ? json_incref(item) : cv_rj_make_undefined()) == 0;
            }
            if (!ok) {
                json_decref(pair);
                break;
            }
            ok = json_array_append_new(pairs, pair) == 0; /* steals pair */
        }
        if (ok) {
            json_decref(x);
            *v = pairs;
        } else {
            json_decref(pairs);
        }
    } else if (strcmp(type, "Set") == 0) {
        ok = json_is_array(x);
    } else if (strcmp(type, "Symbol") == 0) {
        ok = json_is_object(x) && symbol_payload_ok(x);
    } else if (strcmp(type, "URL") == 0) {
        ok = json_is_string(x) && has_scheme(json_string_value(x));
    } else if (strcmp(type, "URLSearchParams") == 0) {
        ok = json_is_string(x);
    } else if (strcmp(type, "Error") == 0) {
        ok = error_payload_ok(x);
    } else {
        unsigned size = byte_type_size(type);
        if (size == 0) {
            fail(d, "unknown __type \"%.64s\"", type);
            return false;
        }
        ok = is_byte_array(x, size);
    }
    if (!ok)
        fail(d, "invalid %.64s payload", type);
    return ok;
}

/* new URL(s) needs an absolute URL: at least a scheme (leading C0 controls
 * and spaces are stripped first). The rest of WHATWG parsing is not done. */
static bool has_scheme(const char *s)
{
    while (*s != '\0' && (unsigned char)*s <= 0x20)
        s++;
    if (!((*s | 0x20) >= 'a' && (*s | 0x20) <= 'z'))
        return false;
    for (s++; *s != ':'; s++)
        if (!(((*s | 0x20) >= 'a' && (*s | 0x20) <= 'z') || (*s >= '0' && *s <= '9') || *s == '+' ||
              *s == '-' || *s == '.'))
            return false;
    return true;
}

static bool is_known_type(const char *t)
{
    static const char *const known[] = {
        "Undefined", "NonFiniteNumber", "BigInt", "Date", "RegExp", "Map", "Set", "Symbol",
        "URL",       "URLSearchParams", "Error"};
    for (size_t i = 0; i < sizeof known / sizeof *known; i++)
        if (strcmp(t, known[i]) == 0)
            return true;
    return byte_type_size(t) != 0;
}

/* A typed record: the type must be known before its value is decoded (as
 * Runner's registry looks it up first), then the value is checked. */
static json_t *walk_record(struct dec *d, const json_t *type, json_t *value, int depth, int *h)
{
    const char *t = json_string_value(type);
    if (!is_known_type(t) || strlen(t) != json_string_length(type))
        return fail(d, "unknown __type \"%.64s\"", t);
    int vh;
    json_t *v = walk(d, value, depth + 1, &vh);
    if (v == NULL)
        return NULL;
    if (!check_record(d, t, json_string_length(type), &v)) {
        json_decref(v);
        return NULL;
    }
    *h = vh + 1;
    json_t *r = record(t, v);
    return r != NULL ? r : fail(d, "out of memory");
}

/* A plain object. In a tree, wire keys lose one escape prefix; in a graph
 * they are real keys already. Unsafe keys are dropped. */
static json_t *walk_object(struct dec *d, json_t *v, int depth, int *h)
{
    json_t *o = json_object();
    const char *k;
    size_t kl;
    json_t *c;

    if (o == NULL)
        return fail(d, "out of memory");
    json_object_keylen_foreach(v, k, kl, c)
    {
        const char *real = k;
        size_t rl = kl;
        if (!d->graph && has_prefix(k, kl)) {
            real += ESCAPE_LEN;
            rl -= ESCAPE_LEN;
        }
        if (is_unsafe_key(real, rl))
            continue;
        int ch;
        json_t *nc = walk(d, c, depth + 1, &ch);
        if (nc == NULL) {
            json_decref(o);
            return NULL;
        }
        if (set_real(o, real, rl, nc) != 0) {
            json_decref(o);
            return fail(d, "out of memory");
        }
        if (ch + 1 > *h)
            *h = ch + 1;
    }
    return o;
}

static json_t *walk_array(struct dec *d, json_t *v, int depth, int *h)
{
    json_t *a = json_array();
    if (a == NULL)
        return fail(d, "out of memory");
    for (size_t i = 0; i < json_array_size(v); i++) {
        int ch;
        json_t *nc = walk(d, json_array_get(v, i), depth + 1, &ch);
        if (nc == NULL) {
            json_decref(a);
            return NULL;
        }
        if (json_array_append_new(a, nc) != 0) {
            json_decref(a);
            return fail(d, "out of memory");
        }
        if (ch + 1 > *h)
            *h = ch + 1;
    }
    return a;
}

static const json_t *graph_node(struct dec *d, const char *id, size_t n)
{
    if (json_is_object(d->nodes))
        return json_object_getn(d->nodes, id, n);
    /* Array nodes are keyed by their canonical indices, as for..in gives. */
    if (n == 0 || n > 9 || (n > 1 && id[0] == '0'))
        return NULL;
    size_t idx = 0;
    for (size_t i = 0; i < n; i++) {
        if (id[i] < '0' || id[i] > '9')
            return NULL;
        idx = idx * 10 + (size_t)(id[i] - '0');
    }
    return json_array_get(d->nodes, idx);
}

/* Resolves a graph reference. Each node is resolved once; later references
 * share the result (JSON text cannot tell, and Runner shares identity too).
 * A reference to a node still being resolved is a cycle: refused. */
static json_t *resolve(struct dec *d, const json_t *ref, int depth, int *h)
{
    const char *id = json_string_value(ref);
    size_t n = json_string_length(ref);

    if (depth > CV_RJ_MAX_DEPTH)
        return fail(d, "nested too deep");
    if (is_unsafe_key(id, n))
        return fail(d, "unresolved reference \"%.64s\"", id);
    json_t *idx = json_object_getn(d->ids, id, n);
    if (idx != NULL) {
        struct slot *s = &d->slots[json_integer_value(idx)];
        if (s->v == NULL)
            return fail(d, "reference cycle at \"%.64s\"", id);
        /* Shared subtrees count at every place they appear. */
        if (depth + s->height > CV_RJ_MAX_DEPTH)
            return fail(d, "nested too deep");
        *h = s->height;
        return json_incref(s->v);
    }
    const json_t *node = graph_node(d, id, n);
    if (!json_is_object(node))
        return fail(d, "unresolved reference \"%.64s\"", id);
    if (d->nslots == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 16;
        struct slot *ns = realloc(d->slots, cap * sizeof *ns);
        if (ns == NULL)
            return fail(d, "out of memory");
        d->slots = ns;
        d->cap = cap;
    }
    size_t si = d->nslots++;
    d->slots[si] = (struct slot){NULL, 0};
    if (json_object_setn_new(d->ids, id, n, json_integer((json_int_t)si)) != 0)
        return fail(d, "out of memory");

    const char *kind = json_string_value(json_object_get(node, "kind"));
    json_t *value = json_object_get(node, "value");
    json_t *out = NULL;
    int vh = 0;
    if (kind != NULL && strcmp(kind, "array") == 0) {
        if (!json_is_array(value))
            return fail(d, "invalid array node \"%.64s\"", id);
        out = walk_array(d, value, depth, &vh);
    } else if (kind != NULL && strcmp(kind, "object") == 0) {
        if (!json_is_object(value))
            return fail(d, "invalid object node \"%.64s\"", id);
        out = walk_object(d, value, depth, &vh);
    } else if (kind != NULL && strcmp(kind, "type") == 0) {
        const json_t *type = json_object_get(node, "type");
        if (!json_is_string(type) || value == NULL)
            return fail(d, "invalid type node \"%.64s\"", id);
        out = walk_record(d, type, value, depth, &vh);
    } else {
        return fail(d, "unsupported node kind");
    }
    if (out == NULL)
        return NULL;
    /* Slots may have moved while the children were resolved. */
    d->slots[si].v = json_incref(out);
    d->slots[si].height = vh + 1;
    *h = vh + 1;
    return out;
}

/* Builds the wire-form tree for v at Runner's depth (root 0; each array
 * element, member, record value and reference one more; > 1000 refused).
 * *h receives the levels below v. Returns a new reference or NULL. */
static json_t *walk(struct dec *d, json_t *v, int depth, int *h)
{
    *h = 0;
    if (depth > CV_RJ_MAX_DEPTH)
        return fail(d, "nested too deep");
    if (json_is_array(v))
        return walk_array(d, v, depth, h);
    if (!json_is_object(v))
        return json_incref(v);
    if (d->graph && json_object_get(v, "__ref") != NULL) {
        const json_t *ref = json_object_get(v, "__ref");
        if (json_object_size(v) != 1 || !json_is_string(ref))
            return fail(d, "invalid object reference");
        int rh = 0;
        json_t *r = resolve(d, ref, depth + 1, &rh);
        *h = rh + 1;
        return r;
    }
    const json_t *type = json_object_get(v, "__type");
    json_t *value = json_object_get(v, "value");
    if (json_is_string(type) && value != NULL)
        return walk_record(d, type, value, depth, h);
    return walk_object(d, v, depth, h);
}

/* Copies compact JSON text p[0..n), writing each number that overflows a
 * double as a NonFiniteNumber record. Returns a malloc'd text, or NULL. */
static char *infinities(const char *p, size_t n, size_t *out_len)
{
    static const char pos[] = "{\"__type\":\"NonFiniteNumber\",\"value\":\"Infinity\"}";
    static const char neg[] = "{\"__type\":\"NonFiniteNumber\",\"value\":\"-Infinity\"}";
    struct cv_buf b;
    size_t i = 0;
    int rc = 0;

    cv_buf_init(&b, n * (sizeof neg) + 1);
    while (i < n && rc == 0) {
        size_t start = i;
        if (p[i] == '"') {
            for (i++; i < n && p[i] != '"'; i++)
                if (p[i] == '\\')
                    i++;
            i++;
        } else if (p[i] == '-' || (p[i] >= '0' && p[i] <= '9')) {
            while (i < n && strchr("0123456789+-.eE", p[i]) != NULL)
                i++;
            char *tok = strndup(p + start, i - start);
            if (tok == NULL) {
                rc = CV_ENOMEM;
                break;
            }
            double x = strtod(tok, NULL);
            free(tok);
            if (x == HUGE_VAL || x == -HUGE_VAL) {
                rc = x > 0 ? cv_buf_append(&b, pos, sizeof pos - 1)
                           : cv_buf_append(&b, neg, sizeof neg - 1);
                continue;
            }
        } else {
            i++;
        }
        if (i > n)
            i = n;
        rc = cv_buf_append(&b, p + start, i - start);
    }
    if (rc != 0) {
        cv_buf_fini(&b);
        return NULL;
    }
    *out_len = b.len;
    return (char *)b.data; /* off is 0: nothing was consumed */
}

json_t *cv_rj_decode(const char *in, size_t len, char *why, size_t whylen)
{
    struct dec d = {.why = why, .whylen = whylen};
    const char *reason = NULL;
    json_t *root = NULL, *out = NULL;
    char *buf = malloc(len ? len : 1);
    size_t n;

    if (why != NULL && whylen > 0)
        why[0] = '\0';
    if (buf == NULL) {
        fail(&d, "out of memory");
        goto out;
    }
    /* Our own strict check first: jansson alone would accept some texts
     * JSON.parse refuses and has no depth limit of ours. */
    if (cv_rj_compact(in, len, buf, &n, &reason) != 0) {
        fail(&d, "%s", reason);
        goto out;
    }
    json_error_t err;
    root = json_loadb(buf, n, JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL | JSON_ALLOW_NUL, &err);
    if (root == NULL && strstr(err.text, "overflow") != NULL) {
        /* JSON.parse reads 1e400 as Infinity: retry with such numbers as
         * NonFiniteNumber records (jansson reals cannot hold them). */
        size_t n2;
        char *b2 = infinities(buf, n, &n2);
        if (b2 != NULL) {
            root = json_loadb(b2, n2, JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL | JSON_ALLOW_NUL,
                              &err);
            free(b2);
        }
    }
    if (root == NULL) {
        /* e.g. a lone surrogate escape ("\ud800"), which UTF-8 cannot hold. */
        fail(&d, "%s", err.text);
        goto out;
    }
    int h;
    const json_t *nodes = json_object_get(root, "nodes");
    if (json_is_true(json_object_get(root, "__graph")) && json_object_get(root, "root") != NULL &&
        (json_is_object(nodes) || json_is_array(nodes))) {
        d.graph = true;
        d.nodes = nodes;
        if ((d.ids = json_object()) == NULL) {
            fail(&d, "out of memory");
            goto out;
        }
        out = walk(&d, json_object_get(root, "root"), 0, &h);
    } else {
        out = walk(&d, root, 0, &h);
    }
out:
    for (size_t i = 0; i < d.nslots; i++)
        json_decref(d.slots[i].v);
    free(d.slots);
    json_decref(d.ids);
    json_decref(root);
    free(buf);
    return out;
}

/* ------------------------------------------------------------------------
 * Encoding, as JSON.stringify writes the tree. */

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
    if (x > -MAX_EXACT_INT && x < MAX_EXACT_INT && x == (double)(long long)x)
        return (size_t)snprintf(out, 32, "%lld", (long long)x);

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
