/* Small text helpers the codecs share: hex digits, UTF-8 encoding, and
 * eight-bytes-at-a-time tests for JSON strings. Pure, header-only. */
#ifndef CV_TEXT_H
#define CV_TEXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The value of hex digit c, or -1. */
static inline int cv_hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Writes code point cp (<= 0x10ffff, not a surrogate) as UTF-8 to o (room
 * for 4 bytes); returns the length. */
static inline size_t cv_utf8_put(char *o, uint32_t cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xc0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xe0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
        o[2] = (char)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (char)(0xf0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
    o[3] = (char)(0x80 | (cp & 0x3f));
    return 4;
}

#define CV_ONES8 UINT64_C(0x0101010101010101)

/* Of the eight bytes in w, whether any is < 0x20, '"' or '\\' (one that a
 * JSON string must escape), as a mask of high bits: nonzero exactly when
 * one is (SWAR; which bit is set may be off, whether any is, is not). */
static inline uint64_t cv_json_special8(uint64_t w)
{
    uint64_t q = w ^ (CV_ONES8 * '"'), b = w ^ (CV_ONES8 * '\\');
    uint64_t ctl = (w - CV_ONES8 * 0x20) & ~w;                          /* some byte < 0x20 */
    uint64_t quote = (q - CV_ONES8) & ~q, bslash = (b - CV_ONES8) & ~b; /* some byte zero */
    return (ctl | quote | bslash) & (CV_ONES8 * 0x80);
}

/* Whether any of the eight bytes in w is non-ASCII (>= 0x80). */
static inline bool cv_nonascii8(uint64_t w)
{
    return (w & (CV_ONES8 * 0x80)) != 0;
}

#endif
