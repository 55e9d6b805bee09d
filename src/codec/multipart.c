/* memmem and memrchr (glibc, musl and the BSDs all have them). */
#define _GNU_SOURCE
#include "codec/multipart.h"

#include <stdlib.h>
#include <string.h>

#include "codec/text.h"
#include "core/err.h"

/* The body is read as if it began with CRLF, so that one delimiter pattern,
 * CRLF "--" boundary, also finds a first delimiter at the very start. */
#define DELIM_EXTRA 4 /* CR LF '-' '-' */

enum {
    S_PREAMBLE,   /* looking for the first delimiter; bytes are dropped */
    S_DELIM_TAIL, /* after a delimiter: transport padding, then CR or "--" */
    S_DELIM_LF,   /* LF ending the delimiter line */
    S_DELIM_DASH, /* second '-' of a close delimiter */
    S_HEAD,       /* a part's header block, up to its empty line */
    S_DATA,       /* a part's data, up to the next delimiter */
    S_EPILOGUE,   /* after the close delimiter; bytes are dropped */
    S_ERROR
};

struct cv_mp {
    struct cv_mp_cbs cbs;
    void *ud; /* borrowed */
    struct cv_mp_limits lim;
    int state;
    int err; /* sticky, once state is S_ERROR */
    enum cv_mp_limit hit;
    bool in_part;        /* on_part was called, on_part_end not yet */
    bool is_file;        /* the current part has a filename */
    bool padded;         /* transport padding seen after the current delimiter */
    uint64_t part_bytes; /* data bytes of the current part handed on */
    uint32_t parts, files, fields;
    size_t dlen; /* CRLF "--" boundary */
    uint8_t delim[CV_MP_MAX_BOUNDARY + DELIM_EXTRA];
    /* The look-behind: a proper prefix of delim seen at the end of the last
     * input, neither data nor delimiter yet. */
    size_t hold_len;
    uint8_t hold[CV_MP_MAX_BOUNDARY + DELIM_EXTRA];
    size_t head_len;
    uint8_t *head; /* owned (same allocation): lim.max_part_head bytes */
    size_t val_len;
    char *val; /* owned (same allocation): decoded header values */
};

void cv_mp_limits_init(struct cv_mp_limits *l)
{
    l->max_part_head = 8192;
    l->max_name = 100;
    l->max_field = UINT64_C(1) << 20;
    l->max_file = UINT64_C(20) << 20;
    l->max_files = 10;
    l->max_fields = 100;
    l->max_parts = 0;
}

const char *cv_mp_limit_message(enum cv_mp_limit l)
{
    switch (l) {
    case CV_MP_LIMIT_FIELD_SIZE: return "Field limit exceeded";
    case CV_MP_LIMIT_FILE_SIZE: return "File size limit exceeded";
    case CV_MP_LIMIT_FILES: return "Files limit exceeded";
    case CV_MP_LIMIT_FIELDS: return "Fields limit exceeded";
    case CV_MP_LIMIT_PARTS: return "Parts limit exceeded";
    case CV_MP_LIMIT_NONE: break;
    }
    return "";
}

enum cv_mp_limit cv_mp_limit_hit(const struct cv_mp *mp)
{
    return mp->hit;
}

/* ---- Header values: tokens, quoted strings, parameters ---- */

static bool is_ows(unsigned char c)
{
    return c == ' ' || c == '\t';
}

/* Control bytes other than HTAB (RFC 9110 qdtext and field-vchar exclude them). */
static bool is_ctl(unsigned char c)
{
    return (c < 0x20 && c != '\t') || c == 0x7f;
}

/* RFC 9110 tchar. */
static bool is_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return true;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* Bytes of an unquoted parameter value. Looser than tchar on purpose:
 * clients may write name=file:F1 or boundary=a=b unquoted (busboy refuses
 * them), and they are unambiguous; only what would break the parameter
 * syntax is refused. */
