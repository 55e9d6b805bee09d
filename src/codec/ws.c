#include "codec/ws.h"

#include <limits.h>
#include <string.h>

#include <openssl/evp.h>
#include "codec/digest.h"

#include "core/err.h"

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define WS_GUID_LEN (sizeof(WS_GUID) - 1)

/* Sticky "not UTF-8" state: no valid state has these bits. */
#define UTF8_REJECT 0xffffffffu

void cv_ws_parser_init(struct cv_ws_parser *ps, bool server, uint64_t max_msg)
{
    memset(ps, 0, sizeof(*ps));
    ps->server = server;
    ps->max_msg = max_msg;
}

static bool opcode_is_known(uint8_t op)
{
    return op <= CV_WS_BINARY || (op >= CV_WS_CLOSE && op <= CV_WS_PONG);
}

static int fail(uint16_t *close_code, uint16_t code, int err)
{
    *close_code = code;
    return err;
}

/* Checks what the first two header bytes alone decide, so that a bad frame
 * is refused as soon as those bytes arrive. Returns 0 or CV_EPROTO. */
static int check_first(const struct cv_ws_parser *ps, uint8_t b0, uint8_t b1)
{
    uint8_t op = b0 & 0x0f;
    bool fin = (b0 & 0x80) != 0;
    bool masked = (b1 & 0x80) != 0;

    if ((b0 & 0x70) != 0 || !opcode_is_known(op))
        return CV_EPROTO; /* no extension was negotiated */
    if (masked != ps->server && !(ps->server && ps->unmasked_ok))
        return CV_EPROTO; /* RFC 6455 §5.1: clients mask, servers don't */
    if (op & 0x8) {
        if (!fin || (b1 & 0x7f) > 125)
            return CV_EPROTO;
    } else if (op == CV_WS_CONT) {
        if (!ps->in_msg)
            return CV_EPROTO;
    } else if (ps->in_msg) {
        return CV_EPROTO; /* new message before the last one finished */
    }
    return 0;
}

/* Decodes the payload length of a header known to be complete. */
static uint64_t read_len(const uint8_t *p, size_t *hdr)
{
    uint8_t l7 = p[1] & 0x7f;
    uint64_t len = 0;

    if (l7 < 126) {
        *hdr = 2;
        return l7;
    }
    size_t nb = l7 == 126 ? 2 : 8;
    for (size_t i = 0; i < nb; i++)
        len = len << 8 | p[2 + i];
    *hdr = 2 + nb;
    return len;
}

/* Validates a CLOSE payload and fills the code and reason of f. */
static int parse_close(struct cv_ws_frame *f, uint16_t *close_code)
{
    f->close_code = CV_WS_NO_STATUS;
    f->reason = NULL;
    f->reason_len = 0;
    if (f->len == 0)
        return 0;
    if (f->len == 1)
        return fail(close_code, CV_WS_PROTOCOL_ERROR, CV_EPROTO);
    f->close_code = (uint16_t)(f->payload[0] << 8 | f->payload[1]);
    if (!cv_ws_close_code_is_valid(f->close_code))
        return fail(close_code, CV_WS_PROTOCOL_ERROR, CV_EPROTO);
    f->reason = f->payload + 2;
    f->reason_len = f->len - 2;
    if (!cv_ws_utf8_valid(f->reason, f->reason_len))
        return fail(close_code, CV_WS_INVALID_DATA, CV_EPROTO);
    return 0;
}

/* Records a complete data or control frame in the fragmentation state. */
static void track_message(struct cv_ws_parser *ps, struct cv_ws_frame *f)
{
    f->msg_opcode = f->opcode;
    f->first = true;
    if (f->opcode & 0x8)
        return; /* control frames may sit between fragments */
    if (f->opcode == CV_WS_CONT) {
        f->msg_opcode = ps->msg_op;
        f->first = false;
        ps->msg_len += f->len;
    } else {
        ps->msg_op = f->opcode;
        ps->msg_len = f->len;
    }
    ps->in_msg = !f->fin;
    if (f->fin)
        ps->msg_len = 0;
}

