#include "codec/gwroute.h"

#include <string.h>
#include <strings.h>

#include "codec/http.h"
#include "codec/text.h"
#include "core/err.h"

int cv_gwr_base_norm(const char *in, char *out, size_t cap)
{
    size_t n = strlen(in);
    if (cap < n + 2)
        return CV_EINVAL;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)in[i];
        if (ch <= 0x20 || ch >= 0x7f || ch == '?' || ch == '#' || ch == '%' || ch == '\\')
            return CV_EINVAL;
    }
    size_t o = 0;
    if (n == 0 || in[0] != '/')
        out[o++] = '/';
    memcpy(out + o, in, n);
    o += n;
    if (o > 0 && out[o - 1] == '/')
        o--;
    out[o] = '\0';
    return 0;
}

/* WHATWG's single-dot and double-dot path segments. */
static bool is_dot(const char *s, size_t n)
{
    return (n == 1 && s[0] == '.') || (n == 3 && strncasecmp(s, "%2e", 3) == 0);
}

static bool is_dotdot(const char *s, size_t n)
{
    if (n == 2)
        return s[0] == '.' && s[1] == '.';
    if (n == 4)
        return (s[0] == '.' && strncasecmp(s + 1, "%2e", 3) == 0) ||
               (strncasecmp(s, "%2e", 3) == 0 && s[3] == '.');
    return n == 6 && strncasecmp(s, "%2e%2e", 6) == 0;
}

/* The path of an origin-form or absolute-form target, without query or
 * fragment. */
static void target_path(const char *t, size_t len, const char **p, size_t *n)
{
    size_t start = 0;
    if (len > 0 && t[0] != '/' && t[0] != '\\') {
        /* absolute-form: scheme "://" authority path */
        const char *sep = memchr(t, ':', len);
        start = len;
        if (sep != NULL && (size_t)(sep - t) + 3 <= len && sep[1] == '/' && sep[2] == '/') {
            size_t i = (size_t)(sep - t) + 3;
            while (i < len && t[i] != '/' && t[i] != '\\' && t[i] != '?' && t[i] != '#')
                i++;
            start = i;
        }
    }
    size_t end = start;
    while (end < len && t[end] != '?' && t[end] != '#')
        end++;
    *p = t + start;
    *n = end - start;
}

/* Resolves dot segments of path (backslashes read as slashes) into out as
 * "/seg/seg..." (at most n + 1 bytes). Empty segments are kept and a
 * final "." or ".." leaves a trailing slash, as WHATWG URL parsing does. */
static size_t resolve(const char *path, size_t n, char *out)
{
    size_t o = 0, i = 0;
    if (n > 0 && (path[0] == '/' || path[0] == '\\'))
        i = 1;
    for (;;) {
        size_t s = i;
        while (i < n && path[i] != '/' && path[i] != '\\')
            i++;
        const char *seg = path + s;
        size_t sl = i - s;
        bool last = i >= n;
        if (is_dotdot(seg, sl)) {
            if (o > 0) {
                while (out[o - 1] != '/')
                    o--;
                o--;
            }
            if (last)
                out[o++] = '/';
        } else if (is_dot(seg, sl)) {
            if (last)
                out[o++] = '/';
        } else {
            out[o++] = '/';
            memcpy(out + o, seg, sl);
            o += sl;
        }
        if (last)
            break;
        i++;
    }
    if (o == 0)
        out[o++] = '/';
    return o;
}

/* Percent-decodes s[0..n) in place (out <= s). Returns the new length or
 * -1 on a bad escape or a NUL. */
static long pct_decode(char *s, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '%') {
            if (i + 2 >= n)
                return -1;
            int h = cv_hexval((unsigned char)s[i + 1]), l = cv_hexval((unsigned char)s[i + 2]);
            if (h < 0 || l < 0)
                return -1;
            c = (char)(h * 16 + l);
            i += 2;
        }
        if (c == '\0')
            return -1;
        s[o++] = c;
    }
    return (long)o;
}