static bool is_token_value(unsigned char c)
{
    return !is_ctl(c) && c != ' ' && c != ';' && c != '"';
}

/* RFC 2046 bchars (space is allowed, but not last). */
static bool is_bchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return true;
    return c != 0 && strchr("'()+_,-./:=? ", c) != NULL;
}

static bool ieq(const uint8_t *p, size_t n, const char *lit)
{
    size_t l = strlen(lit);
    if (n != l)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char a = p[i], b = (unsigned char)lit[i];
        if (a >= 'A' && a <= 'Z')
            a = (unsigned char)(a + 32);
        if (a != b)
            return false;
    }
    return true;
}

/* A header value being walked: "type; a=b; c="d"". */
struct cursor {
    const uint8_t *p;
    size_t n, i;
};

static void skip_ows(struct cursor *c)
{
    while (c->i < c->n && is_ows(c->p[c->i]))
        c->i++;
}

/* Reads the leading "type" (or "type/subtype") up to OWS, ';' or the end. */
static void read_type(struct cursor *c, const uint8_t **t, size_t *tl)
{
    size_t s = c->i;
    while (c->i < c->n && !is_ows(c->p[c->i]) && c->p[c->i] != ';')
        c->i++;
    *t = c->p + s;
    *tl = c->i - s;
}

struct param {
    const uint8_t *name, *val; /* val: raw, with its quotes if quoted */
    size_t nlen, vlen;
    bool quoted;
};

/* Reads the next "; name=value" (OWS allowed around ';' and '='; empty
 * parameters and a trailing ';' are skipped, as real clients send them).
 * Returns 1 with *pa filled in, 0 at the end, CV_EPROTO on bad syntax. */
static int next_param(struct cursor *c, struct param *pa)
{
    for (;;) {
        skip_ows(c);
        if (c->i == c->n)
            return 0;
        if (c->p[c->i] != ';')
            return CV_EPROTO;
        c->i++;
        skip_ows(c);
        if (c->i == c->n)
            return 0;
        if (c->p[c->i] != ';')
            break;
    }
    size_t s = c->i;
    while (c->i < c->n && is_tchar(c->p[c->i]))
        c->i++;
    if (c->i == s)
        return CV_EPROTO;
    pa->name = c->p + s;
    pa->nlen = c->i - s;
    skip_ows(c);
    if (c->i == c->n || c->p[c->i] != '=')
        return CV_EPROTO;
    c->i++;
    skip_ows(c);
    s = c->i;
    if (c->i < c->n && c->p[c->i] == '"') {
        for (c->i++;; c->i++) {
            if (c->i == c->n)
                return CV_EPROTO; /* unterminated */
            unsigned char ch = c->p[c->i];
            if (ch == '"')
                break;
            if (ch == '\\' && ++c->i == c->n)
                return CV_EPROTO;
            if (is_ctl(c->p[c->i]))
                return CV_EPROTO;
        }
        c->i++;
        pa->quoted = true;
    } else {
        while (c->i < c->n && is_token_value(c->p[c->i]))
            c->i++;
        if (c->i == s)
            return CV_EPROTO;
        pa->quoted = false;
    }
    pa->val = c->p + s;
    pa->vlen = c->i - s;
    return 1;
}

/* Decodes a parameter value into dst, which has room for at least
 * pa->vlen bytes, and returns the length. In a quoted string only \" and
 * \\ are unescaped, as busboy does (and the spec says): other backslashes
 * stay, so that a Windows path sent unescaped (WHATWG FormData escapes
 * only '"', CR and LF) keeps its separators. */
static size_t unquote(const struct param *pa, uint8_t *dst)
{
    if (!pa->quoted) {
        memcpy(dst, pa->val, pa->vlen);
        return pa->vlen;
    }
    size_t o = 0;
    for (size_t i = 1; i + 1 < pa->vlen; i++) {
        if (pa->val[i] == '\\' && (pa->val[i + 1] == '"' || pa->val[i + 1] == '\\'))
            i++;
        dst[o++] = pa->val[i];
    }
    return o;
}

