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

#include "codec/rjson_regexp.h"
#include "core/err.h"

#define ESCAPE_PREFIX "$runner.escape::"
#define ESCAPE_LEN (sizeof(ESCAPE_PREFIX) - 1)
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

/* Payload checks, one per built-in type (§7.2), as Runner's type
 * definitions deserialize. Each returns NULL if *v is valid (possibly
 * replaced by its normal form; the old reference is released), "" for a
 * generic "invalid <type> payload", or a specific reason. */
typedef const char *(*payload_check)(json_t **v, unsigned elem);

static const char *replace(json_t **v, json_t *nv)
{
    if (nv == NULL)
        return "out of memory";
    json_decref(*v);
    *v = nv;
    return NULL;
}

static const char *check_undefined(json_t **v, unsigned elem)
{
    (void)elem;
    /* Runner ignores the value; keep the canonical null. */
    return json_is_null(*v) ? NULL : replace(v, json_null());
}

static const char *check_nonfinite(json_t **v, unsigned elem)
{
    const char *s = json_string_value(*v);
    (void)elem;
    if (s != NULL && json_string_length(*v) == strlen(s) &&
        (strcmp(s, "NaN") == 0 || strcmp(s, "Infinity") == 0 || strcmp(s, "-Infinity") == 0))
        return NULL;
    return "";
}

static const char *check_bigint(json_t **v, unsigned elem)
{
    (void)elem;
    if (!json_is_string(*v))
        return "";
    char *c = bigint_canon(json_string_value(*v), json_string_length(*v));
    if (c == NULL)
        return "";
    const char *why = replace(v, json_string(c));
    free(c);
    return why;
}

/* Stored as Date#toISOString gives it (epoch ms and fractions of other
 * lengths normalised), as Runner re-serializes a Date. */
static const char *check_date(json_t **v, unsigned elem)
{
    int64_t ms;
    char b[96];
    (void)elem;
    if (!date_value_ms(*v, &ms))
        return "";
    iso_string(ms, b, sizeof b);
    return replace(v, json_string(b));
}

static const char *check_regexp(json_t **v, unsigned elem)
{
    const json_t *pat = json_object_get(*v, "pattern"), *fl = json_object_get(*v, "flags");
    (void)elem;
    if (!json_is_object(*v) || !json_is_string(pat) || !json_is_string(fl))
        return "";
    const char *flags = json_string_value(fl);
    const char *why = cv_rj_regexp_check(json_string_value(pat), json_string_length(pat));
    if (why != NULL)
        return why;
    unsigned seen = 0;
    for (size_t i = 0; i < json_string_length(fl); i++) {
        const char *at = flags[i] != '\0' ? strchr("dgimsuvy", flags[i]) : NULL;
        if (at == NULL || (seen & (1u << (at - "dgimsuvy"))))
            return "invalid RegExp flags";
        seen |= 1u << (at - "dgimsuvy");
    }
    /* u and v together: new RegExp throws. */
    return (seen & (1u << 5)) && (seen & (1u << 6)) ? "invalid RegExp flags" : NULL;
}

/* new Map(entries): each entry an array; a missing key or value is
 * undefined and extra items are ignored, so entries become pairs. Built
 * anew: in a graph the arrays may be shared. */
static const char *check_map(json_t **v, unsigned elem)
{
    json_t *pairs;
    (void)elem;
    if (!json_is_array(*v))
        return "";
    if ((pairs = json_array()) == NULL)
        return "out of memory";
    for (size_t i = 0; i < json_array_size(*v); i++) {
        json_t *e = json_array_get(*v, i);
        if (!json_is_array(e)) {
            json_decref(pairs);
            return "";
        }
        json_t *k = json_array_get(e, 0), *val = json_array_get(e, 1);
        json_t *pair = json_pack("[OO]", k ? k : json_null(), val ? val : json_null());
        if (pair != NULL && k == NULL)
            json_array_set_new(pair, 0, cv_rj_make_undefined());
        if (pair != NULL && val == NULL)
            json_array_set_new(pair, 1, cv_rj_make_undefined());
        if (pair == NULL || json_array_append_new(pairs, pair) != 0) {
            json_decref(pairs);
            return "out of memory";
        }
    }
    return replace(v, pairs);
}

static const char *check_set(json_t **v, unsigned elem)
{
    (void)elem;
    return json_is_array(*v) ? NULL : "";
}

