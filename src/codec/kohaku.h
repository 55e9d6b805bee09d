/* KohakuRiver tunnel messages (specs/kohaku-tunnel.md §3-4): an 8-byte
 * header `>BBIH` (type, proto, client_id, port) followed by the payload,
 * which is the rest of the WebSocket message. Pure: no I/O. */
#ifndef CV_KOHAKU_H
#define CV_KOHAKU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CV_KH_HDR_LEN 8

enum cv_kh_type {
    CV_KH_CONNECT = 1,
    CV_KH_CONNECTED = 2,
    CV_KH_DATA = 3,
    CV_KH_CLOSE = 4,
    CV_KH_ERROR = 5,
    CV_KH_PING = 6,
    CV_KH_PONG = 7,
    /* Native mode only (docs/PROTOCOL.md §2). */
    CV_KH_WINDOW = 8,
    CV_KH_EXPOSE = 9,
    CV_KH_EXPOSED = 10,
    CV_KH_UNEXPOSE = 11
};

enum cv_kh_proto {
    CV_KH_TCP = 0,
    CV_KH_UDP = 1,
    /* Named exposures (docs/PROTOCOL.md §6): only in EXPOSE and EXPOSED. */
    CV_KH_HTTP = 2,
    CV_KH_TLS = 3
};

/* Longest name a named exposure may claim (one DNS label). */
#define CV_KH_NAME_MAX 63

struct cv_kh_msg {
    uint8_t type;
    uint8_t proto;
    uint32_t id;
    uint16_t port;
    const uint8_t *payload; /* borrowed: points into the decoded input */
    size_t len;
};

/* Decodes one whole tunnel message p[0..n). Fills *m whenever n >= 8.
 * Returns 0 for a valid message, CV_EAGAIN when n < 8 (malformed: a message
 * is never split), CV_EPROTO for an unknown type or a proto other than 0/1
 * (m is still filled, so a relay may pass such messages on). */
int cv_kh_decode(const uint8_t *p, size_t n, struct cv_kh_msg *m);

/* Same, for a native-mode connection: types 8-10 (WINDOW, EXPOSE, EXPOSED)
 * are valid too, and EXPOSE and EXPOSED may carry proto 2 (http) or 3 (tls). */
int cv_kh_decode_native(const uint8_t *p, size_t n, struct cv_kh_msg *m);

/* True if p[0..n) is a name a named exposure may claim: one DNS label of
 * 1-63 bytes from [a-z0-9-], not starting or ending with '-'. */
bool cv_kh_name_valid(const char *p, size_t n);

/* Writes the 8-byte header for (type, proto, id, port) into out. */
void cv_kh_encode(uint8_t out[CV_KH_HDR_LEN], uint8_t type, uint8_t proto, uint32_t id,
                  uint16_t port);

/* Rewrites only the client_id (bytes 2-5) of an encoded message of at least
 * 8 bytes (spec §6.3: ids are translated in place). */
void cv_kh_set_id(uint8_t *msg, uint32_t id);

/* Returns a static name for a message type ("CONNECT", ..., "UNKNOWN"). */
const char *cv_kh_type_name(uint8_t type);

#endif
