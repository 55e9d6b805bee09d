#include "codec/rjson.h"

#include <string.h>

#include "codec/text.h"
#include "core/err.h"

/* ------------------------------------------------------------------------
 * Pass-through scanner: cv_rj_compact validates and compacts in one pass
 * with no allocation; cv_rj_top_scan and cv_rj_select_input then read the
 * compact text, which they can trust to be valid JSON. */

/* Byte classes inside a string: 0 copies through, the rest need a look. */
enum { C_PLAIN, C_QUOTE, C_BSLASH, C_CTRL, C_UTF8 };

/* clang-format off */
static const unsigned char str_class[256] = {
    /* 0x00..0x1f: bare control characters are refused by JSON.parse. */
    [0x00] = C_CTRL, [0x01] = C_CTRL, [0x02] = C_CTRL, [0x03] = C_CTRL, [0x04] = C_CTRL,
    [0x05] = C_CTRL, [0x06] = C_CTRL, [0x07] = C_CTRL, [0x08] = C_CTRL, [0x09] = C_CTRL,
    [0x0a] = C_CTRL, [0x0b] = C_CTRL, [0x0c] = C_CTRL, [0x0d] = C_CTRL, [0x0e] = C_CTRL,
    [0x0f] = C_CTRL, [0x10] = C_CTRL, [0x11] = C_CTRL, [0x12] = C_CTRL, [0x13] = C_CTRL,
    [0x14] = C_CTRL, [0x15] = C_CTRL, [0x16] = C_CTRL, [0x17] = C_CTRL, [0x18] = C_CTRL,
    [0x19] = C_CTRL, [0x1a] = C_CTRL, [0x1b] = C_CTRL, [0x1c] = C_CTRL, [0x1d] = C_CTRL,
    [0x1e] = C_CTRL, [0x1f] = C_CTRL, ['"'] = C_QUOTE, ['\\'] = C_BSLASH,
    [0x80 ... 0xff] = C_UTF8,
};
/* clang-format on */

static inline bool is_ws(unsigned char c)
{
    return c == ' ' || c == '\n' || c == '\r' || c == '\t';
}

static inline bool is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* Length of the valid UTF-8 sequence starting at p[0] (>= 0x80), or 0.
 * Overlong forms, encoded surrogates and code points past U+10FFFF are
 * invalid, as in RFC 3629. */
static size_t utf8_len(const unsigned char *p, size_t avail)
{
    unsigned char c = p[0];
    unsigned char lo = 0x80, hi = 0xbf;
    size_t n;

    if (c >= 0xc2 && c <= 0xdf)
        n = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        if (c == 0xe0)
            lo = 0xa0;
        else if (c == 0xed)
            hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f;
    } else
        return 0;
    if (avail < n || p[1] < lo || p[1] > hi)
        return 0;
    for (size_t k = 2; k < n; k++)
        if ((p[k] & 0xc0) != 0x80)
            return 0;
    return n;
}

struct scan {
    const unsigned char *p;
    size_t n, i;
    const char *why;
};

/* Checks the string starting at s->p[s->i] == '"'; leaves s->i after the
 * closing quote. */
static int scan_string(struct scan *s)
{
    const unsigned char *p = s->p;
    size_t n = s->n, i = s->i + 1;

    for (;;) {
        /* Eight bytes at a time while none is '"', '\\', a control or
         * non-ASCII (SWAR; a false alarm only drops to the byte loop). */
        while (n - i >= 8) {
            uint64_t w;
            memcpy(&w, p + i, 8);
            if (cv_json_special8(w) != 0 || cv_nonascii8(w))
                break;
            i += 8;
        }
        while (i < n && str_class[p[i]] == C_PLAIN)
            i++;
        if (i >= n) {
            s->why = "unterminated string";
            return CV_EPROTO;
        }
        switch (str_class[p[i]]) {
        case C_QUOTE: s->i = i + 1; return 0;
        case C_BSLASH:
            if (i + 1 >= n) {
                s->why = "unterminated string";
                return CV_EPROTO;
            }
            switch (p[i + 1]) {
            case '"':
            case '\\':
            case '/':
            case 'b':
            case 'f':
            case 'n':
            case 'r':
            case 't': i += 2; break;
            case 'u':
                /* Any four hex digits: JSON.parse accepts lone surrogates. */
                if (i + 6 > n || cv_hexval(p[i + 2]) < 0 || cv_hexval(p[i + 3]) < 0 ||
                    cv_hexval(p[i + 4]) < 0 || cv_hexval(p[i + 5]) < 0) {
                    s->why = "bad \\u escape";
                    return CV_EPROTO;
                }
                i += 6;
                break;
            default: s->why = "bad escape"; return CV_EPROTO;
            }
            break;
        case C_CTRL: s->why = "control character in string"; return CV_EPROTO;
        default: {
            size_t k = utf8_len(p + i, n - i);
            if (k == 0) {
                s->why = "invalid UTF-8";
                return CV_EPROTO;
            }
            i += k;
            break;
        }
        }
    }
}