int cv_mp_boundary(const char *content_type, size_t len, char *out)
{
    struct cursor c = {(const uint8_t *)content_type, len, 0};
    const uint8_t *t;
    size_t tl;
    bool found = false;

    skip_ows(&c);
    read_type(&c, &t, &tl);
    if (!ieq(t, tl, "multipart/form-data"))
        return CV_EPROTO;
    for (;;) {
        struct param pa;
        int rc = next_param(&c, &pa);
        if (rc < 0)
            return rc;
        if (rc == 0)
            break;
        /* The first boundary wins; later ones are still syntax-checked. */
        if (found || !ieq(pa.name, pa.nlen, "boundary"))
            continue;
        uint8_t b[CV_MP_MAX_BOUNDARY * 2 + 2];
        if (pa.vlen > sizeof(b))
            return CV_EPROTO;
        size_t bl = unquote(&pa, b);
        if (bl == 0 || bl > CV_MP_MAX_BOUNDARY || b[bl - 1] == ' ')
            return CV_EPROTO;
        for (size_t i = 0; i < bl; i++)
            if (!is_bchar(b[i]))
                return CV_EPROTO;
        memcpy(out, b, bl);
        out[bl] = '\0';
        found = true;
    }
    return found ? 0 : CV_EPROTO;
}

/* ---- Parser ---- */

struct cv_mp *cv_mp_new(const char *boundary, const struct cv_mp_limits *lim,
                        const struct cv_mp_cbs *cbs, void *ud)
{
    struct cv_mp_limits defaults;
    static const struct cv_mp_cbs no_cbs;
    if (lim == NULL) {
        cv_mp_limits_init(&defaults);
        lim = &defaults;
    }
    if (cbs == NULL)
        cbs = &no_cbs;
    size_t bl = strlen(boundary);
    size_t cap = lim->max_part_head;
    /* Header bytes, then twice that for decoded values: each value is at
     * most as long as its raw text, NUL included (see put_param), and the
     * mime type at most as long as the Content-Type value. */
    if (bl == 0 || bl > CV_MP_MAX_BOUNDARY || cap > (SIZE_MAX - sizeof(struct cv_mp)) / 3 - 16)
        return NULL;
    struct cv_mp *mp = malloc(sizeof(*mp) + 3 * cap + 16);
    if (mp == NULL)
        return NULL;
    memset(mp, 0, sizeof(*mp));
    mp->cbs = *cbs;
    mp->ud = ud;
    mp->lim = *lim;
    mp->state = S_PREAMBLE;
    mp->head = (uint8_t *)(mp + 1);
    mp->val = (char *)mp->head + cap;
    memcpy(mp->delim, "\r\n--", DELIM_EXTRA);
    memcpy(mp->delim + DELIM_EXTRA, boundary, bl);
    mp->dlen = bl + DELIM_EXTRA;
    /* The virtual CRLF before the body (see DELIM_EXTRA). */
    memcpy(mp->hold, "\r\n", 2);
    mp->hold_len = 2;
    return mp;
}

void cv_mp_free(struct cv_mp *mp)
{
    free(mp);
}

static int fail(struct cv_mp *mp, int err)
{
    mp->state = S_ERROR;
    mp->err = err;
    return err;
}

/* Hands part data on (drops preamble bytes), enforcing the size limit: the
 * bytes up to the limit are delivered, the first one past it is not. */
