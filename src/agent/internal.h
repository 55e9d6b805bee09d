/* Private state of the agent role, shared by agent.c (the reconnect loop
 * and the tunnel) and admin.c (the --admin listener). */
#ifndef CV_AGENT_INTERNAL_H
#define CV_AGENT_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "codec/url.h"
#include "culvert/agent.h"

struct cv_ws;
struct cv_local;
struct cv_http_server;

enum agent_x_state { AGENT_X_PENDING = 0, AGENT_X_EXPOSED, AGENT_X_REFUSED };

/* One --expose and what the relay said about it (state reset on every
 * reconnect). */
struct agent_exposure {
    struct cv_agent_expose e; /* e.name points at name below */
    char name[64];            /* named kinds (http, tls): the DNS label */
    uint32_t num; /* exposure number on the wire (never reused by one agent) */
    enum agent_x_state state;
    uint16_t public_port; /* AGENT_X_EXPOSED */
    char reason[201];     /* AGENT_X_REFUSED: the relay's words */
    char url[256];        /* AGENT_X_EXPOSED, named: where visitors reach it */
};

/* Counters for the admin API and /metrics. */
struct agent_stats {
    uint64_t established_total; /* tunnels that completed their handshake */
    uint64_t failures_total;    /* attempts that failed before that */
    uint64_t streams_total;     /* local connections opened for the relay */
    uint64_t stream_refusals;   /* CONNECTs answered with ERROR */
    uint64_t rx_closed, tx_closed; /* wire bytes of tunnels already closed */
};

struct cv_agent {
    uv_loop_t *loop;        /* borrowed */
    char *url;              /* owned */
    char *log_url;          /* owned: url with a /t/TOKEN prefix masked, for logs */
    struct cv_agent_opts o; /* string fields unused after start */
    struct cv_local *local; /* owned */
    struct cv_ws *ws;       /* owned by the ws layer until its on_close */
    uv_timer_t retry;
    uint32_t attempt;       /* consecutive failed handshakes + the current one */
    bool established;       /* the current WebSocket completed its handshake */
    bool stopping;
    bool native;            /* the current WebSocket negotiated culvert.v1 */
    char relay_host[CV_URL_MAX_HOST];
    enum cv_agent_end end;
    cv_agent_done_cb done;
    void *data;
    struct agent_exposure *xs;     /* owned: the exposures asked for */
    size_t nxs;
    uint32_t next_num;             /* for the next new exposure */
    struct agent_stats stats;
    int64_t started, since;        /* unix times: start, current tunnel up */
    struct cv_http_server *admin;  /* NULL unless o.admin_host */
};

/* admin.c */
int agent_admin_start(struct cv_agent *a);
void agent_admin_stop(struct cv_agent *a);

#endif
