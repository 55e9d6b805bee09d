/* The forward role (specs/kohaku-tunnel.md §6.6): one /ws/forward session to
 * a relay, and a local TCP or UDP listener whose connections (TCP) or source
 * addresses (UDP) each become one id on that session (ids from 1, never
 * reused).
 *
 * Order: the WebSocket is opened first; the relay's first message must be
 * the text CONNECTED within CV_LIMIT_FORWARD_HELLO_MS, and only then does
 * the local listener start. If the session ends for any reason every local
 * connection is closed and the forward ends with an error: nothing is
 * re-established. */
#ifndef CV_FORWARD_H
#define CV_FORWARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

struct cv_forward;

struct cv_forward_opts {
    const char *relay_url;    /* borrowed: ws:// base URL (trailing '/' trimmed) */
    const char *container_id; /* borrowed */
    uint16_t remote_port;
    const char *local_host;   /* borrowed: numeric address or name; NULL: 127.0.0.1 */
    uint16_t local_port;      /* 0: ephemeral */
    uint8_t proto;            /* CV_KH_TCP or CV_KH_UDP */
    size_t conn_pending_max;  /* per-connection queue; 0: CV_LIMIT_CONN_PENDING */
    bool native;              /* offer culvert.v1 (flow control, half-close) */
    const char *token;        /* borrowed: Authorization: Bearer; NULL: none */
};

/* The relay said CONNECTED and the local listener is up at bound. */
typedef void (*cv_forward_ready_cb)(struct cv_forward *f, const struct sockaddr *bound,
                                    void *data);
/* The forward ended and closed every handle; it is freed right after this
 * returns. status 0 after cv_forward_stop; otherwise 1 and msg is a line for
 * the user ("Error: ..."), e.g. the relay's own Error text. */
typedef void (*cv_forward_done_cb)(struct cv_forward *f, int status, const char *msg,
                                   void *data);

/* Builds {relay_url minus trailing '/'}/ws/forward/{id}/{port}?proto=tcp|udp.
 * Returns 0 or CV_ETOOBIG. */
int cv_forward_url(const struct cv_forward_opts *o, char *buf, size_t len);

/* Starts connecting (from the loop: failures arrive through done). Returns
 * 0, CV_EINVAL (missing URL or id) or CV_ENOMEM; then no callback fires. */
int cv_forward_start(uv_loop_t *loop, const struct cv_forward_opts *opts,
                     cv_forward_ready_cb ready, cv_forward_done_cb done, void *data,
                     struct cv_forward **out);

/* Closes the session and every local socket; done fires with status 0.
 * Safe to call more than once. */
void cv_forward_stop(struct cv_forward *f);

#endif