static int emit(struct cv_mp *mp, const uint8_t *p, size_t n)
{
    if (n == 0 || mp->state != S_DATA)
        return 0;
    uint64_t max = mp->is_file ? mp->lim.max_file : mp->lim.max_field;
    int rc = 0;
    if (mp->part_bytes > max || n > max - mp->part_bytes) {
        n = mp->part_bytes > max ? 0 : (size_t)(max - mp->part_bytes);
        mp->hit = mp->is_file ? CV_MP_LIMIT_FILE_SIZE : CV_MP_LIMIT_FIELD_SIZE;
        rc = CV_ETOOBIG;
    }
    mp->part_bytes += n;
    if (n > 0 && mp->cbs.on_data != NULL && mp->cbs.on_data(mp->ud, p, n) != 0) {
        mp->hit = CV_MP_LIMIT_NONE;
        return CV_ECLOSED;
    }
    return rc;
}

static void found_delim(struct cv_mp *mp)
{
    mp->state = S_DELIM_TAIL;
    mp->padded = false;
}

/* Preamble or part data: finds the next delimiter, handing on the data
 * before it as one slice. A tail that may begin a delimiter is kept in the
 * look-behind. Sets *used to the bytes consumed (0 is progress too: it
 * means the look-behind was released). */
static int scan(struct cv_mp *mp, const uint8_t *p, size_t n, size_t *used)
{
    size_t d = mp->dlen;
    int rc;

    if (mp->hold_len > 0) {
        size_t need = d - mp->hold_len, m = n < need ? n : need;
        if (memcmp(p, mp->delim + mp->hold_len, m) == 0) {
            *used = m;
            if (m == need) {
                mp->hold_len = 0;
                found_delim(mp);
            } else {
                memcpy(mp->hold + mp->hold_len, p, m);
                mp->hold_len += m;
            }
            return 0;
        }
        /* Not a delimiter, and none starts later inside the look-behind:
         * CR occurs in the pattern only at its start (bchars exclude it). */
        size_t hl = mp->hold_len;
        mp->hold_len = 0;
        *used = 0;
        return emit(mp, mp->hold, hl);
    }
    const uint8_t *hit = memmem(p, n, mp->delim, d);
    if (hit != NULL) {
        size_t k = (size_t)(hit - p);
        *used = k + d;
        if ((rc = emit(mp, p, k)) != 0)
            return rc;
        found_delim(mp);
        return 0;
    }
    /* Only the last CR of the final d-1 bytes can begin a delimiter: a
     * prefix of the pattern holds no CR after its first byte. */
    size_t from = n >= d ? n - d + 1 : 0, keep = 0;
    const uint8_t *cr = memrchr(p + from, '\r', n - from);
    if (cr != NULL && memcmp(cr, mp->delim, (size_t)(p + n - cr)) == 0)
        keep = (size_t)(p + n - cr);
    *used = n;
    if ((rc = emit(mp, p, n - keep)) != 0)
        return rc;
    memcpy(mp->hold, p + n - keep, keep);
    mp->hold_len = keep;
    return 0;
}

static int end_part(struct cv_mp *mp)
{
    if (!mp->in_part)
        return 0;
    mp->in_part = false;
    if (mp->cbs.on_part_end != NULL && mp->cbs.on_part_end(mp->ud) != 0)
        return CV_ECLOSED;
    return 0;
}

static int begin_head(struct cv_mp *mp)
{
    /* The (limit+1)-th part trips it, as soon as it begins. */
    if (mp->lim.max_parts != 0 && mp->parts >= mp->lim.max_parts) {
        mp->hit = CV_MP_LIMIT_PARTS;
        return CV_ETOOBIG;
    }
    mp->parts++;
    mp->head_len = 0;
    mp->state = S_HEAD;
    return 0;
}

/* One byte of a delimiter line's tail: RFC 2046 allows transport padding
 * (LWSP) before its CRLF, none before the "--" of a close delimiter. */