/* -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static int scan_number(struct scan *s)
{
    const unsigned char *p = s->p;
    size_t n = s->n, i = s->i;

    if (p[i] == '-')
        i++;
    if (i >= n || !is_digit(p[i]))
        goto bad;
    if (p[i] == '0') {
        i++;
        if (i < n && is_digit(p[i])) {
            s->why = "leading zero";
            return CV_EPROTO;
        }
    } else {
        while (i < n && is_digit(p[i]))
            i++;
    }
    if (i < n && p[i] == '.') {
        i++;
        if (i >= n || !is_digit(p[i]))
            goto bad;
        while (i < n && is_digit(p[i]))
            i++;
    }
    if (i < n && (p[i] == 'e' || p[i] == 'E')) {
        i++;
        if (i < n && (p[i] == '+' || p[i] == '-'))
            i++;
        if (i >= n || !is_digit(p[i]))
            goto bad;
        while (i < n && is_digit(p[i]))
            i++;
    }
    s->i = i;
    return 0;
bad:
    s->why = "bad number";
    return CV_EPROTO;
}

static int scan_literal(struct scan *s, const char *lit, size_t len)
{
    if (s->n - s->i < len || memcmp(s->p + s->i, lit, len) != 0) {
        s->why = "unexpected character";
        return CV_EPROTO;
    }
    s->i += len;
    return 0;
}

/* The whitespace compactor: bytes are copied in runs, so a compact input
 * costs one memmove (none when compacting in place). */
struct sink {
    unsigned char *o;
    size_t w;   /* bytes written to o */
    size_t run; /* start of the pending run in the input */
};

static inline void skip_ws(struct scan *s, struct sink *k)
{
    size_t i = s->i;
    if (i < s->n && is_ws(s->p[i])) {
        size_t len = i - k->run;
        if (k->o + k->w != s->p + k->run)
            memmove(k->o + k->w, s->p + k->run, len);
        k->w += len;
        do
            i++;
        while (i < s->n && is_ws(s->p[i]));
        k->run = i;
        s->i = i;
    }
}

/* Expects a member name and its colon at s->i; leaves s->i at the value. */
static int scan_key(struct scan *s, struct sink *k)
{
    int rc;

    if (s->i >= s->n || s->p[s->i] != '"') {
        s->why = s->i >= s->n ? "truncated" : "expected a member name";
        return CV_EPROTO;
    }
    if ((rc = scan_string(s)) != 0)
        return rc;
    skip_ws(s, k);
    if (s->i >= s->n || s->p[s->i] != ':') {
        s->why = "expected ':'";
        return CV_EPROTO;
    }
    s->i++;
    skip_ws(s, k);
    return 0;
}

static int refuse(struct scan *s, const char *why)
{
    s->why = why;
    return CV_EPROTO;
}

static int scan_scalar(struct scan *s)
{
    switch (s->p[s->i]) {
    case '"': return scan_string(s);
    case 't': return scan_literal(s, "true", 4);
    case 'f': return scan_literal(s, "false", 5);
    case 'n': return scan_literal(s, "null", 4);
    case '-':
    case '0' ... '9': return scan_number(s);
    default: return refuse(s, "unexpected character");
    }
}

/* One bit per open container: 1 = object. */
static inline void set_bit(unsigned char *stack, size_t i, bool obj)
{
    if (obj)
        stack[i / 8] |= (unsigned char)(1u << (i % 8));
    else
        stack[i / 8] &= (unsigned char)~(1u << (i % 8));
}

static inline bool get_bit(const unsigned char *stack, size_t i)
{
    return stack[i / 8] & (1u << (i % 8));
}

/* Checks one JSON text, compacting it into k. Iterative: containers nest
 * on a bit stack, so depth costs 125 bytes, not recursion. */
