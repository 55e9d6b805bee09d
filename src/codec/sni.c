/* SNI from a TLS ClientHello. See codec/sni.h.
 *
 * Layout walked (RFC 8446 §4.1.2, §5.1; RFC 6066 §3):
 *   record:  type 22 | version 3.x | length(2) | fragment
 *   handshake: type 1 | length(3) | body (fragments of consecutive records)
 *   body: version(2) random(32) session_id<0..32> cipher_suites<2..2^16-2>
 *         compression_methods<1..2^8-1> [extensions<0..2^16-1>]
 *   server_name (type 0): server_name_list<1..2^16-1> of
 *         name_type(1) | host_name<1..2^16-1>  (name_type 0 = host_name) */
#include "codec/sni.h"

#include <string.h>

#include "core/err.h"

#define REC_HDR 5
#define REC_MAX (16384 + 2048) /* TLSPlaintext is 2^14; be lenient, never more than ciphertext */
#define HS_CLIENT_HELLO 1
#define EXT_SERVER_NAME 0

/* A bounds-checked reader over a byte slice. */
struct rd {
    const uint8_t *p;
    size_t n;
    int bad;
};

static uint32_t get(struct rd *r, size_t k)
{
    uint32_t v = 0;
    if (r->bad || r->n < k) {
        r->bad = 1;
        return 0;
    }
    for (size_t i = 0; i < k; i++)
        v = v << 8 | r->p[i];
    r->p += k;
    r->n -= k;
    return v;
}

/* Takes a length-prefixed slice (prefix of k bytes) out of r. */
static struct rd sub(struct rd *r, size_t k)
{
    struct rd s = {0};
    size_t len = get(r, k);
    if (r->bad || r->n < len) {
        r->bad = 1;
        s.bad = 1;
        return s;
    }
    s.p = r->p;
    s.n = len;
    r->p += len;
    r->n -= len;
    return s;
}

/* Copies the handshake bytes of the records in p into hs. Returns the
 * handshake bytes gathered so far (>= 0) or an error. Stops once *want (the
 * whole message, known after its 4-byte header) is there. */
static int gather(const uint8_t *p, size_t n, uint8_t *hs, size_t *want)
{
    size_t have = 0;
    *want = 0;
    while (n >= 1) {
        if (p[0] != 22)
            return CV_EPROTO; /* not a handshake record: not TLS, or not a ClientHello first */
        if (n >= 2 && p[1] != 3)
            return CV_EPROTO;
        if (n < REC_HDR)
            return (int)have;
        size_t len = (size_t)p[3] << 8 | p[4];
        if (len == 0 || len > REC_MAX)
            return CV_EPROTO;
        size_t take = n - REC_HDR < len ? n - REC_HDR : len;
        size_t room = CV_SNI_MAX_HELLO - have;
        if (take > room)
            take = room;
        memcpy(hs + have, p + REC_HDR, take);
        have += take;
        if (*want == 0 && have >= 4) {
            if (hs[0] != HS_CLIENT_HELLO)
                return CV_EPROTO;
            *want = 4 + ((size_t)hs[1] << 16 | (size_t)hs[2] << 8 | hs[3]);
            if (*want > CV_SNI_MAX_HELLO)
                return CV_ETOOBIG;
        }
        if (*want != 0 && have >= *want)
            return (int)have;
        if (n - REC_HDR < len)
            return (int)have; /* this record is still arriving */
        p += REC_HDR + len;
        n -= REC_HDR + len;
    }
    return (int)have;
}

static int host_name(struct rd s, char *name, size_t *name_len)
{
    if (s.n == 0 || s.n > CV_SNI_NAME_MAX + 1)
        return CV_EPROTO;
    size_t len = s.n;
    if (s.p[len - 1] == '.')
        len--; /* an absolute name: the same host */
    if (len == 0 || len > CV_SNI_NAME_MAX)
        return CV_EPROTO;
    for (size_t i = 0; i < len; i++) {
        uint8_t c = s.p[i];
        if (c >= 'A' && c <= 'Z')
            c = (uint8_t)(c - 'A' + 'a');
        else if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
                   c == '.'))
            return CV_EPROTO;
        name[i] = (char)c;
    }
    name[len] = 0;
    *name_len = len;
    return 0;
}

/* Finds server_name in the extensions block. */
static int extensions(struct rd ex, char *name, size_t *name_len)
{
    while (ex.n > 0) {
        uint32_t type = get(&ex, 2);
        struct rd data = sub(&ex, 2);
        if (ex.bad)
            return CV_EPROTO;
        if (type != EXT_SERVER_NAME)
            continue;
        struct rd list = sub(&data, 2);
        if (data.bad || data.n != 0 || list.n == 0)
            return CV_EPROTO;
        while (list.n > 0) {
            uint32_t nt = get(&list, 1);
            struct rd hn = sub(&list, 2);
            if (list.bad)
                return CV_EPROTO;
            if (nt == 0)
                return host_name(hn, name, name_len);
        }
        return 0; /* no host_name entry */
    }
    return 0;
}

int cv_sni_parse(const uint8_t *p, size_t n, char *name, size_t *name_len)
{
    uint8_t hs[CV_SNI_MAX_HELLO];
    size_t want;
    *name_len = 0;
    name[0] = 0;
    int have = gather(p, n, hs, &want);
    if (have < 0)
        return have;
    if (want == 0 || (size_t)have < want)
        return CV_EAGAIN;
    struct rd r = {hs + 4, want - 4, 0};
    uint32_t ver = get(&r, 2);
    if (!r.bad && ver >> 8 != 3)
        return CV_EPROTO;
    get(&r, 32); /* random */
    struct rd sid = sub(&r, 1);
    struct rd suites = sub(&r, 2);
    struct rd comp = sub(&r, 1);
    if (r.bad || sid.n > 32 || suites.n < 2 || suites.n % 2 != 0 || comp.n < 1)
        return CV_EPROTO;
    if (r.n == 0)
        return 0; /* no extensions at all: no name */
    struct rd ex = sub(&r, 2);
    if (r.bad || r.n != 0)
        return CV_EPROTO;
    int rc = extensions(ex, name, name_len);
    if (rc != 0) {
        *name_len = 0;
        name[0] = 0;
    }
    return rc;
}
