/* The relay role: accepts KohakuRiver agents on /ws/tunnel/{id} and forward
 * sessions on /ws/forward/{id}/{port}?proto=, translating connection ids per
 * session (specs/kohaku-tunnel.md §6). */
#ifndef CV_RELAY_H
#define CV_RELAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct cv_relay;
struct cv_tls_ctx;

struct cv_relay_opts {
    const char *host;          /* listen address (numeric) */
    uint16_t port;             /* 0: ephemeral */
    uint32_t ping_interval_ms; /* WebSocket keepalive to agents and sessions */
    uint32_t pong_timeout_ms;
    bool any_port;             /* allow CONNECT to ports other than the URL's */
    size_t conn_pending;       /* bytes queued per connection toward a session */
    const char *token;         /* shared secret for tokens and JWTs (borrowed) */
    bool allow_anonymous;      /* admit peers without a token */
    const char *public_bind;   /* address for agent-declared public ports */
    uint16_t allow_lo, allow_hi; /* public ports agents may claim; 0-0: any */
    uint32_t handshake_ms;     /* request head within this (default 10 s) */
    double conn_rate;          /* new connections per second per client address (0: off) */
    double conn_burst;         /* ... of which this many at once */
    const char *admin_host;    /* admin listener (JSON API, /metrics); NULL: none */
    uint16_t admin_port;       /* 0: ephemeral */
    const char *domain;        /* BASE of named exposures (NAME.BASE); NULL: none */
    const char *http_host;     /* HTTP virtual-host listener; needs domain */
    uint16_t http_port;        /* 0: ephemeral */
    const char *https_host;    /* HTTPS virtual-host listener (needs domain and tls); NULL: none */
    uint16_t https_port;       /* 0: ephemeral */
    struct cv_tls_ctx *tls;    /* borrowed: certificates of the listener (which then speaks
                                * TLS: wss://) and of https_host; NULL: plain */
    const char *tls_listen_host; /* SNI router for `tls` names (passed through); NULL: none */
    uint16_t tls_listen_port;    /* 0: ephemeral */
};

/* Fills opts with the defaults (127.0.0.1:8001, 20 s / 20 s, URL port only,
 * 8 MiB, no token, anonymous refused, public ports on 127.0.0.1, any port,
 * 10 s handshakes, 20 connections/s per address with bursts of 200). */
void cv_relay_opts_default(struct cv_relay_opts *opts);

/* Starts listening. Returns 0, CV_EINVAL for a bad address or for no token
 * without allow_anonymous, or a libuv error such as UV_EADDRINUSE. */
int cv_relay_start(uv_loop_t *loop, const struct cv_relay_opts *opts, struct cv_relay **out);
/* Applies a new configuration's auth keys and limits (token,
 * allow_anonymous, allow_lo/hi, any_port, conn_pending, handshake_ms,
 * conn_rate/burst) to connections from now on; live tunnels, sessions and
 * exposures are untouched. Strings are borrowed from then on. Returns 0,
 * or CV_EINVAL (no token without allow_anonymous; bad limits) with nothing
 * changed. */
int cv_relay_reload(struct cv_relay *r, const struct cv_relay_opts *opts);
/* Replaces the server certificates (a reload): connections accepted from
 * now on use tls, live ones keep the context they were made with (contexts
 * are reference-counted). tls is borrowed like opts.tls; the caller may free
 * the old one after this call. Returns 0, or CV_EINVAL if the relay was
 * started without TLS (a listener cannot start speaking it) or tls is NULL. */
int cv_relay_set_tls(struct cv_relay *r, struct cv_tls_ctx *tls);
/* The bound port. */
uint16_t cv_relay_port(const struct cv_relay *r);
/* The admin listener's bound port (0 if there is none). */
uint16_t cv_relay_admin_port(const struct cv_relay *r);
/* The HTTP virtual-host listener's bound port (0 if there is none). */
uint16_t cv_relay_http_port(const struct cv_relay *r);
/* The HTTPS virtual-host listener's bound port (0 if there is none). */
uint16_t cv_relay_https_port(const struct cv_relay *r);
/* The SNI router's bound port (0 if there is none). */
uint16_t cv_relay_tls_port(const struct cv_relay *r);
/* Stops listening and closes every tunnel and session; r is freed once they
 * are gone (the loop must keep running until then). */
void cv_relay_stop(struct cv_relay *r);

#endif