int cv_ws_parse(struct cv_ws_parser *ps, uint8_t *p, size_t n, struct cv_ws_frame *f, size_t *need,
                uint16_t *close_code)
{
    size_t hdr;

    if (n < 2) {
        *need = 2;
        return 0;
    }
    if (check_first(ps, p[0], p[1]) != 0)
        return fail(close_code, CV_WS_PROTOCOL_ERROR, CV_EPROTO);
    uint8_t l7 = p[1] & 0x7f;
    bool masked = (p[1] & 0x80) != 0;
    hdr = 2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0) + (masked ? 4 : 0);
    if (n < hdr) {
        *need = hdr;
        return 0;
    }
    uint64_t len = read_len(p, &hdr);
    if (len >> 63)
        return fail(close_code, CV_WS_PROTOCOL_ERROR, CV_EPROTO);
    const uint8_t *mask = masked ? p + hdr : NULL;
    if (mask != NULL)
        hdr += 4;
    /* Refuse by declared length, before any payload arrives. The byte count
     * is returned as int, so frames past INT_MAX are too big whatever
     * max_msg says. */
    uint64_t seen = (p[0] & 0x0f) == CV_WS_CONT ? ps->msg_len : 0;
    if (len > ps->max_msg || seen > ps->max_msg - len || len > (uint64_t)INT_MAX - hdr)
        return fail(close_code, CV_WS_TOO_BIG, CV_ETOOBIG);
    if (n - hdr < len) {
        *need = hdr + (size_t)len;
        return 0;
    }

    memset(f, 0, sizeof(*f));
    f->opcode = p[0] & 0x0f;
    f->fin = (p[0] & 0x80) != 0;
    f->payload = p + hdr;
    f->len = (size_t)len;
    if (mask != NULL)
        cv_ws_mask(f->payload, f->len, mask, 0);
    if (f->opcode == CV_WS_CLOSE) {
        int rc = parse_close(f, close_code);
        if (rc != 0)
            return rc;
    }
    track_message(ps, f);
    return (int)(hdr + f->len);
}

size_t cv_ws_encode_header(uint8_t *out, bool fin, uint8_t opcode, uint64_t len,
                           const uint8_t *mask)
{
    size_t h = 2;

    out[0] = (uint8_t)((fin ? 0x80 : 0) | (opcode & 0x0f));
    if (len < 126) {
        out[1] = (uint8_t)len;
    } else if (len <= 0xffff) {
        out[1] = 126;
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        h = 4;
    } else {
        out[1] = 127;
        for (int i = 0; i < 8; i++)
            out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
        h = 10;
    }
    if (mask != NULL) {
        out[1] |= 0x80;
        memcpy(out + h, mask, 4);
        h += 4;
    }
    return h;
}

/* Builds the 8-byte XOR pattern for a mask rotated to phase; memcpy keeps
 * the word loads and stores alignment-safe on any architecture. */
static uint64_t mask_word(const uint8_t mask[4], size_t phase, uint8_t rot[4])
{
    uint8_t k[8];
    uint64_t w;

    for (size_t i = 0; i < 4; i++)
        rot[i] = mask[(phase + i) & 3];
    memcpy(k, rot, 4);
    memcpy(k + 4, rot, 4);
    memcpy(&w, k, 8);
    return w;
}

/* dst = src ^ mask, word-wide; dst may equal src (in-place masking). Eight
 * bytes keep the phase (a multiple of 4), so only the tail needs the byte
 * pattern. */
static void xor_mask(uint8_t *dst, const uint8_t *src, size_t n, const uint8_t mask[4],
                     size_t phase)
{
    uint8_t rot[4];
    uint64_t w = mask_word(mask, phase, rot);
    size_t i = 0;

    for (; n - i >= 32; i += 32) {
        uint64_t v[4];
        memcpy(v, src + i, 32);
        v[0] ^= w;
        v[1] ^= w;
        v[2] ^= w;
        v[3] ^= w;
        memcpy(dst + i, v, 32);
    }
    for (; n - i >= 8; i += 8) {
        uint64_t v;
        memcpy(&v, src + i, 8);
        v ^= w;
        memcpy(dst + i, &v, 8);
    }
    for (; i < n; i++)
        dst[i] = src[i] ^ rot[i & 3];
}

