/* The server name (SNI, RFC 6066 §3) of a TLS ClientHello, read from the
 * first bytes of a connection without terminating TLS: the relay's SNI
 * router peeks at it to pick a `tls:` exposure and then passes every byte
 * on untouched. Pure: no I/O.
 *
 * Stateless and resumable by re-calling: the caller keeps the bytes that
 * arrived and calls again with more (a ClientHello is a few hundred bytes;
 * CV_SNI_MAX_HELLO caps what a peer can make us hold). The handshake message
 * may span several TLS records (post-quantum key shares make it large); it
 * is reassembled into a buffer on the stack. */
#ifndef CV_SNI_H
#define CV_SNI_H

#include <stddef.h>
#include <stdint.h>

/* Largest ClientHello handshake message accepted (bytes, header included). */
#define CV_SNI_MAX_HELLO 16384
/* Largest host name (RFC 1035 §2.3.4: 255 octets, no trailing dot). */
#define CV_SNI_NAME_MAX 255

/* Parses p[0..n), the start of a client's TLS stream. On success the host
 * name goes to name (NUL-terminated, lower-cased, a trailing dot dropped;
 * at least CV_SNI_NAME_MAX + 1 bytes) and *name_len is its length, 0 when
 * the ClientHello carries no host_name. Returns 0, CV_EAGAIN if the
 * ClientHello is not complete yet (call again with more bytes), CV_EPROTO
 * if the bytes are not a TLS ClientHello (wrong record type or version,
 * bad lengths, a host name with characters outside letters, digits, '-',
 * '_' and '.'), or CV_ETOOBIG past CV_SNI_MAX_HELLO. */
int cv_sni_parse(const uint8_t *p, size_t n, char *name, size_t *name_len);

#endif