static int scan_text(struct scan *s, struct sink *k)
{
    unsigned char stack[(CV_RJ_MAX_DEPTH + 7) / 8];
    size_t depth = 0;
    int rc;

    skip_ws(s, k);
    if (s->i >= s->n)
        return refuse(s, "empty");
    for (;;) {
        /* A value starts at s->i. */
        if (s->i >= s->n)
            return refuse(s, "truncated");
        unsigned char c = s->p[s->i];
        if (c == '{' || c == '[') {
            if (depth == CV_RJ_MAX_DEPTH)
                return refuse(s, "nested too deep");
            set_bit(stack, depth++, c == '{');
            s->i++;
            skip_ws(s, k);
            if (s->i >= s->n || s->p[s->i] != (c == '{' ? '}' : ']')) {
                if (c == '{' && (rc = scan_key(s, k)) != 0)
                    return rc;
                continue; /* the first element's value */
            }
            s->i++; /* empty container */
            depth--;
        } else if ((rc = scan_scalar(s)) != 0) {
            return rc;
        }
        /* After a value: close containers until a ',' announces the next. */
        for (;;) {
            skip_ws(s, k);
            if (depth == 0)
                return s->i == s->n ? 0 : refuse(s, "data after the value");
            if (s->i >= s->n)
                return refuse(s, "truncated");
            bool obj = get_bit(stack, depth - 1);
            c = s->p[s->i];
            if (c == ',')
                break;
            if (c != (obj ? '}' : ']'))
                return refuse(s, obj ? "expected ',' or '}'" : "expected ',' or ']'");
            s->i++;
            depth--;
        }
        s->i++;
        skip_ws(s, k);
        if (get_bit(stack, depth - 1) && (rc = scan_key(s, k)) != 0)
            return rc;
    }
}

int cv_rj_compact(const char *in, size_t len, char *out, size_t *out_len, const char **why)
{
    struct scan s = {(const unsigned char *)in, len, 0, NULL};
    struct sink k = {(unsigned char *)out, 0, 0};
    int rc = scan_text(&s, &k);

    if (rc != 0) {
        if (why != NULL)
            *why = s.why;
        return rc;
    }
    if (k.o + k.w != s.p + k.run)
        memmove(k.o + k.w, s.p + k.run, s.n - k.run);
    k.w += s.n - k.run;
    *out_len = k.w;
    return 0;
}

/* ------------------------------------------------------------------------
 * Readers of compact text. The text was validated by cv_rj_compact, so
 * these only find ends; they still never read past len, and report
 * CV_EPROTO on anything that cannot occur in compact JSON. */

/* Index just after the string whose opening quote is at p[i], or 0. */
static size_t skip_string(const char *p, size_t n, size_t i)
{
    for (i++; i < n; i++) {
        const char *q = memchr(p + i, '"', n - i);
        if (q == NULL)
            return 0;
        /* The quote ends the string unless an odd run of backslashes precedes it. */
        size_t j = (size_t)(q - p), bs = 0;
        while (j - bs > i && p[j - bs - 1] == '\\')
            bs++;
        if (bs % 2 == 0)
            return j + 1;
        i = j;
    }
    return 0;
}

/* Index just after the value starting at p[i], or 0. */
static size_t skip_value(const char *p, size_t n, size_t i)
{
    if (i >= n)
        return 0;
    if (p[i] == '"')
        return skip_string(p, n, i);
    if (p[i] == '{' || p[i] == '[') {
        size_t depth = 0;
        while (i < n) {
            char c = p[i];
            if (c == '"') {
                if ((i = skip_string(p, n, i)) == 0)
                    return 0;
                continue;
            }
            if (c == '{' || c == '[')
                depth++;
            else if ((c == '}' || c == ']') && --depth == 0)
                return i + 1;
            i++;
        }
        return 0;
    }
    while (i < n && p[i] != ',' && p[i] != '}' && p[i] != ']')
        i++;
    return i;
}

/* Decodes the next UTF-16 code unit of the JSON string body p[0..n) at
 * *i (escapes included); returns it, or -1 at the end. Bytes >= 0x80 come
 * back as themselves: callers compare against ASCII only. */
static int next_unit(const char *p, size_t n, size_t *i)
{
    size_t k = *i;
    if (k >= n)
        return -1;
    unsigned c = (unsigned char)p[k];
    if (c != '\\') {
        *i = k + 1;
        return (int)c;
    }
    if (k + 1 >= n)
        return -1;
    switch (p[k + 1]) {
    case 'b': c = '\b'; break;
    case 'f': c = '\f'; break;
    case 'n': c = '\n'; break;
    case 'r': c = '\r'; break;
    case 't': c = '\t'; break;
    case 'u':
        if (k + 6 > n)
            return -1;
        c = 0;
        for (size_t j = 2; j < 6; j++) {
            int h = cv_hexval((unsigned char)p[k + j]);
            if (h < 0)
                return -1;
            c = c * 16 + (unsigned)h;
        }
        *i = k + 6;
        return (int)c;
    default: c = (unsigned char)p[k + 1]; break;
    }
    *i = k + 2;
    return (int)c;
}

