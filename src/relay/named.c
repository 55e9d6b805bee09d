/* Named exposures (docs/PROTOCOL.md §6): an agent claims NAME for its
 * local port, of kind http (routed by Host on the virtual-host front door,
 * vhost.c) or tls (routed by SNI). The registry is a list: it is searched
 * once per visitor connection, not per byte.
 *
 * A name is held by one tunnel at a time. When the tunnel ends its names
 * stay as "gone" entries (at most NAMES_GONE_MAX, oldest dropped first) so
 * a visitor gets a 502 saying the agent left, not a 404; a new claim takes
 * a gone entry over. A claim for a name that the same agent id still holds
 * on an older, replaced registration also takes it over (the newest
 * registration wins, as for forward sessions). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "codec/kohaku.h"
#include "core/limits.h"
#include "core/log.h"
#include "relay/internal.h"

#define NAMES_GONE_MAX 1024

static const char *kind_name(uint8_t kind) { return kind == CV_KH_TLS ? "tls" : "http"; }

struct named *relay_find_name(struct cv_relay *r, uint8_t kind, const char *name, size_t len)
{
    if (len == 0 || len > CV_KH_NAME_MAX)
        return NULL;
    for (struct named *n = r->names; n; n = n->next)
        if (n->kind == kind && strncasecmp(n->name, name, len) == 0 && n->name[len] == 0)
            return n;
    return NULL;
}

static void unlink_name(struct cv_relay *r, struct named *x)
{
    for (struct named **pp = &r->names; *pp; pp = &(*pp)->next) {
        if (*pp == x) {
            *pp = x->next;
            break;
        }
    }
    if (x->t == NULL)
        r->names_gone--;
    free(x);
}

static void reply(struct tunnel *t, uint8_t kind, uint32_t num, uint16_t port, const char *text)
{
    uint8_t hdr[CV_KH_HDR_LEN];
    if (port == 0)
        t->r->stats.expose_refusals++;
    cv_kh_encode(hdr, CV_KH_EXPOSED, kind, num, port);
    cv_ws_send2(t->ws, CV_WS_BINARY, hdr, sizeof hdr, text, strlen(text));
}

/* The front door serving kind, and the address visitors use. */
static uint16_t front_port(struct cv_relay *r, uint8_t kind)
{
    if (kind != CV_KH_HTTP)
        return r->tls_front_port;
    /* The plain door when there is one, else the HTTPS one. */
    return cv_relay_http_port(r) ? cv_relay_http_port(r) : cv_relay_https_port(r);
}

static void format_url(struct cv_relay *r, uint8_t kind, const char *name, char *out, size_t cap)
{
    uint16_t port = front_port(r, kind);
    bool tls = kind == CV_KH_HTTP && cv_relay_http_port(r) == 0;
    if (kind == CV_KH_HTTP && port == (tls ? 443 : 80))
        snprintf(out, cap, "%s://%s.%s/", tls ? "https" : "http", name, r->opts.domain);
    else if (kind == CV_KH_HTTP)
        snprintf(out, cap, "%s://%s.%s:%u/", tls ? "https" : "http", name, r->opts.domain, port);
    else
        snprintf(out, cap, "%s.%s:%u", name, r->opts.domain, port);
}

void named_url(struct cv_relay *r, const struct named *n, char *out, size_t cap)
{
    format_url(r, n->kind, n->name, out, cap);
}