static const char *check_symbol(json_t **v, unsigned elem)
{
    static const char *const well_known[] = {
        "asyncIterator", "hasInstance", "isConcatSpreadable",
        "iterator",      "match",       "matchAll",
        "replace",       "search",      "species",
        "split",         "toPrimitive", "toStringTag",
        "unscopables",
    };
    const char *kind = json_string_value(json_object_get(*v, "kind"));
    const char *key = json_string_value(json_object_get(*v, "key"));
    (void)elem;
    if (kind == NULL || key == NULL)
        return "";
    if (strcmp(kind, "For") == 0)
        return NULL;
    if (strcmp(kind, "WellKnown") != 0)
        return "";
    for (size_t i = 0; i < sizeof well_known / sizeof *well_known; i++)
        if (strcmp(key, well_known[i]) == 0)
            return NULL;
    return "";
}

/* new URL(s) needs an absolute URL: at least a scheme (leading C0 controls
 * and spaces are stripped first). The rest of WHATWG parsing is not done. */
static const char *check_url(json_t **v, unsigned elem)
{
    const char *s = json_string_value(*v);
    (void)elem;
    if (s == NULL)
        return "";
    while (*s != '\0' && (unsigned char)*s <= 0x20)
        s++;
    if (!((*s | 0x20) >= 'a' && (*s | 0x20) <= 'z'))
        return "";
    for (s++; *s != ':'; s++)
        if (!(((*s | 0x20) >= 'a' && (*s | 0x20) <= 'z') || (*s >= '0' && *s <= '9') || *s == '+' ||
              *s == '-' || *s == '.'))
            return "";
    return NULL;
}

static const char *check_string(json_t **v, unsigned elem)
{
    (void)elem;
    return json_is_string(*v) ? NULL : "";
}

/* Records that decode to JS primitives (typeof is not "object"). */
static bool is_primitive_record(const json_t *v)
{
    return type_is(v, "Undefined") || type_is(v, "NonFiniteNumber") || type_is(v, "BigInt") ||
           type_is(v, "Symbol");
}

static const char *check_error(json_t **v, unsigned elem)
{
    const json_t *e = *v;
    const json_t *stack = json_object_get(e, "stack"), *cf = json_object_get(e, "customFields");
    (void)elem;
    if (!json_is_object(e) || !json_is_string(json_object_get(e, "name")) ||
        !json_is_string(json_object_get(e, "message")))
        return "";
    if (stack != NULL && !json_is_string(stack) && !cv_rj_is_undefined(stack))
        return "";
    if (cf != NULL && !cv_rj_is_undefined(cf) && (!json_is_object(cf) || is_primitive_record(cf)))
        return "";
    return NULL;
}

/* Byte types: integers 0..255, a whole number of elements. */
static const char *check_bytes(json_t **v, unsigned elem)
{
    const json_t *a = *v;
    if (!json_is_array(a) || json_array_size(a) % elem != 0)
        return "";
    for (size_t i = 0; i < json_array_size(a); i++) {
        const json_t *e = json_array_get(a, i);
        double x = json_number_value(e);
        if (!json_is_number(e) || !(x >= 0 && x <= 255) || x != (double)(int)x)
            return "";
    }
    return NULL;
}

static const struct type_def {
    const char *name;
    payload_check check;
    unsigned elem; /* byte types: the element size */
} type_defs[] = {
    {"Undefined", check_undefined, 0},
    {"NonFiniteNumber", check_nonfinite, 0},
    {"BigInt", check_bigint, 0},
    {"Date", check_date, 0},
    {"RegExp", check_regexp, 0},
    {"Map", check_map, 0},
    {"Set", check_set, 0},
    {"Symbol", check_symbol, 0},
    {"URL", check_url, 0},
    {"URLSearchParams", check_string, 0},
    {"Error", check_error, 0},
    {"Buffer", check_bytes, 1},
    {"ArrayBuffer", check_bytes, 1},
    {"DataView", check_bytes, 1},
    {"Uint8Array", check_bytes, 1},
    {"Int8Array", check_bytes, 1},
    {"Uint8ClampedArray", check_bytes, 1},
    {"Int16Array", check_bytes, 2},
    {"Uint16Array", check_bytes, 2},
    {"Int32Array", check_bytes, 4},
    {"Uint32Array", check_bytes, 4},
    {"Float32Array", check_bytes, 4},
    {"Float64Array", check_bytes, 8},
    {"BigInt64Array", check_bytes, 8},
    {"BigUint64Array", check_bytes, 8},
};