/* Does the JSON string body p[0..n) (between the quotes) decode to the
 * ASCII text a followed by b? "in\u0070ut" is "input". */
static bool str_is2(const char *p, size_t n, const char *a, const char *b)
{
    size_t i = 0;
    for (;;) {
        if (*a == '\0') {
            if (b == NULL)
                break;
            a = b;
            b = NULL;
            continue;
        }
        if (next_unit(p, n, &i) != (unsigned char)*a)
            return false;
        a++;
    }
    return i == n;
}

static bool str_is(const char *p, size_t n, const char *lit)
{
    return str_is2(p, n, lit, NULL);
}

#define ESCAPE_PREFIX "$runner.escape::"

/* Calls fn for each member of the object whose '{' is at p[i], with the
 * key body (between quotes) and the value slice. Returns 0 or CV_EPROTO. */
struct member {
    const char *key;
    size_t key_len;
    size_t off, len; /* the value */
};

typedef void (*member_cb)(const char *p, const struct member *m, void *arg);

static int each_member(const char *p, size_t n, size_t i, member_cb fn, void *arg)
{
    if (i >= n || p[i] != '{')
        return CV_EPROTO;
    i++;
    if (i < n && p[i] == '}')
        return 0;
    for (;;) {
        struct member m;
        size_t e;
        if (i >= n || p[i] != '"' || (e = skip_string(p, n, i)) == 0)
            return CV_EPROTO;
        m.key = p + i + 1;
        m.key_len = e - i - 2;
        if (e >= n || p[e] != ':')
            return CV_EPROTO;
        m.off = e + 1;
        if ((e = skip_value(p, n, m.off)) == 0 || e == m.off)
            return CV_EPROTO;
        m.len = e - m.off;
        fn(p, &m, arg);
        if (e >= n)
            return CV_EPROTO;
        if (p[e] == '}')
            return 0;
        if (p[e] != ',')
            return CV_EPROTO;
        i = e + 1;
    }
}

static bool slice_is_str(const char *p, struct cv_rj_slice s, const char *lit)
{
    return s.present && s.len >= 2 && p[s.off] == '"' && str_is(p + s.off + 1, s.len - 2, lit);
}

/* What a record needs: its last "__type" and "value" members. */
struct rec {
    struct cv_rj_slice type, value;
};

static void rec_member(const char *p, const struct member *m, void *arg)
{
    struct rec *r = arg;
    (void)p;
    if (str_is(m->key, m->key_len, "__type"))
        r->type = (struct cv_rj_slice){m->off, m->len, true};
    else if (str_is(m->key, m->key_len, "value"))
        r->value = (struct cv_rj_slice){m->off, m->len, true};
}

static bool rec_is(const char *p, const struct rec *r)
{
    return r->type.present && p[r->type.off] == '"' && r->value.present;
}

/* A BigInt record's value that is zero ("0", "-0", "000"): 0n is falsy. */
static bool bigint_zero(const char *p, struct cv_rj_slice v)
{
    if (!v.present || v.len < 3 || p[v.off] != '"')
        return false;
    size_t i = v.off + 1, end = v.off + v.len - 1;
    if (p[i] == '-')
        i++;
    if (i == end)
        return false;
    for (; i < end; i++)
        if (p[i] != '0')
            return false;
    return true;
}

/* JS truthiness of the decoded value in p[off..off+len). */
static bool truthy(const char *p, size_t off, size_t len)
{
    switch (p[off]) {
    case 'f':
    case 'n': return false;
    case 't': return true;
    case '"': return len > 2;
    case '[': return true;
    case '{': {
        struct rec r = {{0}, {0}};
        if (each_member(p, off + len, off, rec_member, &r) != 0 || !rec_is(p, &r))
            return true;
        if (slice_is_str(p, r.type, "Undefined"))
            return false;
        if (slice_is_str(p, r.type, "NonFiniteNumber"))
            return !slice_is_str(p, r.value, "NaN");
        if (slice_is_str(p, r.type, "BigInt"))
            return !bigint_zero(p, r.value);
        return true;
    }
    default:
        /* A number is falsy when every digit of its mantissa is zero. */
        for (size_t i = off; i < off + len && p[i] != 'e' && p[i] != 'E'; i++)
            if (p[i] >= '1' && p[i] <= '9')
                return true;
        return false;
    }
}

