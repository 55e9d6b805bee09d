/* HTTP virtual hosts: which name a request is for, and the head the relay
 * forwards for it (docs/PROTOCOL.md §6). Pure: no I/O.
 *
 * Routing: an absolute-form target (http://HOST[:PORT]/...) wins over the
 * Host header (RFC 9112 §3.2.2); otherwise exactly one Host header is
 * required. The port and a trailing dot are ignored, letters compare
 * case-insensitively, and HOST must be NAME.BASE with NAME one label.
 *
 * Rewriting keeps every byte of the head except: X-Forwarded-Proto and
 * X-Forwarded-Host lines are dropped (a visitor could forge them), ", IP"
 * is appended to the last X-Forwarded-For line (or such a line is added),
 * and `X-Forwarded-Proto: http` (or https: the visitor's scheme) and
 * `X-Forwarded-Host: HOST` (the Host header as sent) are added at the end. */
#ifndef CV_VHOST_H
#define CV_VHOST_H

#include <stddef.h>

#include "codec/http.h"

enum cv_vhost_route {
    CV_VHOST_NAME = 0,    /* *name is NAME (lowercase not guaranteed) */
    CV_VHOST_UNKNOWN = 1, /* the host is not NAME.BASE: *name is the host */
    CV_VHOST_BAD = 2      /* no Host, several Host headers, or a bad target */
};

/* Finds the name h is for under base (no leading or trailing dot). *name
 * and *len are a slice of the head (for CV_VHOST_UNKNOWN, the host without
 * its port, for error pages). */
enum cv_vhost_route cv_vhost_route(const struct cv_http_head *h, const char *base,
                                   const char **name, size_t *len);

/* Room cv_vhost_rewrite may need for a head of head_len bytes. */
#define CV_VHOST_REWRITE_MAX(head_len) (2 * (head_len) + 256)

/* Writes the forwarded form of the request head head[0..head_len) (parsed
 * into h) into out, for a visitor at client_ip (text, no port) that spoke
 * scheme proto ("http" or "https", at most 8 bytes). Returns the length, or
 * 0 if it does not fit in cap. */
size_t cv_vhost_rewrite(const char *head, size_t head_len, const struct cv_http_head *h,
                        const char *client_ip, const char *proto, char *out, size_t cap);

#endif
