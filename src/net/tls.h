/* TLS (OpenSSL 3) on memory BIOs: the engine under wss:// and the relay's
 * TLS listeners. No I/O of its own: the owner feeds ciphertext it read from
 * the socket (cv_tls_feed), takes plaintext out (cv_tls_read), puts
 * plaintext in (cv_tls_write) and writes whatever ciphertext the engine
 * produced (cv_tls_out) to the socket. net/ws.c drives it over a libuv TCP
 * stream.
 *
 * Contexts are created only when TLS is configured or a wss:// URL is
 * dialled: OpenSSL's library and provider initialisation costs a process
 * about 2 MiB of RSS, which a plain relay or agent never pays. */
#ifndef CV_NET_TLS_H
#define CV_NET_TLS_H

#include <stdbool.h>
#include <stddef.h>

struct cv_buf;

struct cv_tls_ctx;
struct cv_tls;

/* A server certificate chain and its private key (PEM files). */
struct cv_tls_cert {
    const char *cert_file; /* borrowed */
    const char *key_file;  /* borrowed */
};

/* A server context with one or more certificates: a ClientHello whose SNI
 * name matches a certificate (X509_check_host: SAN DNS names, wildcards)
 * gets that one, anything else the first. TLS 1.2 and 1.3, forward-secret
 * AEAD ciphers only, no renegotiation. Returns the context, or NULL with
 * err set to "FILE: reason" (unreadable, not PEM, key does not match). */
struct cv_tls_ctx *cv_tls_ctx_new_server(const struct cv_tls_cert *certs, size_t n, char *err,
                                         size_t errlen);
/* A client context: peers are verified against ca_file (PEM bundle), or the
 * system store when ca_file is NULL; insecure turns verification off.
 * Returns NULL with err set when ca_file cannot be loaded. */
struct cv_tls_ctx *cv_tls_ctx_new_client(const char *ca_file, bool insecure, char *err,
                                         size_t errlen);
/* Drops the caller's reference. Contexts are reference-counted: every
 * connection made from one holds it, so a context can be replaced (the
 * relay's certificate reload) and freed by its owner while connections made
 * from it live on; it goes when the last of them is freed. NULL is fine. */
void cv_tls_ctx_free(struct cv_tls_ctx *ctx);
/* True for a client context made with insecure. */
bool cv_tls_ctx_is_insecure(const struct cv_tls_ctx *ctx);

/* The process-wide client context used for wss:// URLs. cv_tls_client_setup
 * configures it (call before the first dial; with a wss:// URL at hand the
 * CLI calls it early so a bad --trust-ca fails at start). Returns 0 or
 * CV_EINVAL with err set. cv_tls_client_default creates it with the system
 * store on first use if nobody set it up; NULL with err on failure.
 * cv_tls_client_cleanup frees it (at exit, so leak checkers stay quiet). */
int cv_tls_client_setup(const char *ca_file, bool insecure, char *err, size_t errlen);
struct cv_tls_ctx *cv_tls_client_default(char *err, size_t errlen);
void cv_tls_client_cleanup(void);

/* A connection; it holds a reference to ctx until cv_tls_free. Client: host is sent as SNI (unless
 * it is an IP literal) and checked against the peer's certificate (DNS name or IP address) unless
 * the context is insecure. Returns NULL when out of memory. */
struct cv_tls *cv_tls_new_client(struct cv_tls_ctx *ctx, const char *host);
struct cv_tls *cv_tls_new_server(struct cv_tls_ctx *ctx);
void cv_tls_free(struct cv_tls *t);

/* Ciphertext from the peer. Returns 0 or CV_ENOMEM. */
int cv_tls_feed(struct cv_tls *t, const void *p, size_t n);
/* Advances the handshake with what was fed. Returns 0 once it is complete,
 * CV_EAGAIN while it needs more input (output may be waiting: cv_take), or
 * CV_EPROTO (reason in cv_tls_error). */
int cv_tls_handshake(struct cv_tls *t);
/* Plaintext into buf (up to cap). Returns bytes (> 0), CV_EAGAIN when no
 * whole record is buffered, UV_EOF after the peer's close_notify, or
 * CV_EPROTO. Only after the handshake. */
int cv_tls_read(struct cv_tls *t, void *buf, size_t cap);
/* Encrypts n bytes (all of them: the write BIO grows). Returns 0 or CV_EPROTO.
 * Only after the handshake. */
int cv_tls_write(struct cv_tls *t, const void *p, size_t n);
/* Input the engine holds and has not returned as plaintext yet: ciphertext
 * fed and not processed, plus decrypted bytes of the current record. */
size_t cv_tls_buffered(const struct cv_tls *t);
/* Ciphertext waiting to be written to the socket (no maximum): the caller
 * consumes what it wrote, or swaps the buffer with an empty one of its own
 * (cv_buf_init(b, SIZE_MAX)). */
struct cv_buf *cv_tls_out(struct cv_tls *t);
/* Queues close_notify (cv_tls_out then has it). Safe to call twice. */
void cv_tls_shutdown(struct cv_tls *t);
/* Why the last call failed, for log lines: "certificate verify failed:
 * REASON", "peer sent alert: REASON", ... (never NULL). */
const char *cv_tls_error(const struct cv_tls *t);
/* The SNI name the client sent (server side), or NULL. */
const char *cv_tls_servername(const struct cv_tls *t);
/* The negotiated protocol version, e.g. "TLSv1.3". */
const char *cv_tls_version(const struct cv_tls *t);

#endif