/* The members of the top-level object the gateway needs. A plain object's
 * keys are unescaped when decoded (one "$runner.escape::" prefix is
 * stripped), so "input" and "$runner.escape::input" both become the key
 * "input"; JSON.parse keeps a repeated key at its first position with its
 * last value, and the decoder then assigns keys in that order. So of the
 * two spellings, the one that first appears later wins, with its last
 * value. A record's "__type"/"value" and the graph's keys are read raw. */
enum {
    K_INPUT,
    K_PAYLOAD,
    K_RET,
    K_NAMED,
    K_TYPE = K_NAMED,
    K_VALUE,
    K_GRAPH,
    K_ROOT,
    K_NODES,
    K_N
};

static const char *const key_names[K_N] = {"input", "payload", "returnPayload", "__type",
                                           "value", "__graph", "root",          "nodes"};

struct spelling {
    size_t first;         /* ordinal of the first occurrence */
    struct cv_rj_slice v; /* the last value */
};

struct top_acc {
    size_t count;
    struct spelling sp[K_N][2]; /* [key][0 plain, 1 prefixed]; only K_INPUT..K_RET use [1] */
};

static void note(struct top_acc *a, int key, int esc, const struct member *m)
{
    struct spelling *s = &a->sp[key][esc];
    if (!s->v.present)
        s->first = a->count;
    s->v = (struct cv_rj_slice){m->off, m->len, true};
}

static void top_member(const char *p, const struct member *m, void *arg)
{
    struct top_acc *a = arg;

    (void)p;
    a->count++;
    /* Cheap first-byte filter: this runs on every member of every request.
     * A key starting with an escape or '$' takes the slow path. */
    switch (m->key_len ? m->key[0] : 0) {
    case 'i':
    case 'p':
    case 'r':
    case 'v':
    case 'n':
    case '_':
    case '\\':
    case '$': break;
    default: return;
    }
    for (int k = 0; k < K_N; k++) {
        if (str_is(m->key, m->key_len, key_names[k])) {
            note(a, k, 0, m);
            return;
        }
    }
    for (int k = 0; k < K_NAMED; k++) {
        if (str_is2(m->key, m->key_len, ESCAPE_PREFIX, key_names[k])) {
            note(a, k, 1, m);
            return;
        }
    }
}

/* The winning value of an unescaped key (see top_acc). */
static struct cv_rj_slice winner(const struct top_acc *a, int key)
{
    const struct spelling *s = a->sp[key];
    if (s[0].v.present && s[1].v.present)
        return s[1].first > s[0].first ? s[1].v : s[0].v;
    return s[1].v.present ? s[1].v : s[0].v;
}

int cv_rj_top_scan(const char *compact, size_t len, struct cv_rj_top *top)
{
    memset(top, 0, sizeof(*top));
    if (len == 0)
        return CV_EPROTO;
    if (compact[0] != '{')
        return 0;
    struct top_acc a;
    memset(&a, 0, sizeof(a));
    int rc = each_member(compact, len, 0, top_member, &a);
    if (rc != 0)
        return rc;
    /* Serializer.parse: a graph first (__graph === true, a root, object
     * nodes), then a typed record, then a plain object. */
    struct cv_rj_slice g = a.sp[K_GRAPH][0].v, nodes = a.sp[K_NODES][0].v;
    struct rec r = {a.sp[K_TYPE][0].v, a.sp[K_VALUE][0].v};
    top->is_object = true;
    top->is_graph = g.present && g.len == 4 && memcmp(compact + g.off, "true", 4) == 0 &&
                    a.sp[K_ROOT][0].v.present && nodes.present &&
                    (compact[nodes.off] == '{' || compact[nodes.off] == '[');
    top->is_record = !top->is_graph && rec_is(compact, &r);
    if (top->is_graph || top->is_record)
        return 0;
    top->input = winner(&a, K_INPUT);
    top->payload = winner(&a, K_PAYLOAD);
    struct cv_rj_slice ret = winner(&a, K_RET);
    top->return_payload = ret.present && truthy(compact, ret.off, ret.len);
    return 0;
}

int cv_rj_select_input(const char *compact, size_t len, const char **text, size_t *off,
                       size_t *out_len, bool *whole_body)
{
    struct cv_rj_top top;

    *whole_body = false;
    *text = compact;
    *off = 0;
    *out_len = len;
    if (len == 0) {
        *text = CV_RJ_UNDEFINED;
        *out_len = sizeof(CV_RJ_UNDEFINED) - 1;
        return 0;
    }
    int rc = cv_rj_top_scan(compact, len, &top);
    if (rc != 0)
        return rc;
    if (top.is_graph)
        *whole_body = true;
    else if (top.input.present) {
        *off = top.input.off;
        *out_len = top.input.len;
    }
    return 0;
}
