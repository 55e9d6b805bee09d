/* TLS on memory BIOs. See net/tls.h.
 *
 * Each connection is an SSL with two BIO_s_mem: the read BIO holds
 * ciphertext fed from the socket, the write BIO collects what OpenSSL wants
 * sent. A server context with several certificates is one SSL_CTX per
 * certificate; the servername callback moves the connection to the one
 * whose certificate matches the SNI name before the certificate is chosen. */
#include "net/tls.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <uv.h>

#include "core/buf.h"
#include "core/err.h"
#include "net/addr.h"

/* OpenSSL's libssl (and its libcrypto) are loaded with dlopen the first
 * time a TLS context is made, never at start: linked in, even statically,
 * their relocations and the code pages around ours cost every process
 * ~1.4 MiB of RSS (measured: a plain relay idled at 3.8 MiB instead of
 * 2.4). Every OpenSSL function used here goes through a pointer filled by
 * tls_load; the macros below route the calls (the headers' own macros, such
 * as SSL_CTX_set_mode, expand to these functions and follow). */
#define OSSL_FUNCS(X)                                                                              \
    X(BIO_ctrl)                                                                                    \
    X(BIO_ctrl_pending)                                                                            \
    X(BIO_free)                                                                                    \
    X(BIO_new)                                                                                     \
    X(BIO_read)                                                                                    \
    X(BIO_s_mem)                                                                                   \
    X(BIO_write)                                                                                   \
    X(BIO_meth_new)                                                                                \
    X(BIO_meth_set_write)                                                                          \
    X(BIO_meth_set_ctrl)                                                                           \
    X(BIO_set_data)                                                                                \
    X(BIO_get_data)                                                                                \
    X(BIO_set_init)                                                                                \
    X(ERR_clear_error)                                                                             \
    X(ERR_error_string_n)                                                                          \
    X(ERR_peek_last_error)                                                                         \
    X(ERR_reason_error_string)                                                                     \
    X(SSL_CTX_callback_ctrl)                                                                       \
    X(SSL_CTX_check_private_key)                                                                   \
    X(SSL_CTX_ctrl)                                                                                \
    X(SSL_CTX_free)                                                                                \
    X(SSL_CTX_get0_certificate)                                                                    \
    X(SSL_CTX_load_verify_locations)                                                               \
    X(SSL_CTX_new)                                                                                 \
    X(SSL_CTX_set_cipher_list)                                                                     \
    X(SSL_CTX_set_default_verify_paths)                                                            \
    X(SSL_CTX_set_options)                                                                         \
    X(SSL_CTX_set_verify)                                                                          \
    X(SSL_CTX_use_PrivateKey_file)                                                                 \
    X(SSL_CTX_use_certificate_chain_file)                                                          \
    X(SSL_ctrl)                                                                                    \
    X(SSL_do_handshake)                                                                            \
    X(SSL_free)                                                                                    \
    X(SSL_get0_param)                                                                              \
    X(SSL_get_error)                                                                               \
    X(SSL_get_servername)                                                                          \
    X(SSL_get_verify_result)                                                                       \
    X(SSL_get_version)                                                                             \
    X(SSL_is_init_finished)                                                                        \
    X(SSL_new)                                                                                     \
    X(SSL_pending)                                                                                 \
    X(SSL_read)                                                                                    \
    X(SSL_set1_host)                                                                               \
    X(SSL_set_SSL_CTX)                                                                             \
    X(SSL_set_accept_state)                                                                        \
    X(SSL_set_bio)                                                                                 \
    X(SSL_set_connect_state)                                                                       \
    X(SSL_shutdown)                                                                                \
    X(SSL_write)                                                                                   \
    X(TLS_client_method)                                                                           \
    X(TLS_server_method)                                                                           \
    X(X509_VERIFY_PARAM_set1_ip_asc)                                                               \
    X(X509_check_host)                                                                             \
    X(X509_verify_cert_error_string)

#define DECLARE(f) static __typeof__(f) *p_##f;
OSSL_FUNCS(DECLARE)
#undef DECLARE