int cv_gwr_route(const char *target, size_t len, const char *base, char *buf, size_t cap,
                 const char **id, size_t *idlen)
{
    if (cap < 2 * len + 4)
        return CV_EINVAL;
    const char *path;
    size_t plen;
    target_path(target, len, &path, &plen);
    size_t rl = resolve(path, plen, buf);
    buf[rl] = '\0';
    size_t bl = strlen(base);
    if (rl < bl || memcmp(buf, base, bl) != 0 || (rl > bl && buf[bl] != '/'))
        return CV_GWR_OUTSIDE;
    /* Segments after base, empties dropped. */
    const char *rest = buf + bl;
    const char *end = buf + rl;
    while (rest < end && *rest == '/')
        rest++;
    const char *s1 = rest;
    while (rest < end && *rest != '/')
        rest++;
    size_t l1 = (size_t)(rest - s1);
    if (l1 == 9 && memcmp(s1, "discovery", 9) == 0)
        return CV_GWR_DISCOVERY;
    int kind;
    if (l1 == 4 && memcmp(s1, "task", 4) == 0)
        kind = CV_GWR_TASK;
    else if (l1 == 5 && memcmp(s1, "event", 5) == 0)
        kind = CV_GWR_EVENT;
    else
        return CV_GWR_UNKNOWN;
    /* Join the remaining non-empty segments with '/' after the path. */
    char *out = buf + rl + 1;
    size_t o = 0;
    while (rest < end) {
        while (rest < end && *rest == '/')
            rest++;
        const char *s = rest;
        while (rest < end && *rest != '/')
            rest++;
        if (rest == s)
            continue;
        if (o > 0)
            out[o++] = '/';
        memcpy(out + o, s, (size_t)(rest - s));
        o += (size_t)(rest - s);
    }
    long dl = pct_decode(out, o);
    if (dl <= 0 || !cv_gwr_utf8_ok((const uint8_t *)out, (size_t)dl))
        return CV_GWR_UNKNOWN;
    out[dl] = '\0';
    *id = out;
    *idlen = (size_t)dl;
    return kind;
}

static bool js_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

bool cv_gwr_rid_ok(const char *v, size_t len, size_t *off, size_t *n)
{
    size_t a = 0, b = len;
    while (a < b && js_space((unsigned char)v[a]))
        a++;
    while (b > a && js_space((unsigned char)v[b - 1]))
        b--;
    if (b == a || b - a > 128)
        return false;
    for (size_t i = a; i < b; i++) {
        unsigned char c = (unsigned char)v[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '_' || c == ':' || c == '-';
        if (!ok)
            return false;
    }
    *off = a;
    *n = b - a;
    return true;
}

/* Whether needle (lower case) occurs in s[0..n), ignoring ASCII case. */
static bool has_ci(const char *s, size_t n, const char *needle)
{
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= n; i++)
        if ((s[i] | 0x20) == needle[0] && cv_http_ieq(s + i, needle, k))
            return true;
    return false;
}

enum cv_gwr_mode cv_gwr_mode(const char *ct, size_t len)
{
    if (ct == NULL)
        return CV_GWR_MODE_JSON;
    if (has_ci(ct, len, "multipart/form-data"))
        return CV_GWR_MODE_MULTIPART;
    static const char oct[] = "application/octet-stream";
    size_t k = sizeof oct - 1;
    if (len >= k && cv_http_ieq(ct, oct, k) && (len == k || ct[k] == ';'))
        return CV_GWR_MODE_OCTET;
    return CV_GWR_MODE_JSON;
}

bool cv_gwr_utf8_ok(const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint64_t x;
        if (n - i >= 8 && (memcpy(&x, p + i, 8), !cv_nonascii8(x))) {
            i += 8; /* eight ASCII bytes */
            continue;
        }
        uint8_t c = p[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t k;
        uint32_t cp;
        if (c >= 0xc2 && c <= 0xdf) {
            k = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            k = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            k = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (i + k >= n)
            return false;
        for (size_t j = 1; j <= k; j++) {
            if ((p[i + j] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (p[i + j] & 0x3f);
        }
        if ((k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) || cp > 0x10ffff ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += k + 1;
    }
    return true;
}

int cv_gwr_json_str(struct cv_buf *out, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    /* Worst case every byte becomes \u00XX. */
    int rc = cv_buf_reserve(out, n * 6 + 2);
    if (rc < 0)
        return rc;
    char *o = (char *)cv_buf_tail(out);
    size_t w = 0, i = 0;
    o[w++] = '"';
    for (; i < n; i++) {
        /* Eight bytes at a time while none needs an escape (SWAR: some
         * byte < 0x20, '"' or '\\'): header values of a worker call's
         * context are mostly plain. */
        while (n - i >= 8) {
            uint64_t x;
            memcpy(&x, s + i, 8);
            if (cv_json_special8(x) != 0)
                break;
            memcpy(o + w, s + i, 8);
            w += 8;
            i += 8;
        }
        if (i >= n)
            break;
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') {
            o[w++] = (char)c;
            continue;
        }
        o[w++] = '\\';
        switch (c) {
        case '"': o[w++] = '"'; break;
        case '\\': o[w++] = '\\'; break;
        case '\b': o[w++] = 'b'; break;
        case '\f': o[w++] = 'f'; break;
        case '\n': o[w++] = 'n'; break;
        case '\r': o[w++] = 'r'; break;
        case '\t': o[w++] = 't'; break;
        default:
            o[w++] = 'u';
            o[w++] = '0';
            o[w++] = '0';
            o[w++] = hex[c >> 4];
            o[w++] = hex[c & 15];
            break;
        }
    }
    o[w++] = '"';
    cv_buf_commit(out, w);
    return 0;
}