static int delim_tail(struct cv_mp *mp, unsigned char c)
{
    int rc;
    switch (mp->state) {
    case S_DELIM_TAIL:
        if (is_ows(c))
            mp->padded = true;
        else if (c == '\r')
            mp->state = S_DELIM_LF;
        else if (c == '-' && !mp->padded)
            mp->state = S_DELIM_DASH;
        else
            return CV_EPROTO;
        return 0;
    case S_DELIM_LF:
        if (c != '\n')
            return CV_EPROTO;
        if ((rc = end_part(mp)) != 0)
            return rc;
        return begin_head(mp);
    default: /* S_DELIM_DASH */
        if (c != '-')
            return CV_EPROTO;
        if ((rc = end_part(mp)) != 0)
            return rc;
        mp->state = S_EPILOGUE;
        return 0;
    }
}

/* Header values decoded into mp->val; offsets, or -1 when absent. */
struct head_vals {
    long name, filename, filename_ext, ctype;
};

/* Appends a decoded parameter value to mp->val, NUL-terminated; returns
 * its offset. Fits by construction: a value plus its NUL is never longer
 * than the "k=v" text it came from, and those texts don't overlap. */
static long put_param(struct cv_mp *mp, const struct param *pa)
{
    long off = (long)mp->val_len;
    size_t l = unquote(pa, (uint8_t *)mp->val + mp->val_len);
    mp->val[mp->val_len + l] = '\0';
    mp->val_len += l + 1;
    return off;
}

/* Decodes an RFC 8187 ext-value (charset'lang'pct-encoded) in place.
 * UTF-8 bytes are kept, ISO-8859-1 is converted to UTF-8; other charsets
 * keep their percent-decoded bytes as they are. Raw non-ASCII bytes are
 * refused (RFC 8187 value-chars are ASCII), which also keeps the output
 * behind the input: only a %XX, 3 bytes, can give 2. %00 is refused (the
 * value becomes a C string). */
static int decode_ext(char *s)
{
    char *q1 = strchr(s, '\'');
    char *q2 = q1 != NULL ? strchr(q1 + 1, '\'') : NULL;
    if (q2 == NULL)
        return CV_EPROTO;
    bool latin1 = ieq((const uint8_t *)s, (size_t)(q1 - s), "iso-8859-1");
    const char *r = q2 + 1;
    char *w = s;
    while (*r != '\0') {
        unsigned char c = (unsigned char)*r++;
        if (c >= 0x80)
            return CV_EPROTO;
        if (c == '%') {
            int h = cv_hexval((unsigned char)r[0]), l = h < 0 ? -1 : cv_hexval((unsigned char)r[1]);
            if (l < 0 || (h | l) == 0)
                return CV_EPROTO;
            c = (unsigned char)(h << 4 | l);
            r += 2;
        }
        if (latin1 && c >= 0x80) {
            *w++ = (char)(0xc0 | c >> 6);
            *w++ = (char)(0x80 | (c & 0x3f));
        } else {
            *w++ = (char)c;
        }
    }
    *w = '\0';
    return 0;
}

static int parse_disposition(struct cv_mp *mp, const uint8_t *v, size_t n, struct head_vals *hv)
{
    struct cursor c = {v, n, 0};
    const uint8_t *t;
    size_t tl;
    int rc;

    read_type(&c, &t, &tl);
    if (!ieq(t, tl, "form-data"))
        return CV_EPROTO;
    struct param pa;
    /* Repeated parameters: the first wins, as in busboy. */
    while ((rc = next_param(&c, &pa)) > 0) {
        long *slot = NULL;
        if (ieq(pa.name, pa.nlen, "name"))
            slot = &hv->name;
        else if (ieq(pa.name, pa.nlen, "filename"))
            slot = &hv->filename;
        else if (ieq(pa.name, pa.nlen, "filename*"))
            slot = &hv->filename_ext;
        if (slot != NULL && *slot < 0)
            *slot = put_param(mp, &pa);
    }
    if (rc < 0)
        return rc;
    if (hv->filename_ext >= 0 && (rc = decode_ext(mp->val + hv->filename_ext)) < 0)
        return rc;
    return hv->name >= 0 ? 0 : CV_EPROTO;
}

