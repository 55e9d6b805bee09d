#include "core/buf.h"

#include <stdlib.h>
#include <string.h>

#include "core/err.h"

/* Storage above CV_BUF_KEEP is released when the buffer empties, so that an
 * idle connection does not keep a burst's worth of memory. */

void cv_buf_init(struct cv_buf *b, size_t max)
{
    b->data = NULL;
    b->off = b->len = b->cap = 0;
    b->max = max;
}

void cv_buf_fini(struct cv_buf *b)
{
    if (b == NULL)
        return;
    free(b->data);
    b->data = NULL;
    b->off = b->len = b->cap = 0;
}

int cv_buf_reserve(struct cv_buf *b, size_t n)
{
    if (n > b->max || b->len > b->max - n)
        return CV_ETOOBIG;
    if (cv_buf_tailroom(b) >= n)
        return 0;
    if (b->off > 0 && b->cap - b->len >= n) {
        memmove(b->data, b->data + b->off, b->len);
        b->off = 0;
        return 0;
    }
    size_t want = b->len + n;
    /* A first allocation this small stays in malloc's per-thread cache
     * (buffers of one small request: a JSON body, an encoded result). */
    size_t ncap = b->cap ? b->cap : 256;
    while (ncap < want)
        ncap *= 2;
    if (ncap > b->max)
        ncap = b->max;
    if (b->off > 0) {
        memmove(b->data, b->data + b->off, b->len);
        b->off = 0;
    }
    uint8_t *p = realloc(b->data, ncap);
    if (p == NULL)
        return CV_ENOMEM;
    b->data = p;
    b->cap = ncap;
    return 0;
}

int cv_buf_append_slow(struct cv_buf *b, const void *p, size_t n)
{
    int rc = cv_buf_reserve(b, n);
    if (rc != 0)
        return rc;
    if (n > 0)
        memcpy(cv_buf_tail(b), p, n);
    b->len += n;
    return 0;
}

size_t cv_u64_dec(char *out, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

int cv_buf_append_u64(struct cv_buf *b, uint64_t v)
{
    char d[20];
    return cv_buf_append(b, d, cv_u64_dec(d, v));
}

void cv_buf_consume(struct cv_buf *b, size_t n)
{
    b->off += n;
    b->len -= n;
    if (b->len == 0) {
        b->off = 0;
        if (b->cap > CV_BUF_KEEP)
            cv_buf_fini(b);
    }
}

void cv_buf_drop(struct cv_buf *b, size_t n)
{
    b->off += n;
    b->len -= n;
    if (b->len == 0)
        b->off = 0;
}

void cv_buf_trim(struct cv_buf *b)
{
    if (b->len == 0 && b->cap > CV_BUF_KEEP)
        cv_buf_fini(b);
}

void cv_buf_reset(struct cv_buf *b)
{
    b->off = b->len = 0;
}