#define BIO_ctrl (*p_BIO_ctrl)
#define BIO_ctrl_pending (*p_BIO_ctrl_pending)
#define BIO_free (*p_BIO_free)
#define BIO_new (*p_BIO_new)
#define BIO_read (*p_BIO_read)
#define BIO_s_mem (*p_BIO_s_mem)
#define BIO_write (*p_BIO_write)
#define BIO_meth_new (*p_BIO_meth_new)
#define BIO_meth_set_write (*p_BIO_meth_set_write)
#define BIO_meth_set_ctrl (*p_BIO_meth_set_ctrl)
#define BIO_set_data (*p_BIO_set_data)
#define BIO_get_data (*p_BIO_get_data)
#define BIO_set_init (*p_BIO_set_init)
#define ERR_clear_error (*p_ERR_clear_error)
#define ERR_error_string_n (*p_ERR_error_string_n)
#define ERR_peek_last_error (*p_ERR_peek_last_error)
#define ERR_reason_error_string (*p_ERR_reason_error_string)
#define SSL_CTX_callback_ctrl (*p_SSL_CTX_callback_ctrl)
#define SSL_CTX_check_private_key (*p_SSL_CTX_check_private_key)
#define SSL_CTX_ctrl (*p_SSL_CTX_ctrl)
#define SSL_CTX_free (*p_SSL_CTX_free)
#define SSL_CTX_get0_certificate (*p_SSL_CTX_get0_certificate)
#define SSL_CTX_load_verify_locations (*p_SSL_CTX_load_verify_locations)
#define SSL_CTX_new (*p_SSL_CTX_new)
#define SSL_CTX_set_cipher_list (*p_SSL_CTX_set_cipher_list)
#define SSL_CTX_set_default_verify_paths (*p_SSL_CTX_set_default_verify_paths)
#define SSL_CTX_set_options (*p_SSL_CTX_set_options)
#define SSL_CTX_set_verify (*p_SSL_CTX_set_verify)
#define SSL_CTX_use_PrivateKey_file (*p_SSL_CTX_use_PrivateKey_file)
#define SSL_CTX_use_certificate_chain_file (*p_SSL_CTX_use_certificate_chain_file)
#define SSL_ctrl (*p_SSL_ctrl)
#define SSL_do_handshake (*p_SSL_do_handshake)
#define SSL_free (*p_SSL_free)
#define SSL_get0_param (*p_SSL_get0_param)
#define SSL_get_error (*p_SSL_get_error)
#define SSL_get_servername (*p_SSL_get_servername)
#define SSL_get_verify_result (*p_SSL_get_verify_result)
#define SSL_get_version (*p_SSL_get_version)
#define SSL_is_init_finished (*p_SSL_is_init_finished)
#define SSL_new (*p_SSL_new)
#define SSL_read (*p_SSL_read)
#define SSL_set1_host (*p_SSL_set1_host)
#define SSL_set_SSL_CTX (*p_SSL_set_SSL_CTX)
#define SSL_set_accept_state (*p_SSL_set_accept_state)
#define SSL_set_bio (*p_SSL_set_bio)
#define SSL_set_connect_state (*p_SSL_set_connect_state)
#define SSL_shutdown (*p_SSL_shutdown)
#define SSL_write (*p_SSL_write)
#define TLS_client_method (*p_TLS_client_method)
#define TLS_server_method (*p_TLS_server_method)
#define X509_VERIFY_PARAM_set1_ip_asc (*p_X509_VERIFY_PARAM_set1_ip_asc)
#define X509_check_host (*p_X509_check_host)
#define X509_verify_cert_error_string (*p_X509_verify_cert_error_string)

static void *libssl; /* dlopen handle, kept for the life of the process */
static BIO_METHOD *out_method; /* owned, for the life of the process */
static int out_write(BIO *b, const char *p, int n);
static long out_ctrl(BIO *b, int cmd, long num, void *ptr);

/* Loads libssl and resolves every function above. Returns 0 or CV_EINVAL
 * with err set. */
