#include "codec/kohaku.h"

#include "core/err.h"

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static int decode(const uint8_t *p, size_t n, struct cv_kh_msg *m, uint8_t max_type)
{
    /* The tunnel never splits a message across WebSocket messages, so a short
     * one is malformed rather than incomplete; the caller ignores it (§4). */
    if (n < CV_KH_HDR_LEN)
        return CV_EAGAIN;
    m->type = p[0];
    m->proto = p[1];
    m->id = get32(p + 2);
    m->port = (uint16_t)(p[6] << 8 | p[7]);
    m->payload = p + CV_KH_HDR_LEN;
    m->len = n - CV_KH_HDR_LEN;
    if (m->type < CV_KH_CONNECT || m->type > max_type)
        return CV_EPROTO;
    if (m->proto == CV_KH_TCP || m->proto == CV_KH_UDP)
        return 0;
    bool named = m->type == CV_KH_EXPOSE || m->type == CV_KH_EXPOSED;
    if (named && max_type >= CV_KH_EXPOSED && (m->proto == CV_KH_HTTP || m->proto == CV_KH_TLS))
        return 0;
    return CV_EPROTO;
}

bool cv_kh_name_valid(const char *p, size_t n)
{
    if (n == 0 || n > CV_KH_NAME_MAX || p[0] == '-' || p[n - 1] == '-')
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
            return false;
    }
    return true;
}

int cv_kh_decode(const uint8_t *p, size_t n, struct cv_kh_msg *m)
{
    return decode(p, n, m, CV_KH_PONG);
}

int cv_kh_decode_native(const uint8_t *p, size_t n, struct cv_kh_msg *m)
{
    return decode(p, n, m, CV_KH_UNEXPOSE);
}

void cv_kh_encode(uint8_t out[CV_KH_HDR_LEN], uint8_t type, uint8_t proto, uint32_t id,
                  uint16_t port)
{
    out[0] = type;
    out[1] = proto;
    put32(out + 2, id);
    out[6] = (uint8_t)(port >> 8);
    out[7] = (uint8_t)port;
}

void cv_kh_set_id(uint8_t *msg, uint32_t id)
{
    put32(msg + 2, id);
}

const char *cv_kh_type_name(uint8_t type)
{
    static const char *const names[] = {
        [CV_KH_CONNECT] = "CONNECT", [CV_KH_CONNECTED] = "CONNECTED", [CV_KH_DATA] = "DATA",
        [CV_KH_CLOSE] = "CLOSE",     [CV_KH_ERROR] = "ERROR",         [CV_KH_PING] = "PING",
        [CV_KH_PONG] = "PONG",       [CV_KH_WINDOW] = "WINDOW",       [CV_KH_EXPOSE] = "EXPOSE",
        [CV_KH_EXPOSED] = "EXPOSED", [CV_KH_UNEXPOSE] = "UNEXPOSE",
    };
    if (type < CV_KH_CONNECT || type > CV_KH_UNEXPOSE)
        return "UNKNOWN";
    return names[type];
}
