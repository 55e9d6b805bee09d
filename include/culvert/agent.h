/* Public API of the culvert agent (libculvert): the agent role (specs/kohaku-tunnel.md §5, §7): dials
 * {runner_url}/ws/tunnel/{container_id}, opens the TCP/UDP connections the
 * relay asks for on 127.0.0.1, and reconnects when the tunnel ends.
 *
 * Reconnect loop (§7, with issue 2's backoff): each handshake attempt
 * increments a counter; with max_reconnect N > 0, the attempt after the
 * Nth consecutive failure gives up (done_cb with CV_AGENT_GAVE_UP). A
 * failed handshake waits a random delay in [0, min(60 s, base * 2^(k-1))]
 * (full jitter, k = consecutive failures); after an established tunnel
 * ends the counter resets and the next attempt waits exactly the base.
 *
 * Logs (cv_log): "tunnel established: URL" (info) each time the WebSocket
 * opens, "tunnel closed: CODE REASON" when it ends. */
#ifndef CULVERT_AGENT_H
#define CULVERT_AGENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct cv_agent;

enum cv_agent_end {
    CV_AGENT_STOPPED = 0, /* cv_agent_stop was called */
    CV_AGENT_GAVE_UP = 1  /* max_reconnect consecutive handshakes failed */
};

/* The agent has ended and closed every handle; it is freed right after
 * this returns. Never called synchronously from cv_agent_start/stop. */
typedef void (*cv_agent_done_cb)(struct cv_agent *a, enum cv_agent_end end, void *data);

/* A port the agent asks the relay to expose publicly (native mode), or a
 * name it claims on the relay's front door (docs/PROTOCOL.md §6). */
struct cv_agent_expose {
    uint8_t proto;        /* 0 TCP, 1 UDP, 2 HTTP (virtual host), 3 TLS (by SNI) */
    uint16_t local_port;  /* on 127.0.0.1 next to the agent */
    uint16_t public_port; /* TCP/UDP: on the relay; 0: any free port */
    const char *name;     /* borrowed; HTTP/TLS: the DNS label claimed */
};

struct cv_agent_opts {
    const char *runner_url;      /* borrowed: ws:// base URL, trailing '/' trimmed */
    const char *container_id;    /* borrowed: last path segment */
    uint64_t reconnect_delay_ms; /* base delay (spec: 5 s) */
    uint32_t max_reconnect;      /* 0: retry forever */
    size_t conn_pending_max;     /* per-connection queue; 0: CV_LIMIT_CONN_PENDING */
    bool native;                 /* offer culvert.v1 (flow control, exposures) */
    const char *token;           /* borrowed: Authorization: Bearer; NULL: none */
    const struct cv_agent_expose *expose; /* borrowed: native only */
    size_t nexpose;
    uint32_t ping_interval_ms;   /* native keepalive; 0: 15 s */
    const char *admin_host;      /* borrowed: admin listener (status, /metrics); NULL: none */
    uint16_t admin_port;         /* 0: ephemeral */
};

/* Fills defaults: 5 s delay, unlimited retries, default queue cap. */
void cv_agent_opts_default(struct cv_agent_opts *o);

/* Builds the tunnel URL {runner_url minus trailing '/'}/ws/tunnel/{id}
 * into buf. Returns 0, or a negative code if it does not fit. */
int cv_agent_url(const char *runner_url, const char *container_id, char *buf, size_t len);

/* Starts the agent on loop; the first attempt is made from the loop.
 * Returns 0 (*out set) or a negative code (missing URL or id, out of
 * memory); on failure done is never called. */
int cv_agent_start(uv_loop_t *loop, const struct cv_agent_opts *opts, cv_agent_done_cb done,
                   void *data, struct cv_agent **out);

/* Closes the tunnel (close 1000) and every local connection; done fires
 * when all is closed. Safe to call more than once. */
void cv_agent_stop(struct cv_agent *a);

/* Replaces the exposures (copied): ones no longer listed are released
 * (UNEXPOSE: the relay closes that public port; visitors already connected
 * keep their streams), new ones are requested, unchanged ones are left
 * alone. Applies to the live tunnel and to every reconnect. Returns 0,
 * CV_EINVAL (exposures without native mode) or CV_ENOMEM (nothing changed). */
int cv_agent_set_exposures(struct cv_agent *a, const struct cv_agent_expose *x, size_t n);

/* The token for the next handshakes (borrowed; NULL: none). The live
 * tunnel is not affected. */
void cv_agent_set_token(struct cv_agent *a, const char *token);

/* The admin listener's bound port (0 if there is none). */
uint16_t cv_agent_admin_port(const struct cv_agent *a);

/* The tunnel URL with a /t/TOKEN path prefix masked, for log lines. */
const char *cv_agent_log_url(const struct cv_agent *a);

#endif