/* One header line (no CRLF, no CR/LF/NUL inside). */
static int parse_line(struct cv_mp *mp, const uint8_t *s, size_t n, struct head_vals *hv,
                      bool *have_cd)
{
    const uint8_t *colon = memchr(s, ':', n);
    if (colon == NULL || colon == s)
        return CV_EPROTO;
    size_t nl = (size_t)(colon - s);
    for (size_t i = 0; i < nl; i++)
        if (!is_tchar(s[i]))
            return CV_EPROTO;
    const uint8_t *v = colon + 1, *e = s + n;
    while (v < e && is_ows(*v))
        v++;
    while (e > v && is_ows(e[-1]))
        e--;
    /* The first of repeated headers is used, as in busboy. */
    if (!*have_cd && ieq(s, nl, "content-disposition")) {
        *have_cd = true;
        return parse_disposition(mp, v, (size_t)(e - v), hv);
    }
    if (hv->ctype < 0 && ieq(s, nl, "content-type")) {
        for (const uint8_t *x = v; x < e; x++)
            if (is_ctl(*x))
                return CV_EPROTO;
        hv->ctype = (long)mp->val_len;
        memcpy(mp->val + mp->val_len, v, (size_t)(e - v));
        mp->val_len += (size_t)(e - v);
        mp->val[mp->val_len++] = '\0';
    }
    return 0;
}

/* Busboy's parseContentType result as "type/subtype" in lower case, put
 * in mp->val; "text/plain" if ct is NULL or malformed. */
static const char *mime_type(struct cv_mp *mp, const char *ct)
{
    if (ct == NULL)
        return "text/plain";
    struct cursor c = {(const uint8_t *)ct, strlen(ct), 0};
    const uint8_t *t;
    size_t tl, slash = 0;
    struct param pa;
    int rc;

    read_type(&c, &t, &tl);
    for (size_t i = 0; i < tl; i++) {
        if (t[i] == '/' && slash == 0 && i > 0)
            slash = i;
        else if (!is_tchar(t[i]))
            return "text/plain";
    }
    if (slash == 0 || slash + 1 == tl)
        return "text/plain";
    while ((rc = next_param(&c, &pa)) > 0)
        ;
    if (rc < 0)
        return "text/plain";
    char *out = mp->val + mp->val_len;
    for (size_t i = 0; i < tl; i++)
        out[i] = (char)(t[i] >= 'A' && t[i] <= 'Z' ? t[i] + 32 : t[i]);
    out[tl] = '\0';
    mp->val_len += tl + 1;
    return out;
}

const char *cv_mp_basename(const char *filename)
{
    const char *b = filename;
    for (const char *p = filename; *p != '\0'; p++)
        if (*p == '/' || *p == '\\')
            b = p + 1;
    if (strcmp(b, ".") == 0 || strcmp(b, "..") == 0)
        return "";
    return b;
}

/* Cuts a name to max_name bytes, on a UTF-8 character boundary. */
static void truncate_name(char *s, size_t max)
{
    size_t l = strlen(s);
    if (l <= max)
        return;
    while (max > 0 && ((unsigned char)s[max] & 0xc0) == 0x80)
        max--;
    s[max] = '\0';
}

/* Parses mp->head[0..n) (header lines, each ending in CRLF) and starts the
 * part. */