static int tls_load(char *err, size_t errlen)
{
    if (libssl != NULL)
        return 0;
    static const char *const names[] = {"libssl.so.3", "libssl.so"};
    void *h = NULL;
    for (size_t i = 0; i < sizeof names / sizeof names[0] && h == NULL; i++)
        h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        snprintf(err, errlen, "TLS needs OpenSSL 3's libssl.so.3: %s", dlerror());
        return CV_EINVAL;
    }
#define RESOLVE(f)                                                                                 \
    if ((p_##f = (__typeof__(p_##f))dlsym(h, #f)) == NULL) {                                       \
        snprintf(err, errlen, "libssl.so.3 lacks %s (OpenSSL 3 needed)", #f);                      \
        dlclose(h);                                                                                \
        return CV_EINVAL;                                                                          \
    }
    OSSL_FUNCS(RESOLVE)
#undef RESOLVE
    out_method = BIO_meth_new(BIO_TYPE_SOURCE_SINK, "culvert-out");
    if (out_method == NULL || BIO_meth_set_write(out_method, out_write) != 1 ||
        BIO_meth_set_ctrl(out_method, out_ctrl) != 1) {
        snprintf(err, errlen, "cannot set up a TLS output BIO");
        return CV_EINVAL;
    }
    libssl = h;
    return 0;
}

struct cv_tls_ctx {
    SSL_CTX **ctx; /* owned: one per certificate (servers), or one */
    X509 **leaf;   /* borrowed from ctx[i]: for SNI matching */
    size_t n;
    int refs; /* the creator's, plus one per connection made from it */
    bool server, insecure;
};

struct cv_tls {
    SSL *ssl;               /* owned */
    BIO *rbio;              /* owned by ssl */
    BIO *wbio;              /* owned by ssl: appends to out */
    struct cv_buf out;      /* ciphertext for the socket */
    struct cv_tls_ctx *ctx; /* a counted reference */
    bool shut;
    char err[200];
};

static struct cv_tls_ctx *client_ctx; /* owned: cv_tls_client_* */

/* The write BIO: records go straight into t->out, one copy (a memory BIO
 * would zero its buffer as it grows, copy in, and copy out again). */
static int out_write(BIO *b, const char *p, int n)
{
    struct cv_tls *t = BIO_get_data(b);
    return n >= 0 && cv_buf_append(&t->out, p, (size_t)n) == 0 ? n : -1;
}

static long out_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b, (void)num, (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

/* Server-side AEAD suites with forward secrecy for TLS 1.2; TLS 1.3 keeps
 * OpenSSL's defaults (all of them qualify). */
#define SERVER_CIPHERS                                                                             \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"     \
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

/* The reason of OpenSSL's most recent queued error, then clears the queue. */
static void ossl_reason(char *buf, size_t len, const char *fallback)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    if (r != NULL)
        snprintf(buf, len, "%s", r);
    else if (e)
        ERR_error_string_n(e, buf, len);
    else
        snprintf(buf, len, "%s", fallback);
    ERR_clear_error();
}

/* ---- contexts ----------------------------------------------------------- */

void cv_tls_ctx_free(struct cv_tls_ctx *c)
{
    if (c == NULL || --c->refs > 0)
        return;
    for (size_t i = 0; i < c->n; i++)
        SSL_CTX_free(c->ctx[i]);
    free(c->ctx);
    free(c->leaf);
    free(c);
}

bool cv_tls_ctx_is_insecure(const struct cv_tls_ctx *c)
{
    return c->insecure;
}

static struct cv_tls_ctx *ctx_alloc(size_t n, bool server)
{
    struct cv_tls_ctx *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->ctx = calloc(n, sizeof *c->ctx);
    c->leaf = calloc(n, sizeof *c->leaf);
    if (c->ctx == NULL || c->leaf == NULL) {
        free(c->ctx);
        free(c->leaf);
        free(c);
        return NULL;
    }
    c->server = server;
    c->refs = 1;
    return c;
}

static SSL_CTX *base_ctx(bool server)
{
    SSL_CTX *s = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    if (s == NULL)
        return NULL;
    SSL_CTX_set_min_proto_version(s, TLS1_2_VERSION);
    /* Idle connections (agents waiting for work) hold no record buffers. */
    SSL_CTX_set_mode(s, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_options(s, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    if (server) {
        SSL_CTX_set_options(s, SSL_OP_CIPHER_SERVER_PREFERENCE);
        SSL_CTX_set_cipher_list(s, SERVER_CIPHERS);
    }
    return s;
}

/* Moves a connection to the certificate that matches its SNI name. */
static int on_servername(SSL *ssl, int *alert, void *arg)
{
    (void)alert;
    struct cv_tls_ctx *c = arg;
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (name == NULL || c->n < 2)
        return SSL_TLSEXT_ERR_OK;
    for (size_t i = 0; i < c->n; i++) {
        if (X509_check_host(c->leaf[i], name, strlen(name), 0, NULL) == 1) {
            if (i > 0)
                SSL_set_SSL_CTX(ssl, c->ctx[i]);
            return SSL_TLSEXT_ERR_OK;
        }
    }
    return SSL_TLSEXT_ERR_OK; /* the default certificate */
}

/* A file that cannot be opened is explained by errno, not by OpenSSL's
 * "system lib". */
static int readable(const char *path, const char *what, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        snprintf(err, errlen, "%s: cannot load %s: %s", path, what, strerror(errno));
        return CV_EINVAL;
    }
    fclose(f);
    return 0;
}

/* OpenSSL's reason, with "PEM lib" and friends said plainly. */
static void pem_reason(char *why, size_t len, const char *fallback)
{
    unsigned long e = ERR_peek_last_error();
    if (ERR_GET_LIB(e) == ERR_LIB_PEM || ERR_GET_REASON(e) == ERR_R_PEM_LIB) {
        snprintf(why, len, "not a PEM file, or a malformed one");
        ERR_clear_error();
        return;
    }
    ossl_reason(why, len, fallback);
}

static int load_pair(struct cv_tls_ctx *c, size_t i, const struct cv_tls_cert *p, char *err,
                     size_t errlen)
{
    char why[160];
    SSL_CTX *s = base_ctx(true);
    if (s == NULL) {
        ossl_reason(why, sizeof why, "cannot create a TLS context");
        snprintf(err, errlen, "%s", why);
        return CV_ENOMEM;
    }
    c->ctx[i] = s;
    if (readable(p->cert_file, "certificate", err, errlen) != 0 ||
        readable(p->key_file, "private key", err, errlen) != 0)
        return CV_EINVAL;
    if (SSL_CTX_use_certificate_chain_file(s, p->cert_file) != 1) {
        pem_reason(why, sizeof why, "cannot read the certificate");
        snprintf(err, errlen, "%s: cannot load certificate: %s", p->cert_file, why);
        return CV_EINVAL;
    }
    if (SSL_CTX_use_PrivateKey_file(s, p->key_file, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(s) != 1) {
        if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH ||
            ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_TYPE_MISMATCH) {
            ERR_clear_error();
            snprintf(err, errlen, "%s: private key does not match certificate %s", p->key_file,
                     p->cert_file);
            return CV_EINVAL;
        }
        pem_reason(why, sizeof why, "cannot read the key");
        snprintf(err, errlen, "%s: cannot load private key: %s", p->key_file, why);
        return CV_EINVAL;
    }
    c->leaf[i] = SSL_CTX_get0_certificate(s);
    SSL_CTX_set_tlsext_servername_callback(s, on_servername);
    SSL_CTX_set_tlsext_servername_arg(s, c);
    return 0;
}

struct cv_tls_ctx *cv_tls_ctx_new_server(const struct cv_tls_cert *certs, size_t n, char *err,
                                         size_t errlen)
{
    if (n == 0) {
        snprintf(err, errlen, "no certificate given");
        return NULL;
    }
    if (tls_load(err, errlen) != 0)
        return NULL;
    struct cv_tls_ctx *c = ctx_alloc(n, true);
    if (c == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        c->n = i + 1;
        if (load_pair(c, i, &certs[i], err, errlen) != 0) {
            cv_tls_ctx_free(c);
            return NULL;
        }
    }
    return c;
}

struct cv_tls_ctx *cv_tls_ctx_new_client(const char *ca_file, bool insecure, char *err,
                                         size_t errlen)
{
    if (tls_load(err, errlen) != 0)
        return NULL;
    struct cv_tls_ctx *c = ctx_alloc(1, false);
    if (c == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    c->n = 1;
    c->insecure = insecure;
    char why[160];
    SSL_CTX *s = c->ctx[0] = base_ctx(false);
    if (s == NULL) {
        ossl_reason(why, sizeof why, "cannot create a TLS context");
        snprintf(err, errlen, "%s", why);
        cv_tls_ctx_free(c);
        return NULL;
    }
    if (insecure) {
        SSL_CTX_set_verify(s, SSL_VERIFY_NONE, NULL);
        return c;
    }
    SSL_CTX_set_verify(s, SSL_VERIFY_PEER, NULL);
    if (ca_file != NULL && readable(ca_file, "CA certificates", err, errlen) != 0) {
        cv_tls_ctx_free(c);
        return NULL;
    }
    int ok = ca_file ? SSL_CTX_load_verify_locations(s, ca_file, NULL)
                     : SSL_CTX_set_default_verify_paths(s);
    if (ok != 1) {
        pem_reason(why, sizeof why, "unreadable");
        snprintf(err, errlen, "%s: cannot load CA certificates: %s",
                 ca_file ? ca_file : "system store", why);
        cv_tls_ctx_free(c);
        return NULL;
    }
    return c;
}

int cv_tls_client_setup(const char *ca_file, bool insecure, char *err, size_t errlen)
{
    struct cv_tls_ctx *c = cv_tls_ctx_new_client(ca_file, insecure, err, errlen);
    if (c == NULL)
        return CV_EINVAL;
    cv_tls_ctx_free(client_ctx);
    client_ctx = c;
    return 0;
}

struct cv_tls_ctx *cv_tls_client_default(char *err, size_t errlen)
{
    if (client_ctx == NULL)
        client_ctx = cv_tls_ctx_new_client(NULL, false, err, errlen);
    return client_ctx;
}

void cv_tls_client_cleanup(void)
{
    cv_tls_ctx_free(client_ctx);
    client_ctx = NULL;
}

/* ---- connections -------------------------------------------------------- */

static struct cv_tls *conn_new(struct cv_tls_ctx *ctx, bool server)
{
    struct cv_tls *t = calloc(1, sizeof *t);
    if (t == NULL)
        return NULL;
    t->ssl = SSL_new(ctx->ctx[0]);
    t->rbio = BIO_new(BIO_s_mem());
    t->wbio = BIO_new(out_method);
    if (t->ssl == NULL || t->rbio == NULL || t->wbio == NULL) {
        SSL_free(t->ssl);
        BIO_free(t->rbio);
        BIO_free(t->wbio);
        free(t);
        ERR_clear_error();
        return NULL;
    }
    /* An empty read BIO means "wait for more", not end of file. */
    BIO_set_mem_eof_return(t->rbio, -1);
    t->ctx = ctx;
    ctx->refs++; /* the servername callback and ctx->insecure outlive a reload */
    cv_buf_init(&t->out, SIZE_MAX);
    BIO_set_data(t->wbio, t);
    BIO_set_init(t->wbio, 1);
    SSL_set_bio(t->ssl, t->rbio, t->wbio);
    if (server)
        SSL_set_accept_state(t->ssl);
    else
        SSL_set_connect_state(t->ssl);
    return t;
}

struct cv_tls *cv_tls_new_server(struct cv_tls_ctx *ctx)
{
    return conn_new(ctx, true);
}

struct cv_tls *cv_tls_new_client(struct cv_tls_ctx *ctx, const char *host)
{
    struct cv_tls *t = conn_new(ctx, false);
    if (t == NULL)
        return NULL;
    struct sockaddr_storage ss;
    bool ip = cv_addr_from(host, 0, &ss) == 0;
    /* RFC 6066: SNI carries host names only, never address literals. */
    if (!ip)
        SSL_set_tlsext_host_name(t->ssl, host);
    if (!ctx->insecure) {
        int ok = ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), host)
                    : SSL_set1_host(t->ssl, host);
        if (ok != 1) {
            cv_tls_free(t);
            ERR_clear_error();
            return NULL;
        }
    }
    return t;
}

void cv_tls_free(struct cv_tls *t)
{
    if (t == NULL)
        return;
    SSL_free(t->ssl); /* frees both BIOs */
    cv_buf_fini(&t->out);
    cv_tls_ctx_free(t->ctx);
    free(t);
}

int cv_tls_feed(struct cv_tls *t, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    if (n > (size_t)INT32_MAX || BIO_write(t->rbio, p, (int)n) != (int)n)
        return CV_ENOMEM;
    return 0;
}

/* Explains a failed SSL call in t->err. Returns CV_EAGAIN for WANT_READ,
 * UV_EOF for a clean close_notify, else CV_EPROTO. */
static int failed(struct cv_tls *t, int ret)
{
    int e = SSL_get_error(t->ssl, ret);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        ERR_clear_error();
        return CV_EAGAIN;
    }
    if (e == SSL_ERROR_ZERO_RETURN) {
        snprintf(t->err, sizeof t->err, "peer closed the TLS session");
        return UV_EOF;
    }
    long v = SSL_get_verify_result(t->ssl);
    unsigned long q = ERR_peek_last_error();
    if (v != X509_V_OK && ERR_GET_REASON(q) == SSL_R_CERTIFICATE_VERIFY_FAILED) {
        snprintf(t->err, sizeof t->err, "certificate verify failed: %s",
                 X509_verify_cert_error_string(v));
        ERR_clear_error();
        return CV_EPROTO;
    }
    char why[160];
    ossl_reason(why, sizeof why,
                e == SSL_ERROR_SYSCALL ? "unexpected end of TLS stream" : "TLS error");
    /* Alerts from the peer read "sslv3 alert bad certificate" and the like. */
    const char *alert = strstr(why, "alert ");
    if (alert != NULL)
        snprintf(t->err, sizeof t->err, "peer sent TLS alert: %s", alert + 6);
    else
        snprintf(t->err, sizeof t->err, "%s", why);
    return CV_EPROTO;
}

