/* HTTP virtual hosts on the relay (--domain BASE --http-listen HOST:PORT):
 * being written; until then no FRONT_HTTP conn exists and the hooks below
 * are never reached. */
#include "relay/internal.h"

int vhost_start(struct cv_relay *r)
{
    (void)r;
    return 0;
}

void vhost_stop(struct cv_relay *r) { (void)r; }

bool vhost_write(struct conn *c, const uint8_t *p, size_t n)
{
    (void)c, (void)p, (void)n;
    return false;
}

void vhost_detach(struct conn *c) { (void)c; }

void vhost_error(struct conn *c, const uint8_t *p, size_t n) { (void)c, (void)p, (void)n; }

void vhosts_resume(struct tunnel *t) { (void)t; }
