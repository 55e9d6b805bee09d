#include "codec/cwp.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "codec/gwroute.h"
#include "codec/text.h"
#include "core/err.h"

/* ---- Compacting validator ----
 *
 * One pass over the line: checks strict JSON syntax and UTF-8 and copies
 * every byte except the whitespace between tokens to out (w <= r always,
 * so out may equal in). Recursion depth is bounded by CV_CWP_MAX_DEPTH. */

struct cmp {
    const unsigned char *in;
    size_t n, r;
    char *out;
    size_t w;
    const char *why;
};

static void skip_ws(struct cmp *c)
{
    while (c->r < c->n) {
        unsigned char ch = c->in[c->r];
        if (ch != ' ' && ch != '\t' && ch != '\r' && ch != '\n')
            break;
        c->r++;
    }
}

static int fail(struct cmp *c, const char *why)
{
    c->why = why;
    return CV_EPROTO;
}

static bool is_hex(unsigned char ch)
{
    return (ch >= '0' && ch <= '9') || ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'f');
}

/* Length of the valid UTF-8 sequence at p[0..n) (first byte >= 0x80), or 0. */
static size_t utf8_len(const unsigned char *p, size_t n)
{
    unsigned char b0 = p[0];
    if (b0 >= 0xc2 && b0 <= 0xdf)
        return n >= 2 && (p[1] & 0xc0) == 0x80 ? 2 : 0;
    if (b0 >= 0xe0 && b0 <= 0xef) {
        if (n < 3 || (p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80)
            return 0;
        if (b0 == 0xe0 && p[1] < 0xa0)
            return 0; /* overlong */
        if (b0 == 0xed && p[1] >= 0xa0)
            return 0; /* surrogate */
        return 3;
    }
    if (b0 >= 0xf0 && b0 <= 0xf4) {
        if (n < 4 || (p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80 || (p[3] & 0xc0) != 0x80)
            return 0;
        if (b0 == 0xf0 && p[1] < 0x90)
            return 0;
        if (b0 == 0xf4 && p[1] >= 0x90)
            return 0;
        return 4;
    }
    return 0;
}

static int cmp_string(struct cmp *c)
{
    const unsigned char *in = c->in;
    size_t r = c->r + 1, w = c->w;
    c->out[w++] = '"';
    for (;;) {
        if (r >= c->n) {
            c->r = r;
            return fail(c, "unterminated string");
        }
        unsigned char ch = in[r];
        if (ch == '"') {
            c->out[w++] = '"';
            c->r = r + 1;
            c->w = w;
            return 0;
        }
        if (ch < 0x20) {
            c->r = r;
            return fail(c, "control character in string");
        }
        if (ch == '\\') {
            if (r + 1 >= c->n)
                return fail(c, "unterminated string");
            unsigned char e = in[r + 1];
            size_t k = 2;
            if (e == 'u') {
                if (r + 6 > c->n || !is_hex(in[r + 2]) || !is_hex(in[r + 3]) ||
                    !is_hex(in[r + 4]) || !is_hex(in[r + 5]))
                    return fail(c, "bad \\u escape");
                k = 6;
            } else if (!strchr("\"\\/bfnrt", e) || e == '\0') {
                return fail(c, "bad escape");
            }
            memmove(c->out + w, in + r, k);
            w += k;
            r += k;
            continue;
        }
        if (ch >= 0x80) {
            size_t k = utf8_len(in + r, c->n - r);
            if (k == 0) {
                c->r = r;
                return fail(c, "invalid UTF-8");
            }
            memmove(c->out + w, in + r, k);
            w += k;
            r += k;
            continue;
        }
        c->out[w++] = (char)ch;
        r++;
    }
}

static int cmp_number(struct cmp *c)
{
    const unsigned char *in = c->in;
    size_t r = c->r, start = r;
    if (r < c->n && in[r] == '-')
        r++;
    if (r >= c->n || in[r] < '0' || in[r] > '9')
        return fail(c, "bad number");
    if (in[r] == '0')
        r++;
    else
        while (r < c->n && in[r] >= '0' && in[r] <= '9')
            r++;
    if (r < c->n && in[r] == '.') {
        r++;
        if (r >= c->n || in[r] < '0' || in[r] > '9')
            return fail(c, "bad number");
        while (r < c->n && in[r] >= '0' && in[r] <= '9')
            r++;
    }
    if (r < c->n && (in[r] == 'e' || in[r] == 'E')) {
        r++;
        if (r < c->n && (in[r] == '+' || in[r] == '-'))
            r++;
        if (r >= c->n || in[r] < '0' || in[r] > '9')
            return fail(c, "bad number");
        while (r < c->n && in[r] >= '0' && in[r] <= '9')
            r++;
    }
    memmove(c->out + c->w, in + start, r - start);
    c->w += r - start;
    c->r = r;
    return 0;
}

static int cmp_literal(struct cmp *c, const char *lit, size_t len)
{
    if (c->n - c->r < len || memcmp(c->in + c->r, lit, len) != 0)
        return fail(c, "bad literal");
    memmove(c->out + c->w, lit, len);
    c->w += len;
    c->r += len;
    return 0;
}

static int cmp_value(struct cmp *c, int depth);

static int cmp_container(struct cmp *c, int depth, bool object)
{
    char close = object ? '}' : ']';
    if (depth >= CV_CWP_MAX_DEPTH)
        return fail(c, "nested too deeply");
    c->out[c->w++] = (char)c->in[c->r++];
    skip_ws(c);
    if (c->r < c->n && c->in[c->r] == close) {
        c->out[c->w++] = close;
        c->r++;
        return 0;
    }
    for (;;) {
        int rc;
        if (object) {
            skip_ws(c);
            if (c->r >= c->n || c->in[c->r] != '"')
                return fail(c, "expected a key");
            if ((rc = cmp_string(c)) != 0)
                return rc;
            skip_ws(c);
            if (c->r >= c->n || c->in[c->r] != ':')
                return fail(c, "expected ':'");
            c->out[c->w++] = ':';
            c->r++;
        }
        if ((rc = cmp_value(c, depth + 1)) != 0)
            return rc;
        skip_ws(c);
        if (c->r >= c->n)
            return fail(c, "unterminated container");
        if (c->in[c->r] == ',') {
            c->out[c->w++] = ',';
            c->r++;
            continue;
        }
        if (c->in[c->r] == close) {
            c->out[c->w++] = close;
            c->r++;
            return 0;
        }
        return fail(c, "expected ',' or end of container");
    }
}

static int cmp_value(struct cmp *c, int depth)
{
    skip_ws(c);
    if (c->r >= c->n)
        return fail(c, "missing value");
    switch (c->in[c->r]) {
    case '{': return cmp_container(c, depth, true);
    case '[': return cmp_container(c, depth, false);
    case '"': return cmp_string(c);
    case 't': return cmp_literal(c, "true", 4);
    case 'f': return cmp_literal(c, "false", 5);
    case 'n': return cmp_literal(c, "null", 4);
    default: return cmp_number(c);
    }
}

int cv_cwp_fix_utf8(const char *in, size_t len, struct cv_buf *out)
{
    const unsigned char *p = (const unsigned char *)in;
    size_t i = 0, run = 0;
    bool fixed = false;
    while (i < len) {
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        size_t k = utf8_len(p + i, len - i);
        if (k > 0) {
            i += k;
            continue;
        }
        if (!fixed) {
            cv_buf_reset(out);
            fixed = true;
        }
        /* One U+FFFD per maximal invalid byte, as the WHATWG decoder does
         * for lone bytes (a close enough rendering for logs and results). */
        int rc = cv_buf_append(out, in + run, i - run);
        if (rc == 0)
            rc = cv_buf_append(out, "\xef\xbf\xbd", 3);
        if (rc != 0)
            return rc;
        i++;
        run = i;
    }
    if (!fixed)
        return 0;
    int rc = cv_buf_append(out, in + run, len - run);
    return rc != 0 ? rc : 1;
}

/* ---- Walking compact, validated text ---- */

/* Index just past the value starting at t[i]. */
static size_t skip_value(const char *t, size_t i, size_t n)
{
    char ch = t[i];
    if (ch == '"') {
        for (i++; i < n; i++) {
            if (t[i] == '\\')
                i++;
            else if (t[i] == '"')
                return i + 1;
        }
        return n;
    }
    if (ch == '{' || ch == '[') {
        int depth = 0;
        for (; i < n; i++) {
            char d = t[i];
            if (d == '"') {
                i = skip_value(t, i, n) - 1;
            } else if (d == '{' || d == '[') {
                depth++;
            } else if (d == '}' || d == ']') {
                if (--depth == 0)
                    return i + 1;
            }
        }
        return n;
    }
    while (i < n && t[i] != ',' && t[i] != '}' && t[i] != ']')
        i++;
    return i;
}

/* Iterates the members of the object at t[*i] == '{' (first call) or
 * continues after the previous member. Returns false at the end. */
struct member {
    struct cv_cwp_slice key; /* string token with quotes */
    struct cv_cwp_slice val;
};

static bool next_member(const char *t, size_t n, size_t *i, struct member *m)
{
    size_t p = *i;
    if (p >= n || t[p] == '}')
        return false;
    p++; /* '{' or ',' */
    if (p >= n || t[p] != '"')
        return false;
    size_t ke = skip_value(t, p, n);
    m->key = (struct cv_cwp_slice){p, ke - p, true};
    size_t vs = ke + 1; /* ':' */
    size_t ve = skip_value(t, vs, n);
    m->val = (struct cv_cwp_slice){vs, ve - vs, true};
    *i = ve;
    return true;
}

bool cv_cwp_next_member(const char *text, size_t end, size_t *pos, struct cv_cwp_slice *key,
                        struct cv_cwp_slice *val)
{
    struct member mb;
    if (!next_member(text, end, pos, &mb))
        return false;
    *key = mb.key;
    *val = mb.val;
    return true;
}

bool cv_cwp_str_eq(const char *text, struct cv_cwp_slice s, const char *lit)
{
    size_t ll = strlen(lit);
    if (!s.present || s.len < 2 || text[s.off] != '"')
        return false;
    if (memchr(text + s.off, '\\', s.len) == NULL)
        return s.len == ll + 2 && memcmp(text + s.off + 1, lit, ll) == 0;
    char buf[128];
    int n = cv_cwp_str(text, s, buf, sizeof(buf));
    return n >= 0 && (size_t)n == ll && memcmp(buf, lit, ll) == 0;
}

int cv_cwp_str(const char *text, struct cv_cwp_slice s, char *dst, size_t cap)
{
    size_t w = 0;
    if (cap == 0 || !s.present || s.len < 2 || text[s.off] != '"')
        return CV_EPROTO;
    const char *p = text + s.off + 1, *end = text + s.off + s.len - 1;
    while (p < end) {
        char tmp[4];
        size_t k;
        if (*p != '\\') {
            tmp[0] = *p++;
            k = 1;
        } else {
            char e = p[1];
            p += 2;
            switch (e) {
            case 'b':
                tmp[0] = '\b';
                k = 1;
                break;
            case 'f':
                tmp[0] = '\f';
                k = 1;
                break;
            case 'n':
                tmp[0] = '\n';
                k = 1;
                break;
            case 'r':
                tmp[0] = '\r';
                k = 1;
                break;
            case 't':
                tmp[0] = '\t';
                k = 1;
                break;
            case 'u': {
                uint32_t cp = 0;
                for (int i = 0; i < 4; i++)
                    cp = cp << 4 | (uint32_t)cv_hexval((unsigned char)p[i]);
                p += 4;
                if (cp >= 0xd800 && cp <= 0xdbff && end - p >= 6 && p[0] == '\\' && p[1] == 'u') {
                    uint32_t lo = 0;
                    for (int i = 0; i < 4; i++)
                        lo = lo << 4 | (uint32_t)cv_hexval((unsigned char)p[2 + i]);
                    if (lo >= 0xdc00 && lo <= 0xdfff) {
                        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                        p += 6;
                    }
                }
                if (cp >= 0xd800 && cp <= 0xdfff)
                    cp = 0xfffd; /* a lone surrogate has no UTF-8 form */
                k = cv_utf8_put(tmp, cp);
                break;
            }
            default:
                tmp[0] = e;
                k = 1;
                break;
            }
        }
        if (w + k >= cap)
            return CV_ETOOBIG;
        memcpy(dst + w, tmp, k);
        w += k;
    }
    dst[w] = '\0';
    return (int)w;
}

/* A non-negative integer token (digits only) up to max, else -1. */
static int64_t int_token(const char *t, struct cv_cwp_slice s, uint64_t max)
{
    if (!s.present || s.len == 0 || s.len > 16)
        return -1;
    uint64_t v = 0;
    for (size_t i = 0; i < s.len; i++) {
        char ch = t[s.off + i];
        if (ch < '0' || ch > '9')
            return -1;
        v = v * 10 + (uint64_t)(ch - '0');
    }
    if (s.len > 1 && t[s.off] == '0')
        return -1;
    return v <= max ? (int64_t)v : -1;
}

static bool is_type(const char *t, struct cv_cwp_slice s, char ch)
{
    return s.present && s.len > 0 && t[s.off] == ch;
}

/* HTTP status in 400..599 from an integer token, else 0. */
static int err_status(const char *t, struct cv_cwp_slice s)
{
    int64_t v = int_token(t, s, 999);
    return v >= 400 && v <= 599 ? (int)v : 0;
}

#define KEY(name) cv_cwp_str_eq(t, mb.key, name)

static void parse_error(enum cv_cwp_proto proto, const char *t, size_t n,
                        struct cv_cwp_slice top_status, struct cv_cwp_msg *m)
{
    struct cv_cwp_slice message = {0}, code = {0}, http_code = {0}, code_name = {0};
    struct member mb;
    size_t i = m->error.off;
    while (next_member(t, n, &i, &mb)) {
        if (KEY("message"))
            message = mb.val;
        else if (KEY("code"))
            code = mb.val;
        else if (KEY("httpCode"))
            http_code = mb.val;
        else if (KEY("codeName"))
            code_name = mb.val;
    }
    if (!is_type(t, message, '"')) {
        m->type = CV_CWP_BAD;
        m->why = "error without a string message";
        return;
    }
    bool str_code = is_type(t, code, '"');
    bool num_code = code.present && !str_code && int_token(t, code, 999) >= 0;
    if (!str_code && !num_code && !(proto == CV_CWP_PROTO_V1 && !code.present)) {
        m->type = CV_CWP_BAD;
        m->why = "error code neither a string nor a legacy number";
        return;
    }
    if (num_code) {
        m->legacy_code = true;
        if (is_type(t, code_name, '"'))
            m->code_name = code_name;
    }
    int st = 0;
    switch (proto) {
    case CV_CWP_PROTO_V1:
        if (str_code && cv_cwp_str_eq(t, code, "NOT_FOUND"))
            st = 404;
        else if (str_code && cv_cwp_str_eq(t, code, "INVALID_REQUEST"))
            st = 400;
        break;
    case CV_CWP_PROTO_V2:
        if (num_code)
            st = err_status(t, code);
        if (!st)
            st = err_status(t, top_status);
        if (!st)
            st = err_status(t, http_code);
        break;
    case CV_CWP_PROTO_CWP1:
        st = err_status(t, top_status);
        if (!st)
            st = err_status(t, http_code);
        if (!st && num_code)
            st = err_status(t, code);
        break;
    }
    m->status = st ? st : 500;
}

static void parse_stream(const char *t, size_t n, struct cv_cwp_slice s, struct cv_cwp_msg *m)
{
    struct member mb;
    size_t i = s.off;
    m->stream = true;
    m->stream_status = 200;
    while (next_member(t, n, &i, &mb)) {
        if (KEY("status")) {
            int64_t v = int_token(t, mb.val, 999);
            if (v < 200 || v > 599) {
                m->type = CV_CWP_BAD;
                m->why = "stream status not an integer 200..599";
                return;
            }
            m->stream_status = (int)v;
        } else if (KEY("contentType")) {
            if (!is_type(t, mb.val, '"')) {
                m->type = CV_CWP_BAD;
                m->why = "stream contentType not a string";
                return;
            }
            m->content_type = mb.val;
        } else if (KEY("headers")) {
            if (!is_type(t, mb.val, '{')) {
                m->type = CV_CWP_BAD;
                m->why = "stream headers not an object";
                return;
            }
            m->headers = mb.val;
        }
    }
}

static void parse_frame(const char *t, size_t n, struct cv_cwp_slice bytes, struct cv_cwp_msg *m)
{
    if (!is_type(t, m->stream_name, '"')) {
        m->type = CV_CWP_BAD;
        m->why = "frame without a stream name";
        return;
    }
    switch (m->type) {
    case CV_CWP_DATA:
        if (!is_type(t, m->b64, '"')) {
            m->type = CV_CWP_BAD;
            m->why = "data frame without b64";
            return;
        }
        m->b64.off++;
        m->b64.len -= 2;
        break;
    case CV_CWP_FILE:
        if (!is_type(t, m->meta, '{')) {
            m->type = CV_CWP_BAD;
            m->why = "file frame without a meta object";
        }
        break;
    case CV_CWP_ACK: {
        int64_t v = int_token(t, bytes, CV_CWP_MAX_ID);
        if (v < 0) {
            m->type = CV_CWP_BAD;
            m->why = "ack without a byte count";
            return;
        }
        m->bytes = (uint64_t)v;
        break;
    }
    default: break;
    }
    (void)n;
}

int cv_cwp_parse(enum cv_cwp_proto proto, const char *line, size_t len, char *out, size_t *out_len,
                 struct cv_cwp_msg *m)
{
    struct cmp c = {(const unsigned char *)line, len, 0, out, 0, NULL};
    memset(m, 0, sizeof(*m));
    skip_ws(&c);
    if (c.r >= c.n || c.in[c.r] != '{') {
        m->why = "not a JSON object";
        return CV_EPROTO;
    }
    int rc = cmp_container(&c, 0, true);
    if (rc == 0) {
        skip_ws(&c);
        if (c.r != c.n) {
            c.why = "bytes after the object";
            rc = CV_EPROTO;
        }
    }
    if (rc != 0) {
        m->why = c.why;
        return rc;
    }
    *out_len = c.w;

    const char *t = out;
    size_t n = c.w, i = 0;
    struct member mb;
    struct cv_cwp_slice type = {0}, id = {0}, ok = {0}, status = {0}, stream = {0}, bytes = {0};
    while (next_member(t, n, &i, &mb)) {
        /* Last duplicate wins, as in JSON.parse. */
        if (KEY("id"))
            id = mb.val;
        else if (KEY("ok"))
            ok = mb.val;
        else if (KEY("result"))
            m->result = mb.val;
        else if (KEY("type"))
            type = mb.val;
        else if (KEY("error"))
            m->error = mb.val;
        else if (KEY("status"))
            status = mb.val;
        else if (KEY("stream"))
            stream = mb.val;
        else if (KEY("b64"))
            m->b64 = mb.val;
        else if (KEY("meta"))
            m->meta = mb.val;
        else if (KEY("bytes"))
            bytes = mb.val;
    }
    if (is_type(t, type, '"') && cv_cwp_str_eq(t, type, "hello")) {
        m->type = CV_CWP_HELLO;
        return 0;
    }
    int64_t idv = int_token(t, id, CV_CWP_MAX_ID);
    if (idv <= 0) {
        m->type = CV_CWP_WORKER;
        return 0;
    }
    m->id = (uint64_t)idv;
    if (type.present) {
        if (!is_type(t, type, '"')) {
            m->type = CV_CWP_BAD;
            m->why = "type not a string";
        } else if (cv_cwp_str_eq(t, type, "data")) {
            m->type = CV_CWP_DATA;
        } else if (cv_cwp_str_eq(t, type, "end")) {
            m->type = CV_CWP_END;
        } else if (cv_cwp_str_eq(t, type, "file")) {
            m->type = CV_CWP_FILE;
        } else if (cv_cwp_str_eq(t, type, "ack")) {
            m->type = CV_CWP_ACK;
        } else {
            m->type = CV_CWP_OTHER;
            return 0;
        }
        if (m->type != CV_CWP_BAD) {
            m->stream_name = stream;
            if (m->type == CV_CWP_END) {
                m->frame_error = m->error;
                m->error = (struct cv_cwp_slice){0};
            }
            parse_frame(t, n, bytes, m);
        }
        return 0;
    }
    m->type = CV_CWP_REPLY;
    if (ok.present && ok.len == 4 && memcmp(t + ok.off, "true", 4) == 0) {
        m->ok = true;
        m->error = (struct cv_cwp_slice){0};
        if (stream.present) {
            if (!is_type(t, stream, '{')) {
                m->type = CV_CWP_BAD;
                m->why = "stream not an object";
                return 0;
            }
            parse_stream(t, n, stream, m);
        }
        return 0;
    }
    if (!(ok.present && ok.len == 5 && memcmp(t + ok.off, "false", 5) == 0)) {
        m->type = CV_CWP_BAD;
        m->why = "ok not a boolean";
        return 0;
    }
    m->result = (struct cv_cwp_slice){0};
    if (!is_type(t, m->error, '{')) {
        m->type = CV_CWP_BAD;
        m->why = "failure without an error object";
        return 0;
    }
    parse_error(proto, t, n, status, m);
    return 0;
}

/* ---- Base64 ---- */

static const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Decode table: 0..63, or 0xff for anything else. */
static const uint8_t b64dec[256] = {
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3e, 0xff, 0xff, 0xff, 0x3f,
    0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x3b, 0x3c, 0x3d, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e,
    0x0f, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28,
    0x29, 0x2a, 0x2b, 0x2c, 0x2d, 0x2e, 0x2f, 0x30, 0x31, 0x32, 0x33, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
};

int cv_cwp_b64_decode(const char *b64, size_t len, uint8_t *dst)
{
    const uint8_t *tb = b64dec;
    const unsigned char *s = (const unsigned char *)b64;
    /* Padding is optional, but only as a whole: "=" or "==" to a multiple of 4. */
    size_t pad = 0;
    if (len % 4 == 0 && len >= 4) {
        if (s[len - 1] == '=')
            pad++;
        if (s[len - 2] == '=')
            pad++;
    }
    size_t n = len - pad;
    if (n % 4 == 1)
        return CV_EPROTO;
    size_t w = 0, i = 0;
    for (; i + 4 <= n; i += 4) {
        uint8_t a = tb[s[i]], b = tb[s[i + 1]], c = tb[s[i + 2]], d = tb[s[i + 3]];
        if ((a | b | c | d) & 0xc0)
            return CV_EPROTO;
        uint32_t v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6 | d;
        dst[w++] = (uint8_t)(v >> 16);
        dst[w++] = (uint8_t)(v >> 8);
        dst[w++] = (uint8_t)v;
    }
    size_t rest = n - i;
    if (rest >= 2) {
        uint8_t a = tb[s[i]], b = tb[s[i + 1]];
        uint8_t c = rest == 3 ? tb[s[i + 2]] : 0;
        if ((a | b | c) & 0xc0)
            return CV_EPROTO;
        /* Non-canonical trailing bits are refused, as a strict decoder does. */
        if ((rest == 2 && (b & 0x0f)) || (rest == 3 && (c & 0x03)))
            return CV_EPROTO;
        dst[w++] = (uint8_t)(a << 2 | b >> 4);
        if (rest == 3)
            dst[w++] = (uint8_t)(b << 4 | c >> 2);
    }
    return (int)w;
}

static size_t b64_encode(const uint8_t *p, size_t n, char *dst)
{
    size_t w = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        dst[w++] = b64chars[v >> 18];
        dst[w++] = b64chars[(v >> 12) & 63];
        dst[w++] = b64chars[(v >> 6) & 63];
        dst[w++] = b64chars[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        dst[w++] = b64chars[v >> 18];
        dst[w++] = b64chars[(v >> 12) & 63];
        dst[w++] = '=';
        dst[w++] = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        dst[w++] = b64chars[v >> 18];
        dst[w++] = b64chars[(v >> 12) & 63];
        dst[w++] = b64chars[(v >> 6) & 63];
        dst[w++] = '=';
    }
    return w;
}

/* ---- Hello ---- */

static int str_list(json_t *v, char ***out, size_t *n, bool *has)
{
    *out = NULL;
    *n = 0;
    *has = false;
    if (v == NULL)
        return 0;
    if (!json_is_array(v))
        return CV_EPROTO;
    size_t k = json_array_size(v);
    char **a = calloc(k ? k : 1, sizeof(*a));
    if (a == NULL)
        return CV_ENOMEM;
    for (size_t i = 0; i < k; i++) {
        json_t *s = json_array_get(v, i);
        if (!json_is_string(s) || (a[i] = strdup(json_string_value(s))) == NULL) {
            for (size_t j = 0; j < i; j++)
                free(a[j]);
            free(a);
            return json_is_string(s) ? CV_ENOMEM : CV_EPROTO;
        }
    }
    *out = a;
    *n = k;
    *has = true;
    return 0;
}

static void free_list(char **a, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(a[i]);
    free(a);
}

void cv_cwp_hello_fini(struct cv_cwp_hello *h)
{
    if (h == NULL)
        return;
    free(h->protocol);
    free_list(h->tasks, h->ntasks);
    free_list(h->events, h->nevents);
    free_list(h->parallel, h->nparallel);
    memset(h, 0, sizeof(*h));
}

int cv_cwp_hello_parse(const char *compact, size_t len, struct cv_cwp_hello *h)
{
    json_error_t je;
    int rc = CV_EPROTO;
    memset(h, 0, sizeof(*h));
    h->max_in_flight = 64;
    h->window = 1024 * 1024;
    json_t *o = json_loadb(compact, len, JSON_DECODE_ANY | JSON_DECODE_INT_AS_REAL, &je);
    if (!json_is_object(o) || !json_is_string(json_object_get(o, "type")) ||
        strcmp(json_string_value(json_object_get(o, "type")), "hello") != 0)
        goto out;
    json_t *v = json_object_get(o, "protocol");
    if (v != NULL) {
        if (!json_is_string(v) || strcmp(json_string_value(v), "cwp/1") != 0)
            goto out;
        if ((h->protocol = strdup(json_string_value(v))) == NULL) {
            rc = CV_ENOMEM;
            goto out;
        }
    }
    if ((v = json_object_get(o, "pid")) != NULL && json_is_number(v))
        h->pid = (int64_t)json_number_value(v);
    if ((v = json_object_get(o, "maxInFlight")) != NULL) {
        double d = json_is_number(v) ? json_number_value(v) : -1;
        if (d < 1 || d > 1e6 || d != (double)(uint32_t)d)
            goto out;
        h->max_in_flight = (uint32_t)d;
    }
    if ((v = json_object_get(o, "window")) != NULL) {
        double d = json_is_number(v) ? json_number_value(v) : -1;
        if (d < 1 || d > (double)CV_CWP_MAX_LINE || d != (double)(uint64_t)d)
            goto out;
        h->window = (uint64_t)d;
    }
    if ((v = json_object_get(o, "features")) != NULL) {
        if (!json_is_array(v))
            goto out;
        size_t i;
        json_t *f;
        json_array_foreach(v, i, f)
        {
            const char *s = json_string_value(f);
            if (s == NULL)
                goto out;
            if (strcmp(s, "cancel") == 0)
                h->f_cancel = true;
            else if (strcmp(s, "auth") == 0)
                h->f_auth = true;
            else if (strcmp(s, "streams") == 0)
                h->f_streams = true;
        }
    }
    if ((rc = str_list(json_object_get(o, "tasks"), &h->tasks, &h->ntasks, &h->has_tasks)) ||
        (rc = str_list(json_object_get(o, "events"), &h->events, &h->nevents, &h->has_events)) ||
        (rc = str_list(json_object_get(o, "parallelEvents"), &h->parallel, &h->nparallel,
                       &h->has_parallel)))
        goto out;
    rc = 0;
out:
    json_decref(o);
    if (rc != 0)
        cv_cwp_hello_fini(h);
    return rc;
}

/* ---- Building lines ---- */

struct wr {
    struct cv_buf *b;
    size_t start;
    int err;
};

static void w_raw(struct wr *w, const void *p, size_t n)
{
    if (w->err == 0)
        w->err = cv_buf_append(w->b, p, n);
}

#define W_LIT(w, lit) w_raw(w, lit, sizeof(lit) - 1)

static void w_u64(struct wr *w, uint64_t v)
{
    char tmp[24];
    size_t i = sizeof(tmp);
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    w_raw(w, tmp + i, sizeof(tmp) - i);
}

/* A JSON string of s (NUL-terminated, UTF-8). */
static void w_str(struct wr *w, const char *s)
{
    if (w->err == 0)
        w->err = cv_gwr_json_str(w->b, s, strlen(s));
}

static void w_begin(struct wr *w, struct cv_buf *b)
{
    w->b = b;
    w->start = b->len;
    w->err = 0;
}

static int w_end(struct wr *w)
{
    W_LIT(w, "}\n");
    if (w->err != 0)
        w->b->len = w->start;
    return w->err;
}

static void w_head(struct wr *w, const char *type, uint64_t id)
{
    W_LIT(w, "{\"type\":\"");
    w_raw(w, type, strlen(type));
    W_LIT(w, "\",\"id\":");
    w_u64(w, id);
}

int cv_cwp_put_call(struct cv_buf *b, enum cv_cwp_proto proto, const struct cv_cwp_call *c)
{
    static const char *const modes[] = {"json", "multipart", "octet"};
    static const char undef[] = "{\"__type\":\"Undefined\",\"value\":null}";
    struct wr w;
    w_begin(&w, b);
    w_head(&w, c->event ? "event" : "task", c->id);
    if (c->event)
        W_LIT(&w, ",\"eventId\":");
    else
        W_LIT(&w, ",\"taskId\":");
    w_str(&w, c->name);
    if (proto == CV_CWP_PROTO_CWP1) {
        W_LIT(&w, ",\"rid\":");
        w_str(&w, c->rid ? c->rid : "");
        if (!c->event) {
            W_LIT(&w, ",\"mode\":\"");
            w_raw(&w, modes[c->mode], strlen(modes[c->mode]));
            W_LIT(&w, "\"");
        }
    }
    if (c->input != NULL || c->event || c->mode == CV_CWP_MODE_JSON) {
        const char *in = c->input ? c->input : undef;
        size_t inl = c->input ? c->input_len : sizeof(undef) - 1;
        if (c->event)
            W_LIT(&w, ",\"payload\":");
        else if (c->is_body)
            W_LIT(&w, ",\"body\":");
        else
            W_LIT(&w, ",\"input\":");
        w_raw(&w, in, inl);
    }
    if (proto == CV_CWP_PROTO_CWP1 && c->event) {
        if (c->return_payload)
            W_LIT(&w, ",\"returnPayload\":true");
        else
            W_LIT(&w, ",\"returnPayload\":false");
    }
    if (proto != CV_CWP_PROTO_V1 && c->context != NULL) {
        W_LIT(&w, ",\"context\":");
        w_raw(&w, c->context, c->context_len);
    }
    if (proto == CV_CWP_PROTO_CWP1) {
        W_LIT(&w, ",\"deadlineMs\":");
        w_u64(&w, c->deadline_ms);
    }
    return w_end(&w);
}

int cv_cwp_put_auth(struct cv_buf *b, uint64_t id, const char *rid, const char *context,
                    size_t context_len)
{
    struct wr w;
    w_begin(&w, b);
    w_head(&w, "auth", id);
    W_LIT(&w, ",\"rid\":");
    w_str(&w, rid ? rid : "");
    W_LIT(&w, ",\"context\":");
    w_raw(&w, context, context_len);
    return w_end(&w);
}

int cv_cwp_put_cancel(struct cv_buf *b, uint64_t id, const char *reason)
{
    struct wr w;
    w_begin(&w, b);
    w_head(&w, "cancel", id);
    W_LIT(&w, ",\"reason\":");
    w_str(&w, reason);
    return w_end(&w);
}

int cv_cwp_put_ping(struct cv_buf *b, uint64_t id)
{
    struct wr w;
    w_begin(&w, b);
    w_head(&w, "ping", id);
    return w_end(&w);
}

int cv_cwp_put_shutdown(struct cv_buf *b, enum cv_cwp_proto proto, uint64_t id, uint64_t grace_ms)
{
    struct wr w;
    w_begin(&w, b);
    w_head(&w, "shutdown", id);
    if (proto == CV_CWP_PROTO_CWP1) {
        W_LIT(&w, ",\"graceMs\":");
        w_u64(&w, grace_ms);
    }
    return w_end(&w);
}

static void w_frame(struct wr *w, struct cv_buf *b, const char *type, uint64_t id,
                    const char *stream)
{
    w_begin(w, b);
    w_head(w, type, id);
    W_LIT(w, ",\"stream\":");
    w_str(w, stream);
}

int cv_cwp_put_data(struct cv_buf *b, uint64_t id, const char *stream, const uint8_t *p, size_t n)
{
    struct wr w;
    if (n > CV_CWP_MAX_DATA)
        return CV_ETOOBIG;
    w_frame(&w, b, "data", id, stream);
    W_LIT(&w, ",\"b64\":\"");
    size_t enc = (n + 2) / 3 * 4;
    if (w.err == 0 && (w.err = cv_buf_reserve(b, enc)) == 0)
        cv_buf_commit(b, b64_encode(p, n, (char *)cv_buf_tail(b)));
    W_LIT(&w, "\"");
    return w_end(&w);
}

int cv_cwp_put_end(struct cv_buf *b, uint64_t id, const char *stream, const char *error,
                   size_t error_len)
{
    struct wr w;
    w_frame(&w, b, "end", id, stream);
    if (error != NULL) {
        W_LIT(&w, ",\"error\":");
        w_raw(&w, error, error_len);
    }
    return w_end(&w);
}

int cv_cwp_put_file(struct cv_buf *b, uint64_t id, const char *stream, const char *meta,
                    size_t meta_len)
{
    struct wr w;
    w_frame(&w, b, "file", id, stream);
    W_LIT(&w, ",\"meta\":");
    w_raw(&w, meta, meta_len);
    return w_end(&w);
}

int cv_cwp_put_ack(struct cv_buf *b, uint64_t id, const char *stream, uint64_t bytes)
{
    struct wr w;
    w_frame(&w, b, "ack", id, stream);
    W_LIT(&w, ",\"bytes\":");
    w_u64(&w, bytes);
    return w_end(&w);
}

int cv_cwp_put_error(struct cv_buf *b, const char *text, const struct cv_cwp_msg *m)
{
    struct wr w;
    w_begin(&w, b);
    if (!m->legacy_code) {
        w_raw(&w, text + m->error.off, m->error.len);
        if (w.err != 0)
            b->len = w.start;
        return w.err;
    }
    const char *t = text;
    size_t n = m->error.off + m->error.len, i = m->error.off;
    struct member mb;
    W_LIT(&w, "{");
    while (next_member(t, n, &i, &mb)) {
        if (KEY("code") || KEY("codeName"))
            continue;
        w_raw(&w, t + mb.key.off, mb.val.off + mb.val.len - mb.key.off);
        W_LIT(&w, ",");
    }
    W_LIT(&w, "\"code\":");
    if (m->code_name.present)
        w_raw(&w, t + m->code_name.off, m->code_name.len);
    else
        W_LIT(&w, "\"INTERNAL_ERROR\"");
    W_LIT(&w, "}");
    if (w.err != 0)
        b->len = w.start;
    return w.err;
}