int cv_tls_handshake(struct cv_tls *t)
{
    int r = SSL_do_handshake(t->ssl);
    return r == 1 ? 0 : failed(t, r);
}

int cv_tls_read(struct cv_tls *t, void *buf, size_t cap)
{
    if (cap > (size_t)INT32_MAX)
        cap = INT32_MAX;
    int r = SSL_read(t->ssl, buf, (int)cap);
    return r > 0 ? r : failed(t, r);
}

int cv_tls_write(struct cv_tls *t, const void *p, size_t n)
{
    const uint8_t *s = p;
    while (n > 0) {
        int chunk = n > (size_t)INT32_MAX ? INT32_MAX : (int)n;
        int r = SSL_write(t->ssl, s, chunk);
        if (r <= 0) {
            failed(t, r); /* a memory BIO never asks to wait: any stop is an error */
            return CV_EPROTO;
        }
        s += r;
        n -= (size_t)r;
    }
    return 0;
}

size_t cv_tls_buffered(const struct cv_tls *t)
{
    return BIO_ctrl_pending(t->rbio) + (size_t)SSL_pending(t->ssl);
}

struct cv_buf *cv_tls_out(struct cv_tls *t)
{
    return &t->out;
}

void cv_tls_shutdown(struct cv_tls *t)
{
    if (t->shut || !SSL_is_init_finished(t->ssl))
        return;
    t->shut = true;
    SSL_shutdown(t->ssl);
    ERR_clear_error();
}

const char *cv_tls_error(const struct cv_tls *t)
{
    return t->err[0] ? t->err : "TLS error";
}

const char *cv_tls_servername(const struct cv_tls *t)
{
    return SSL_get_servername(t->ssl, TLSEXT_NAMETYPE_host_name);
}

const char *cv_tls_version(const struct cv_tls *t)
{
    return SSL_get_version(t->ssl);
}