void cv_ws_mask(uint8_t *p, size_t n, const uint8_t mask[4], size_t phase)
{
    xor_mask(p, p, n, mask, phase);
}

void cv_ws_mask_copy(uint8_t *dst, const uint8_t *src, size_t n, const uint8_t mask[4])
{
    xor_mask(dst, src, n, mask, 0);
}

void cv_ws_accept_key(const char *key, size_t key_len, char out[CV_WS_ACCEPT_LEN])
{
    uint8_t md[CV_SHA1_LEN];
    cv_sha1_2(key, key_len, WS_GUID, WS_GUID_LEN, md);
    EVP_EncodeBlock((unsigned char *)out, md, CV_SHA1_LEN);
}

static bool is_b64(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '+' || c == '/';
}

bool cv_ws_key_is_valid(const char *key, size_t key_len)
{
    /* 16 bytes are 22 base64 digits and "==". Non-zero padding bits in the
     * last digit are tolerated, as Python's websockets does. */
    if (key_len != 24 || key[22] != '=' || key[23] != '=')
        return false;
    for (size_t i = 0; i < 22; i++)
        if (!is_b64(key[i]))
            return false;
    return true;
}

/* The UTF-8 state packs the continuation bytes still needed (bits 0-7) and
 * the allowed range of the next one (lo in bits 8-15, hi in 16-23); the
 * narrowed first ranges are what rule out overlongs, surrogates and code
 * points past U+10FFFF (RFC 3629 §4). */
static uint32_t utf8_lead(uint8_t c)
{
    uint32_t need, lo = 0x80, hi = 0xbf;

    if (c >= 0xc2 && c <= 0xdf)
        need = 1;
    else if (c >= 0xe0 && c <= 0xef)
        need = 2;
    else if (c >= 0xf0 && c <= 0xf4)
        need = 3;
    else
        return UTF8_REJECT;
    if (c == 0xe0)
        lo = 0xa0;
    else if (c == 0xed)
        hi = 0x9f;
    else if (c == 0xf0)
        lo = 0x90;
    else if (c == 0xf4)
        hi = 0x8f;
    return need | lo << 8 | hi << 16;
}

bool cv_ws_utf8_feed(uint32_t *state, const uint8_t *p, size_t n)
{
    uint32_t s = *state;
    size_t i = 0;

    while (i < n && s != UTF8_REJECT) {
        if (s == 0 && n - i >= 8) {
            uint64_t v;
            memcpy(&v, p + i, 8);
            if ((v & 0x8080808080808080ull) == 0) {
                i += 8; /* ASCII fast path */
                continue;
            }
        }
        if (s == 0) {
            s = p[i] < 0x80 ? 0 : utf8_lead(p[i]);
        } else {
            uint8_t lo = (uint8_t)(s >> 8), hi = (uint8_t)(s >> 16);
            uint32_t left = (s & 0xff) - 1;
            if (p[i] < lo || p[i] > hi)
                s = UTF8_REJECT;
            else
                s = left == 0 ? 0 : (left | 0x80u << 8 | 0xbfu << 16);
        }
        i++;
    }
    *state = s;
    return s != UTF8_REJECT;
}

bool cv_ws_utf8_valid(const uint8_t *p, size_t n)
{
    uint32_t s = 0;
    return cv_ws_utf8_feed(&s, p, n) && s == 0;
}

bool cv_ws_close_code_is_valid(uint16_t code)
{
    /* 1004-1006 and 1015 are reserved for local use and never sent;
     * 1012-1014 are registered (IANA) and sent by real servers. */
    if (code >= 1000 && code <= 1003)
        return true;
    if (code >= 1007 && code <= 1014)
        return true;
    return code >= 3000 && code <= 4999;
}
