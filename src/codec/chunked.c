#include "codec/chunked.h"

#include <limits.h>

#include "codec/text.h"
#include "core/err.h"

/* Sizes above this are refused: no real body needs them, and the bound keeps
 * "remaining * 16 + digit" far from overflow. */
#define MAX_CHUNK ((UINT64_C(1) << 60) - 1)

enum {
    S_SIZE,     /* hex digits of the chunk size */
    S_EXT,      /* chunk extension, up to CR */
    S_SIZE_LF,  /* LF ending the size line */
    S_DATA,     /* chunk data */
    S_DATA_CR,  /* CR after chunk data */
    S_DATA_LF,  /* LF after chunk data */
    S_TRAILER,  /* start of a trailer line (CR: end of the section) */
    S_FIELD,    /* inside a trailer field, up to CR */
    S_FIELD_LF, /* LF ending a trailer field */
    S_END_LF,   /* LF of the final empty line */
    S_DONE
};

void cv_chunked_init(struct cv_chunked *c, size_t max_extra)
{
    c->state = S_SIZE;
    c->digits = false;
    c->remaining = 0;
    c->extra = 0;
    c->max_extra = max_extra;
}

bool cv_chunked_is_done(const struct cv_chunked *c)
{
    return c->state == S_DONE;
}

/* Extension and trailer text: visible characters, SP and HTAB only. */
static bool is_text(unsigned char ch)
{
    return ch == '\t' || (ch >= 0x20 && ch != 0x7f);
}

static int count_extra(struct cv_chunked *c)
{
    return ++c->extra > c->max_extra ? CV_ETOOBIG : 0;
}

static int size_byte(struct cv_chunked *c, unsigned char ch)
{
    int v = cv_hexval(ch);
    if (v >= 0) {
        if (c->remaining > (MAX_CHUNK >> 4))
            return CV_ETOOBIG;
        c->remaining = c->remaining * 16 + (uint64_t)v;
        c->digits = true;
        return 0;
    }
    if (!c->digits)
        return CV_EPROTO;
    if (ch == '\r') {
        c->state = S_SIZE_LF;
        return 0;
    }
    if (ch == ';' || ch == ' ' || ch == '\t') {
        c->state = S_EXT;
        return count_extra(c);
    }
    return CV_EPROTO;
}

/* One framing byte (any state but S_DATA and S_DONE). */
static int step(struct cv_chunked *c, unsigned char ch)
{
    switch (c->state) {
    case S_SIZE: return size_byte(c, ch);
    case S_EXT:
        if (ch == '\r') {
            c->state = S_SIZE_LF;
            return 0;
        }
        return is_text(ch) ? count_extra(c) : CV_EPROTO;
    case S_SIZE_LF:
        if (ch != '\n')
            return CV_EPROTO;
        c->digits = false;
        c->state = c->remaining > 0 ? S_DATA : S_TRAILER;
        return 0;
    case S_DATA_CR: c->state = S_DATA_LF; return ch == '\r' ? 0 : CV_EPROTO;
    case S_DATA_LF: c->state = S_SIZE; return ch == '\n' ? 0 : CV_EPROTO;
    case S_TRAILER:
        c->state = ch == '\r' ? S_END_LF : S_FIELD;
        return ch == '\r' ? 0 : (is_text(ch) ? count_extra(c) : CV_EPROTO);
    case S_FIELD:
        if (ch == '\r') {
            c->state = S_FIELD_LF;
            return 0;
        }
        return is_text(ch) ? count_extra(c) : CV_EPROTO;
    case S_FIELD_LF: c->state = S_TRAILER; return ch == '\n' ? 0 : CV_EPROTO;
    case S_END_LF: c->state = S_DONE; return ch == '\n' ? 0 : CV_EPROTO;
    default: return CV_EPROTO;
    }
}

int cv_chunked_decode(struct cv_chunked *c, const char *p, size_t n, const char **data,
                      size_t *data_len)
{
    size_t i = 0;

    *data = NULL;
    *data_len = 0;
    if (n > INT_MAX)
        n = INT_MAX; /* the count is returned as int */
    while (i < n && c->state != S_DONE) {
        if (c->state == S_DATA) {
            size_t take = n - i;
            if ((uint64_t)take > c->remaining)
                take = (size_t)c->remaining;
            *data = p + i;
            *data_len = take;
            c->remaining -= take;
            if (c->remaining == 0)
                c->state = S_DATA_CR;
            return (int)(i + take);
        }
        int rc = step(c, (unsigned char)p[i]);
        if (rc < 0)
            return rc;
        i++;
    }
    return (int)i;
}
