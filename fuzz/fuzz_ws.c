/* Fuzzes the WebSocket frame parser as server and client, with a small and
 * a large message limit. The input is parsed whole and again offered in
 * growing prefixes; both runs must agree frame for frame. Also checks the
 * word-wide masking and the UTF-8 validator against byte-wise references. */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec/ws.h"
#include "core/err.h"

struct sum {
    uint64_t h;  /* running hash of every frame's fields and payload */
    size_t off;  /* bytes consumed */
    int rc;      /* last result */
    uint16_t cc; /* close code on error */
};

static void mix(uint64_t *h, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        *h = (*h ^ p[i]) * 1099511628211ull;
}

static void frame_ok(const struct cv_ws_parser *ps, const struct cv_ws_frame *f,
                     const uint8_t *p, size_t n, int rc, struct sum *s)
{
    if (rc <= 0 || (size_t)rc > n || f->payload < p || f->payload + f->len != p + rc)
        abort();
    if (f->len > ps->max_msg || ((f->opcode & 8) && (f->len > 125 || !f->fin)))
        abort();
    if (f->opcode == CV_WS_CLOSE && f->len >= 2 &&
        (!cv_ws_close_code_is_valid(f->close_code) || !cv_ws_utf8_valid(f->reason, f->reason_len)))
        abort();
    uint8_t fields[4] = {f->opcode, f->msg_opcode, f->fin, f->first};
    mix(&s->h, fields, sizeof(fields));
    mix(&s->h, f->payload, f->len);
}

/* Parses buf[0..n), offering `step` more bytes whenever the parser is short
 * (0: all at once). */
static void run(int mode, uint64_t max, uint8_t *buf, size_t n, size_t step, struct sum *s)
{
    struct cv_ws_parser ps;
    size_t have = step ? (step < n ? step : n) : n;

    memset(s, 0, sizeof(*s));
    /* mode 0: client, 1: server, 2: server with native (unmasked) framing */
    cv_ws_parser_init(&ps, mode != 0, max);
    ps.unmasked_ok = mode == 2;
    for (;;) {
        struct cv_ws_frame f;
        size_t need = 0;
        uint16_t cc = 0;
        int rc = cv_ws_parse(&ps, buf + s->off, have - s->off, &f, &need, &cc);
        s->rc = rc;
        if (rc < 0) {
            if (!(rc == CV_EPROTO && (cc == 1002 || cc == 1007)) &&
                !(rc == CV_ETOOBIG && cc == 1009))
                abort();
            s->cc = cc;
            return;
        }
        if (rc > 0) {
            frame_ok(&ps, &f, buf + s->off, have - s->off, rc, s);
            s->off += (size_t)rc;
            continue;
        }
        if (need <= have - s->off || need > CV_WS_MAX_HDR + max)
            abort();
        if (have == n)
            return;
        have = step ? (have + step < n ? have + step : n) : n;
    }
}

static void check_parser(const uint8_t *data, size_t size)
{
    static const uint64_t maxes[] = {100, 1u << 20};
    uint8_t *a = malloc(size ? size : 1), *b = malloc(size ? size : 1);

    if (a == NULL || b == NULL)
        goto out;
    for (int mode = 0; mode <= 2; mode++) {
        for (size_t mi = 0; mi < 2; mi++) {
            struct sum whole, bytes;
            memcpy(a, data, size);
            run(mode, maxes[mi], a, size, 0, &whole);
            /* One byte at a time is quadratic in the header-only case; use
             * larger steps for big inputs. */
            memcpy(b, data, size);
            run(mode, maxes[mi], b, size, size <= 4096 ? 1 : 61, &bytes);
            if (memcmp(&whole, &bytes, sizeof(whole)) != 0 || memcmp(a, b, size) != 0)
                abort();
        }
    }
out:
    free(a);
    free(b);
}

static void check_mask(const uint8_t *data, size_t size)
{
    uint8_t mask[4] = {0x5a, 0xa5, 0x0f, 0xf0};
    size_t phase = 0;
    uint8_t *x = malloc(size + 1), *y = malloc(size + 1);

    if (x == NULL || y == NULL)
        goto out;
    if (size >= 5) {
        memcpy(mask, data, 4);
        phase = data[4];
    }
    /* Unaligned start (x + 1) on purpose. */
    memcpy(x + 1, data, size);
    memcpy(y, data, size);
    cv_ws_mask(x + 1, size, mask, phase);
    for (size_t i = 0; i < size; i++)
        if (x[1 + i] != (uint8_t)(y[i] ^ mask[(phase + i) & 3]))
            abort();
    cv_ws_mask_copy(y, x + 1, size, mask);
    cv_ws_mask(y, size, mask, phase);
    cv_ws_mask(y, size, mask, 0);
    if (memcmp(y, data, size) != 0)
        abort();
out:
    free(x);
    free(y);
}

/* Byte-wise UTF-8 reference (RFC 3629). */
static bool utf8_ref(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n;) {
        uint8_t c = p[i];
        size_t k;
        uint32_t cp, min;
        if (c < 0x80) {
            i++;
            continue;
        }
        if ((c & 0xe0) == 0xc0)
            k = 1, cp = c & 0x1f, min = 0x80;
        else if ((c & 0xf0) == 0xe0)
            k = 2, cp = c & 0x0f, min = 0x800;
        else if ((c & 0xf8) == 0xf0)
            k = 3, cp = c & 0x07, min = 0x10000;
        else
            return false;
        if (n - i - 1 < k)
            return false;
        for (size_t j = 1; j <= k; j++) {
            if ((p[i + j] & 0xc0) != 0x80)
                return false;
            cp = cp << 6 | (p[i + j] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += k + 1;
    }
    return true;
}

static void check_utf8(const uint8_t *data, size_t size)
{
    bool whole = cv_ws_utf8_valid(data, size);
    if (whole != utf8_ref(data, size))
        abort();
    /* Split in two at a point the input picks. */
    size_t cut = size ? data[0] % (size + 1) : 0;
    uint32_t st = 0;
    bool ok = cv_ws_utf8_feed(&st, data, cut) && cv_ws_utf8_feed(&st, data + cut, size - cut);
    if ((ok && st == 0) != whole)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_parser(data, size);
    check_mask(data, size);
    check_utf8(data, size);
    return 0;
}