/* The built-in type named t[0..n), or NULL. */
static const struct type_def *find_type(const char *t, size_t n)
{
    if (t == NULL || strlen(t) != n)
        return NULL;
    for (size_t i = 0; i < sizeof type_defs / sizeof *type_defs; i++)
        if (strcmp(t, type_defs[i].name) == 0)
            return &type_defs[i];
    return NULL;
}

json_t *cv_rj_make_bytes(const char *type, const uint8_t *p, size_t n)
{
    const struct type_def *def = type != NULL ? find_type(type, strlen(type)) : NULL;
    if (def == NULL || def->elem == 0 || n % def->elem != 0 || (n > 0 && p == NULL))
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

/* A typed record: the type must be known before its value is decoded (as
 * Runner's registry looks it up first), then the value is checked. */
static json_t *walk_record(struct dec *d, const json_t *type, json_t *value, int depth, int *h)
{
    const char *t = json_string_value(type);
    const struct type_def *def = find_type(t, json_string_length(type));
    if (def == NULL)
        return fail(d, "unknown __type \"%.64s\"", t);
    int vh;
    json_t *v = walk(d, value, depth + 1, &vh);
    if (v == NULL)
        return NULL;
    const char *why = def->check(&v, def->elem);
    if (why != NULL) {
        json_decref(v);
        return why[0] != '\0' ? fail(d, "%s", why) : fail(d, "invalid %s payload", t);
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

/* Whether walk() would return a copy of v equal to v (tree form): no
 * typed record, no key with the escape prefix or one that would gain it,
 * no unsafe key, not too deep. The usual input is such a tree, and then
 * the copy (a tenth of a native call's instructions) is skipped. */
static bool plain(const json_t *v, int depth)
{
    if (depth > CV_RJ_MAX_DEPTH)
        return false;
    if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v); i++)
            if (!plain(json_array_get(v, i), depth + 1))
                return false;
        return true;
    }
    if (!json_is_object(v))
        return true;
    const char *k;
    size_t kl;
    json_t *c;
    json_object_keylen_foreach((json_t *)v, k, kl, c)
    {
        if (needs_escape(k, kl) || is_unsafe_key(k, kl) || !plain(c, depth + 1))
            return false;
    }
    return true;
}

static json_t *decode(const char *in, size_t len, bool compacted, char *why, size_t whylen);

json_t *cv_rj_decode(const char *in, size_t len, char *why, size_t whylen)
{
    return decode(in, len, false, why, whylen);
}

json_t *cv_rj_decode_compact(const char *in, size_t len, char *why, size_t whylen)
{
    return decode(in, len, true, why, whylen);
}

static json_t *decode(const char *in, size_t len, bool compacted, char *why, size_t whylen)
{
    struct dec d = {.why = why, .whylen = whylen};
    const char *reason = NULL;
    json_t *root = NULL, *out = NULL;
    char *own = NULL;
    const char *buf = in;
    size_t n = len;

    if (why != NULL && whylen > 0)
        why[0] = '\0';
    if (!compacted) {
        if ((own = malloc(len ? len : 1)) == NULL) {
            fail(&d, "out of memory");
            goto out;
        }
        /* Our own strict check first: jansson alone would accept some texts
         * JSON.parse refuses and has no depth limit of ours. */
        if (cv_rj_compact(in, len, own, &n, &reason) != 0) {
            fail(&d, "%s", reason);
            goto out;
        }
        buf = own;
    }
    /* JSON.parse reads 1e400 as Infinity: such numbers come out as
     * NonFiniteNumber records (jansson reals cannot hold them). */
    root = cv_rj_build(buf, n, &reason);
    if (root == NULL) {
        /* e.g. a lone surrogate escape ("\ud800"), which UTF-8 cannot hold. */
        fail(&d, "%s", reason);
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
    } else if (plain(root, 0)) {
        out = json_incref(root);
    } else {
        out = walk(&d, root, 0, &h);
    }
out:
    for (size_t i = 0; i < d.nslots; i++)
        json_decref(d.slots[i].v);
    free(d.slots);
    json_decref(d.ids);
    json_decref(root);
    free(own);
    return out;
}
