/* Fuzzes the multipart parser. Input: one control byte (feed split size and
 * limits), a Content-Type value up to '\n' (through cv_mp_boundary), then
 * the body. The body fed whole, one byte at a time and in pieces of the
 * chosen size must give the same transcript of callbacks and the same
 * result; slices stay inside the fed piece or the small look-behind; names
 * respect max_name; errors are sticky. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec/multipart.h"
#include "core/err.h"

struct rec {
    uint8_t *buf;
    size_t len, cap;
    const uint8_t *feed; /* the piece being fed */
    size_t feed_len, max_hold, max_name;
    bool in_data;   /* the last record is a data run */
    size_t data_at; /* offset of that run's length */
};

static void put(struct rec *r, const void *p, size_t n)
{
    if (r->len + n > r->cap) {
        r->cap = (r->len + n) * 2 + 64;
        r->buf = realloc(r->buf, r->cap);
        if (r->buf == NULL)
            abort();
    }
    memcpy(r->buf + r->len, p, n);
    r->len += n;
}

/* Records a tag and a length-prefixed string, so transcripts compare
 * unambiguously. */
static void put_str(struct rec *r, char tag, const char *s)
{
    r->in_data = false;
    size_t n = s != NULL ? strlen(s) : SIZE_MAX;
    put(r, &tag, 1);
    put(r, &n, sizeof n);
    if (s != NULL)
        put(r, s, n);
}

static int on_part(void *ud, const struct cv_mp_part *p)
{
    struct rec *r = ud;
    if (p->name == NULL || strlen(p->name) > r->max_name || p->is_file != (p->filename != NULL) ||
        p->mime_type == NULL)
        abort();
    put_str(r, 'P', p->name);
    put_str(r, 'F', p->filename);
    put_str(r, 'T', p->content_type);
    put_str(r, 'M', p->mime_type);
    if (p->filename != NULL)
        put_str(r, 'B', cv_mp_basename(p->filename));
    return 0;
}

static int on_data(void *ud, const uint8_t *p, size_t n)
{
    struct rec *r = ud;
    if (n == 0)
        abort();
    if (!(p >= r->feed && p + n <= r->feed + r->feed_len) && n > r->max_hold)
        abort();
    /* Consecutive runs are merged (a split may cut data anywhere) into one
     * record: 'D', its length, the bytes. */
    if (!r->in_data) {
        size_t zero = 0;
        put(r, "D", 1);
        r->data_at = r->len;
        put(r, &zero, sizeof zero);
        r->in_data = true;
    }
    put(r, p, n);
    size_t l;
    memcpy(&l, r->buf + r->data_at, sizeof l);
    l += n;
    memcpy(r->buf + r->data_at, &l, sizeof l);
    return 0;
}

static int on_part_end(void *ud)
{
    struct rec *r = ud;
    r->in_data = false;
    put(r, "E", 1);
    return 0;
}

static const struct cv_mp_cbs cbs = {on_part, on_data, on_part_end};

static int run(const char *boundary, const struct cv_mp_limits *lim, const uint8_t *p, size_t n,
               size_t step, struct rec *r)
{
    struct cv_mp *mp = cv_mp_new(boundary, lim, &cbs, r);
    if (mp == NULL)
        abort();
    r->max_hold = strlen(boundary) + 3;
    r->max_name = lim->max_name;
    int rc = 0;
    for (size_t off = 0; off < n && rc == 0;) {
        size_t k = n - off < step ? n - off : step;
        r->feed = p + off;
        r->feed_len = k;
        rc = cv_mp_feed(mp, p + off, k);
        off += k;
    }
    int fin = cv_mp_finish(mp);
    if (rc != 0 && (fin != rc || cv_mp_feed(mp, p, n) != rc))
        abort(); /* sticky */
    if (rc == 0)
        rc = fin;
    if ((rc == CV_ETOOBIG) != (cv_mp_limit_hit(mp) != CV_MP_LIMIT_NONE))
        abort();
    if (rc != 0 && rc != CV_EPROTO && rc != CV_ETOOBIG)
        abort();
    r->in_data = false;
    put(r, &rc, sizeof rc);
    enum cv_mp_limit hit = cv_mp_limit_hit(mp);
    put(r, &hit, sizeof hit);
    cv_mp_free(mp);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t ctl = data[0];
    const uint8_t *nl = memchr(data + 1, '\n', size - 1);
    if (nl == NULL)
        return 0;
    char boundary[CV_MP_MAX_BOUNDARY + 1];
    if (cv_mp_boundary((const char *)data + 1, (size_t)(nl - data - 1), boundary) != 0)
        return 0;
    const uint8_t *body = nl + 1;
    size_t n = size - (size_t)(body - data);

    struct cv_mp_limits lim;
    cv_mp_limits_init(&lim);
    if (ctl & 0x80) {
        /* Small limits, so that every limit path is reachable. */
        lim.max_part_head = 24 + (ctl & 0x3f) * 4;
        lim.max_name = ctl & 7;
        lim.max_field = ctl & 0x0f;
        lim.max_file = (ctl >> 2) & 0x0f;
        lim.max_files = (ctl >> 4) & 3;
        lim.max_fields = (ctl >> 1) & 3;
        lim.max_parts = (ctl >> 3) & 7;
    }
    size_t step = 1 + (ctl & 0x1f);

    struct rec a = {0}, b = {0}, c = {0};
    int ra = run(boundary, &lim, body, n, n ? n : 1, &a);
    int rb = run(boundary, &lim, body, n, 1, &b);
    int rc = run(boundary, &lim, body, n, step, &c);
    if (ra != rb || ra != rc || a.len != b.len || a.len != c.len ||
        memcmp(a.buf, b.buf, a.len) != 0 || memcmp(a.buf, c.buf, a.len) != 0)
        abort();
    free(a.buf);
    free(b.buf);
    free(c.buf);
    return 0;
}
