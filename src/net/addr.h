/* Socket address helpers. */
#ifndef CV_ADDR_H
#define CV_ADDR_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

#define CV_ADDR_STRLEN 64

/* Parses "HOST:PORT" or "[V6]:PORT" with a numeric host into out.
 * Returns 0 or CV_EINVAL. */
int cv_addr_parse(const char *s, struct sockaddr_storage *out);
/* Splits "HOST:PORT" / "[V6]:PORT" (numeric host) into host (no brackets,
 * NUL-terminated) and port. Returns 0 or CV_EINVAL. */
int cv_addr_split(const char *s, char *host, size_t hostlen, uint16_t *port);
/* Parses a numeric host and a port into out. Returns 0 or CV_EINVAL. */
int cv_addr_from(const char *host, uint16_t port, struct sockaddr_storage *out);
/* Formats an address as "ip:port" ("[v6]:port"). Returns buf. */
const char *cv_addr_str(const struct sockaddr *sa, char *buf, size_t len);
/* Returns the port of an IPv4/IPv6 address (host order). */
uint16_t cv_addr_port(const struct sockaddr *sa);
/* Parses a decimal port 0..65535. Returns 0 or CV_EINVAL. */
int cv_port_parse(const char *s, uint16_t *out);

/* Initializes tcp on loop, binds it to sa and listens with backlog; cb gets
 * the connections (never synchronously). bound, if not NULL, receives the
 * address actually bound (port 0 picks one); it may be the storage sa points
 * into. Returns 0 or a libuv error code. tcp is initialized on every return,
 * failures included: the caller closes it with uv_close. */
int cv_tcp_listen(uv_loop_t *loop, uv_tcp_t *tcp, const struct sockaddr *sa, int backlog,
                  uv_connection_cb cb, struct sockaddr_storage *bound);

#endif