void named_request(struct tunnel *t, const struct cv_kh_msg *m)
{
    struct cv_relay *r = t->r;
    const char *kn = kind_name(m->proto);
    if (m->len < 3 || !cv_kh_name_valid((const char *)m->payload + 2, m->len - 2)) {
        reply(t, m->proto, m->id, 0,
              m->len < 3 ? "malformed EXPOSE"
                         : "invalid name: one DNS label of a-z, 0-9 and '-' (1-63, no '-' at "
                           "either end)");
        return;
    }
    uint16_t local = (uint16_t)(m->payload[0] << 8 | m->payload[1]);
    char name[CV_KH_NAME_MAX + 1];
    memcpy(name, m->payload + 2, m->len - 2);
    name[m->len - 2] = 0;
    const char *why = NULL;
    if (local == 0)
        why = "malformed EXPOSE";
    else if (r->opts.domain == NULL || front_port(r, m->proto) == 0)
        why = m->proto == CV_KH_HTTP ? "this relay serves no HTTP virtual hosts (no --domain)"
                                     : "this relay routes no tls names";
    for (struct named *n = t->r->names; n && !why; n = n->next)
        if (n->t == t && n->num == m->id)
            why = "duplicate exposure number";
    struct named *old = why ? NULL : relay_find_name(r, m->proto, name, strlen(name));
    static char buf[RELAY_MAX_ID + 64];
    if (old && old->t && !(strcmp(old->t->id, t->id) == 0 && !old->t->current && old->t != t)) {
        snprintf(buf, sizeof buf, "name in use by agent %s", old->t->id);
        why = buf;
    }
    if (why) {
        cv_log_warn("agent %s: expose %s:%u:%s refused: %s", t->id, kn, local, name, why);
        reply(t, m->proto, m->id, 0, why);
        return;
    }
    if (old)
        unlink_name(r, old);
    struct named *n = calloc(1, sizeof *n);
    if (n == NULL) {
        reply(t, m->proto, m->id, 0, "out of memory");
        return;
    }
    n->t = t;
    n->kind = m->proto;
    n->local_port = local;
    n->num = m->id;
    n->since = (int64_t)time(NULL);
    snprintf(n->agent, sizeof n->agent, "%s", t->id);
    memcpy(n->name, name, sizeof name);
    n->next = r->names;
    r->names = n;
    char url[CV_KH_NAME_MAX + 512];
    format_url(r, n->kind, name, url, sizeof url);
    cv_log_info("agent %s: exposes %s %s -> its 127.0.0.1:%u", t->id, kn, url, local);
    reply(t, n->kind, n->num, front_port(r, n->kind), url);
}

bool name_release(struct tunnel *t, uint32_t num)
{
    struct cv_relay *r = t->r;
    for (struct named *n = r->names; n; n = n->next) {
        if (n->t != t || n->num != num)
            continue;
        /* Kept as gone (like a tunnel end), not freed: vhost visitors
         * already routed to it may still refer to it. */
        cv_log_info("agent %s: releases %s name %s", t->id, kind_name(n->kind), n->name);
        n->t = NULL;
        n->gone = (int64_t)time(NULL);
        r->names_gone++;
        return true;
    }
    return false;
}

void names_release(struct tunnel *t)
{
    struct cv_relay *r = t->r;
    for (struct named *n = r->names; n; n = n->next) {
        if (n->t != t)
            continue;
        cv_log_info("agent %s: releases %s name %s", t->id, kind_name(n->kind), n->name);
        n->t = NULL;
        n->gone = (int64_t)time(NULL);
        r->names_gone++;
    }
    while (r->names_gone > NAMES_GONE_MAX) {
        struct named *oldest = NULL;
        for (struct named *n = r->names; n; n = n->next)
            if (n->t == NULL && (oldest == NULL || n->gone <= oldest->gone))
                oldest = n;
        unlink_name(r, oldest);
    }
}

void names_free(struct cv_relay *r)
{
    while (r->names) {
        struct named *n = r->names;
        r->names = n->next;
        free(n);
    }
    r->names_gone = 0;
}

void names_each(struct tunnel *t, void (*fn)(void *ud, const struct named *n), void *ud)
{
    for (struct named *n = t->r->names; n; n = n->next)
        if (n->t == t)
            fn(ud, n);
}

struct conn *named_connect(struct named *n, uint8_t kind)
{
    struct tunnel *t = n->t;
    if (t == NULL || t->conns.count >= CV_LIMIT_NATIVE_CONNS)
        return NULL;
    struct conn *c = conn_new(t, kind, CV_KH_TCP);
    if (c == NULL)
        return NULL;
    uint8_t hdr[CV_KH_HDR_LEN];
    cv_kh_encode(hdr, CV_KH_CONNECT, CV_KH_TCP, c->tid, n->local_port);
    if (cv_ws_send(t->ws, CV_WS_BINARY, hdr, sizeof hdr) != 0) {
        conn_free(c);
        return NULL;
    }
    return c;
}
