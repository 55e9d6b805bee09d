/* HTTP/1.1 chunked transfer coding (RFC 9112 §7.1), decoding. Pure: no I/O.
 *
 * Resumable at any byte: the caller feeds whatever arrived, the decoder
 * keeps its place in a small struct and hands back zero-copy slices of chunk
 * data inside the caller's buffer. Chunk extensions and trailer fields are
 * checked for stray CR/LF (a smuggling guard: every line must end in CRLF)
 * and skipped; their total size is capped. */
#ifndef CV_CHUNKED_H
#define CV_CHUNKED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct cv_chunked {
    int state;
    bool digits;        /* the current size line has at least one hex digit */
    uint64_t remaining; /* data bytes left in the current chunk */
    size_t extra;       /* extension and trailer bytes seen so far */
    size_t max_extra;   /* limit on extra */
};

/* Prepares a decoder for one body. max_extra bounds the bytes of chunk
 * extensions plus trailer section together. */
void cv_chunked_init(struct cv_chunked *c, size_t max_extra);

/* Decodes from p[0..n). Stops after the first run of chunk data, so the
 * caller can hand it on: *data and *data_len then describe that run (a slice
 * of p), else *data_len is 0. Returns the bytes consumed (>= 0; the bytes
 * after it are for the next call, or after the body once cv_chunked_is_done),
 * CV_EPROTO for malformed framing (bad hex, bare CR or LF, a control byte in
 * an extension or trailer), CV_ETOOBIG for a chunk size over 2^60-1 or
 * extensions and trailers beyond max_extra. n is capped at INT_MAX per call. */
int cv_chunked_decode(struct cv_chunked *c, const char *p, size_t n, const char **data,
                      size_t *data_len);

/* True once the last chunk and the trailer section (through its empty line)
 * have been consumed. */
bool cv_chunked_is_done(const struct cv_chunked *c);

/* Data bytes the current chunk still announces (0 between chunks): lets a
 * caller refuse a body over its limit as soon as the size line arrives. */
static inline uint64_t cv_chunked_remaining(const struct cv_chunked *c)
{
    return c->remaining;
}

#endif