static int parse_head(struct cv_mp *mp, size_t n)
{
    uint8_t *h = mp->head;
    struct head_vals hv = {-1, -1, -1, -1};
    bool have_cd = false;
    int rc;

    /* Unfold obsolete line folding (CRLF then SP/HT continues a line). */
    for (size_t i = 0; i + 2 < n; i++)
        if (h[i] == '\r' && h[i + 1] == '\n' && is_ows(h[i + 2]))
            h[i] = h[i + 1] = ' ';
    if (is_ows(h[0]))
        return CV_EPROTO;
    mp->val_len = 0;
    for (size_t s = 0; s < n;) {
        const uint8_t *crlf = memmem(h + s, n - s, "\r\n", 2);
        size_t e = (size_t)(crlf - h); /* the block ends in CRLF */
        for (size_t i = s; i < e; i++)
            if (h[i] == '\r' || h[i] == '\n' || h[i] == '\0')
                return CV_EPROTO;
        if ((rc = parse_line(mp, h + s, e - s, &hv, &have_cd)) < 0)
            return rc;
        s = e + 2;
    }
    if (!have_cd)
        return CV_EPROTO;

    struct cv_mp_part part;
    long fn = hv.filename_ext >= 0 ? hv.filename_ext : hv.filename;
    truncate_name(mp->val + hv.name, mp->lim.max_name);
    part.name = mp->val + hv.name;
    part.filename = fn >= 0 ? mp->val + fn : NULL;
    part.content_type = hv.ctype >= 0 ? mp->val + hv.ctype : NULL;
    part.is_file = fn >= 0;
    part.mime_type = mime_type(mp, part.content_type);

    /* The (limit+1)-th file or field trips its limit, as in busboy. */
    if (part.is_file && mp->files >= mp->lim.max_files) {
        mp->hit = CV_MP_LIMIT_FILES;
        return CV_ETOOBIG;
    }
    if (!part.is_file && mp->fields >= mp->lim.max_fields) {
        mp->hit = CV_MP_LIMIT_FIELDS;
        return CV_ETOOBIG;
    }
    if (part.is_file)
        mp->files++;
    else
        mp->fields++;
    mp->is_file = part.is_file;
    mp->part_bytes = 0;
    mp->in_part = true;
    mp->state = S_DATA;
    if (mp->cbs.on_part != NULL && mp->cbs.on_part(mp->ud, &part) != 0)
        return CV_ECLOSED;
    return 0;
}

/* Collects a header block into mp->head until its empty line. */
static int head(struct cv_mp *mp, const uint8_t *p, size_t n, size_t *used)
{
    size_t old = mp->head_len, cap = mp->lim.max_part_head;
    size_t m = n < cap - old ? n : cap - old;

    memcpy(mp->head + old, p, m);
    mp->head_len += m;
    /* An empty block has no Content-Disposition. */
    if (mp->head_len >= 2 && mp->head[0] == '\r' && mp->head[1] == '\n')
        return CV_EPROTO;
    size_t from = old >= 3 ? old - 3 : 0;
    const uint8_t *e = memmem(mp->head + from, mp->head_len - from, "\r\n\r\n", 4);
    if (e == NULL) {
        *used = m;
        /* Full without its end: the block is over max_part_head. */
        return mp->head_len == cap ? CV_EPROTO : 0;
    }
    size_t k = (size_t)(e - mp->head);
    *used = k + 4 - old;
    return parse_head(mp, k + 2);
}

int cv_mp_feed(struct cv_mp *mp, const uint8_t *p, size_t n)
{
    size_t off = 0;

    if (mp->state == S_ERROR)
        return mp->err;
    while (off < n) {
        size_t used = 1;
        int rc;
        switch (mp->state) {
        case S_PREAMBLE:
        case S_DATA: rc = scan(mp, p + off, n - off, &used); break;
        case S_HEAD: rc = head(mp, p + off, n - off, &used); break;
        case S_EPILOGUE: return 0;
        default: rc = delim_tail(mp, p[off]); break;
        }
        if (rc != 0)
            return fail(mp, rc);
        off += used;
    }
    return 0;
}

int cv_mp_finish(struct cv_mp *mp)
{
    if (mp->state == S_ERROR)
        return mp->err;
    if (mp->state != S_EPILOGUE)
        return fail(mp, CV_EPROTO);
    return 0;
}
