/* A byte buffer with a hard maximum. Growing past the maximum fails with
 * CV_ETOOBIG instead of reallocating forever. Data lives in
 * data[off .. off+len); free space is at the tail. */
#ifndef CV_BUF_H
#define CV_BUF_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct cv_buf {
    uint8_t *data; /* owned */
    size_t off;
    size_t len;
    size_t cap;
    size_t max;
};

/* Initialises an empty buffer that may hold at most max bytes. No allocation. */
void cv_buf_init(struct cv_buf *b, size_t max);
/* Frees the storage; the buffer may be reused after cv_buf_init. NULL-safe. */
void cv_buf_fini(struct cv_buf *b);
/* Makes room for n more bytes at the tail. Returns 0, CV_ETOOBIG if len + n
 * would exceed max, or CV_ENOMEM. */
int cv_buf_reserve(struct cv_buf *b, size_t n);
/* Appends n bytes. Returns 0, CV_ETOOBIG or CV_ENOMEM (buffer unchanged).
 * Inline when the bytes fit (the common case: response heads are built from
 * many small appends); cv_buf_append_slow grows the storage. */
int cv_buf_append_slow(struct cv_buf *b, const void *p, size_t n);
static inline int cv_buf_append(struct cv_buf *b, const void *p, size_t n);
/* Appends v in decimal. Returns as cv_buf_append. */
int cv_buf_append_u64(struct cv_buf *b, uint64_t v);
/* Writes v in decimal to out (at least 20 bytes, not terminated); returns
 * the length. */
size_t cv_u64_dec(char *out, uint64_t v);
/* Drops n bytes from the head (n <= len). Frees storage once empty and large. */
void cv_buf_consume(struct cv_buf *b, size_t n);
/* Discards the contents, keeping the storage. */
void cv_buf_reset(struct cv_buf *b);
/* Drops n bytes from the head (n <= len), keeping the storage even once
 * empty: for a buffer about to be refilled (a stream that keeps flowing),
 * which would otherwise be freed and grown again by reallocs each round.
 * The owner releases it with cv_buf_trim once the flow stops. */
void cv_buf_drop(struct cv_buf *b, size_t n);
/* Storage an empty buffer may keep (larger storage goes once it empties). */
#define CV_BUF_KEEP (64 * 1024)
/* Frees the storage of an empty buffer larger than CV_BUF_KEEP (the
 * cv_buf_consume rule). */
void cv_buf_trim(struct cv_buf *b);

static inline uint8_t *cv_buf_head(const struct cv_buf *b) { return b->data + b->off; }
static inline uint8_t *cv_buf_tail(const struct cv_buf *b) { return b->data + b->off + b->len; }
static inline size_t cv_buf_tailroom(const struct cv_buf *b) { return b->cap - b->off - b->len; }
/* Marks n bytes written at the tail (after cv_buf_reserve) as data. */
static inline void cv_buf_commit(struct cv_buf *b, size_t n) { b->len += n; }

static inline int cv_buf_append(struct cv_buf *b, const void *p, size_t n)
{
    if (n == 0 || cv_buf_tailroom(b) < n || b->len + n > b->max)
        return cv_buf_append_slow(b, p, n);
    memcpy(cv_buf_tail(b), p, n);
    b->len += n;
    return 0;
}

#endif
