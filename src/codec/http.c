#include "codec/http.h"

#include <limits.h>
#include <stddef.h>
#include <string.h>
#include <strings.h>

#include <llhttp.h>

#include "core/err.h"

/* Bytes of an incomplete head that llhttp checks early, so that garbage (a
 * TLS hello, a binary protocol) is refused at once instead of after
 * max_head bytes. Bounded so that a peer trickling one byte per read costs
 * O(n) in total, not O(n^2). */
#define EARLY_CHECK 256

struct ctx {
    struct cv_http_head *h;
    bool in_value;    /* last span was a header value: a field starts a new header */
    bool too_many;    /* more than CV_HTTP_MAX_HEADERS */
    bool done;        /* on_headers_complete ran */
};

/* Appends a span to a slice. The whole head goes to llhttp in one call, so
 * a span arrives in one piece; should llhttp ever split one, the pieces are
 * adjacent in the input and extending the slice is enough. */
static int extend(const char **s, size_t *len, const char *at, size_t n)
{
    if (*s == NULL) {
        *s = at;
        *len = n;
        return 0;
    }
    if (*s + *len != at)
        return -1; /* cannot happen with a contiguous input */
    *len += n;
    return 0;
}

static struct ctx *ctx_of(llhttp_t *p)
{
    return p->data;
}

static int on_method(llhttp_t *p, const char *at, size_t n)
{
    struct cv_http_head *h = ctx_of(p)->h;
    return extend(&h->method, &h->method_len, at, n);
}

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    struct cv_http_head *h = ctx_of(p)->h;
    return extend(&h->target, &h->target_len, at, n);
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    struct ctx *c = ctx_of(p);
    struct cv_http_head *h = c->h;

    if (c->in_value || h->nheaders == 0) {
        if (h->nheaders == CV_HTTP_MAX_HEADERS) {
            c->too_many = true;
            return -1;
        }
        memset(&h->headers[h->nheaders], 0, sizeof h->headers[0]);
        h->nheaders++;
        c->in_value = false;
    }
    struct cv_http_header *hd = &h->headers[h->nheaders - 1];
    return extend(&hd->name, &hd->name_len, at, n);
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    struct ctx *c = ctx_of(p);
    struct cv_http_head *h = c->h;

    if (h->nheaders == 0)
        return -1;
    c->in_value = true;
    struct cv_http_header *hd = &h->headers[h->nheaders - 1];
    return extend(&hd->value, &hd->value_len, at, n);
}

static int on_headers_complete(llhttp_t *p)
{
    struct ctx *c = ctx_of(p);
    struct cv_http_head *h = c->h;

    h->version_major = p->http_major;
    h->version_minor = p->http_minor;
    h->status = h->is_request ? 0 : p->status_code;
    /* Not p->upgrade: llhttp also sets that for CONNECT, which is not a
     * protocol switch. For a response only 101 switches. */
    h->upgrade = (p->flags & F_UPGRADE) && (p->flags & F_CONNECTION_UPGRADE) &&
                 (h->is_request || p->status_code == 101);
    h->keep_alive = llhttp_should_keep_alive(p) != 0;
    h->chunked = (p->flags & F_CHUNKED) != 0;
    h->content_length = (p->flags & F_CONTENT_LENGTH) ? (int64_t)p->content_length : -1;
    c->done = true;
    /* Stop before the body: it belongs to the caller. */
    return HPE_PAUSED;
}

static bool is_ows(char ch)
{
    return ch == ' ' || ch == '\t';
}

/* RFC 9110 §5.6.2 tchar. */
static bool is_tchar(unsigned char ch)
{
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9'))
        return true;
    switch (ch) {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+':
    case '-': case '.': case '^': case '_': case '`': case '|': case '~': return true;
    default: return false;
    }
}

/* llhttp in its default (lenient) build lets spaces into header names and
 * control characters into values; a proxy that reads such a header
 * differently from the next hop is a smuggling risk, so refuse them. */
static int check_headers(const struct cv_http_head *h)
{
    for (size_t i = 0; i < h->nheaders; i++) {
        const struct cv_http_header *hd = &h->headers[i];
        if (hd->name_len == 0)
            return CV_EPROTO;
        for (size_t j = 0; j < hd->name_len; j++)
            if (!is_tchar((unsigned char)hd->name[j]))
                return CV_EPROTO;
        for (size_t j = 0; j < hd->value_len; j++) {
            unsigned char ch = (unsigned char)hd->value[j];
            if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
                return CV_EPROTO;
        }
    }
    return 0;
}

static void trim_values(struct cv_http_head *h)
{
    for (size_t i = 0; i < h->nheaders; i++) {
        struct cv_http_header *hd = &h->headers[i];
        if (hd->value == NULL) {
            hd->value = hd->name + hd->name_len; /* empty value */
            hd->value_len = 0;
        }
        while (hd->value_len > 0 && is_ows(hd->value[0])) {
            hd->value++;
            hd->value_len--;
        }
        while (hd->value_len > 0 && is_ows(hd->value[hd->value_len - 1]))
            hd->value_len--;
    }
}

/* Runs llhttp over p[0..n). Returns 0 once the head is complete, CV_EAGAIN
 * if llhttp wants more, CV_ETOOBIG or CV_EPROTO. */
static int run_llhttp(llhttp_type_t type, const char *p, size_t n, struct cv_http_head *h)
{
    llhttp_settings_t st;
    llhttp_t parser;
    struct ctx c = {.h = h};

    memset(h, 0, offsetof(struct cv_http_head, headers)); /* slots are cleared as used */
    h->is_request = type == HTTP_REQUEST;
    h->content_length = -1;
    llhttp_settings_init(&st);
    st.on_method = on_method;
    st.on_url = on_url;
    st.on_header_field = on_header_field;
    st.on_header_value = on_header_value;
    st.on_headers_complete = on_headers_complete;
    llhttp_init(&parser, type, &st);
    parser.data = &c;

    llhttp_errno_t err = llhttp_execute(&parser, p, n);
    if (c.too_many)
        return CV_ETOOBIG;
    if (c.done && (err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE || err == HPE_OK))
        return 0;
    if (err != HPE_OK)
        return CV_EPROTO;
    return CV_EAGAIN;
}

/* Finds the end of the head ("\r\n\r\n") in p[0..n) while refusing bare CR,
 * bare LF and NUL, which llhttp would tolerate in places and which let two
 * parsers disagree on where a message ends (request smuggling), and any line
 * that starts with whitespace: obs-fold (RFC 9112 §5.2), which llhttp folds
 * silently into an empty value before it, so the per-value check never sees
 * it. Returns the head length, CV_EAGAIN if no end yet, or CV_EPROTO.
 * Line by line with memchr (vectorised in libc): a byte loop here was a
 * tenth of the gateway's user time per request. */
static int scan_head(const char *p, size_t n)
{
    size_t i = 0; /* start of the current line */
    int rc = CV_EAGAIN;
    for (;;) {
        const char *cr = memchr(p + i, '\r', n - i);
        size_t k = cr != NULL ? (size_t)(cr - p) : n; /* the line is p[i..k) */
        if (memchr(p + i, '\n', k - i) != NULL)
            return CV_EPROTO; /* a LF without its CR */
        if (cr == NULL || k + 1 == n)
            break; /* incomplete (a CR at the very end waits for its LF) */
        if (p[k + 1] != '\n')
            return CV_EPROTO; /* a CR without its LF */
        if (k == i && i > 0) {
            rc = (int)(k + 2); /* the empty line */
            n = k + 2;
            break;
        }
        i = k + 2;
        if (i < n && (p[i] == ' ' || p[i] == '\t'))
            return CV_EPROTO; /* obs-fold */
    }
    if (memchr(p, '\0', n) != NULL)
        return CV_EPROTO;
    return rc;
}

static int parse(llhttp_type_t type, const char *p, size_t n, size_t max_head,
                 struct cv_http_head *h)
{
    if (max_head > INT_MAX)
        max_head = INT_MAX; /* the head length is returned as int */
    size_t lim = n < max_head ? n : max_head;
    int len = scan_head(p, lim);
    if (len == CV_EAGAIN) {
        int rc = run_llhttp(type, p, lim < EARLY_CHECK ? lim : EARLY_CHECK, h);
        if (rc != CV_EAGAIN && rc != 0)
            return rc;
        return n >= max_head ? CV_ETOOBIG : CV_EAGAIN;
    }
    if (len < 0)
        return len;
    int rc = run_llhttp(type, p, (size_t)len, h);
    if (rc == CV_EAGAIN)
        return CV_EPROTO; /* the empty line did not end the head for llhttp */
    if (rc != 0)
        return rc;
    trim_values(h);
    rc = check_headers(h);
    if (rc != 0)
        return rc;
    return len;
}

int cv_http_parse_request(const char *p, size_t n, size_t max_head, struct cv_http_head *h)
{
    return parse(HTTP_REQUEST, p, n, max_head, h);
}

int cv_http_parse_response(const char *p, size_t n, size_t max_head, struct cv_http_head *h)
{
    return parse(HTTP_RESPONSE, p, n, max_head, h);
}

const struct cv_http_header *cv_http_find(const struct cv_http_head *h, const char *name)
{
    size_t n = strlen(name);

    for (size_t i = 0; i < h->nheaders; i++) {
        const struct cv_http_header *hd = &h->headers[i];
        if (hd->name_len == n && cv_http_ieq(hd->name, name, n))
            return hd;
    }
    return NULL;
}

bool cv_http_has_token(const char *value, size_t len, const char *token)
{
    size_t tlen = strlen(token);
    size_t i = 0;

    while (i < len) {
        size_t start, end;
        while (i < len && (is_ows(value[i]) || value[i] == ','))
            i++;
        start = i;
        while (i < len && value[i] != ',')
            i++;
        end = i;
        while (end > start && is_ows(value[end - 1]))
            end--;
        if (end > start && end - start == tlen && cv_http_ieq(value + start, token, tlen))
            return true;
    }
    return false;
}

/* Node's http.STATUS_CODES (NULL for a code it has no name for). */
static const char *reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 102: return "Processing";
    case 103: return "Early Hints";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 203: return "Non-Authoritative Information";
    case 204: return "No Content";
    case 205: return "Reset Content";
    case 206: return "Partial Content";
    case 207: return "Multi-Status";
    case 208: return "Already Reported";
    case 226: return "IM Used";
    case 300: return "Multiple Choices";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 305: return "Use Proxy";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 407: return "Proxy Authentication Required";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 416: return "Range Not Satisfiable";
    case 417: return "Expectation Failed";
    case 418: return "I'm a Teapot";
    case 421: return "Misdirected Request";
    case 422: return "Unprocessable Entity";
    case 423: return "Locked";
    case 424: return "Failed Dependency";
    case 425: return "Too Early";
    case 426: return "Upgrade Required";
    case 428: return "Precondition Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 451: return "Unavailable For Legal Reasons";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    case 506: return "Variant Also Negotiates";
    case 507: return "Insufficient Storage";
    case 508: return "Loop Detected";
    case 509: return "Bandwidth Limit Exceeded";
    case 510: return "Not Extended";
    case 511: return "Network Authentication Required";
    default: return NULL;
    }
}

/* Clients of the gateway compare against a Node server, which also sends
 * "unknown" for codes it has no name for. */
const char *cv_http_reason_node(int status)
{
    const char *r = reason(status);
    return r != NULL ? r : "unknown";
}

const char *cv_http_reason(int status)
{
    if (status == 413)
        return "Content Too Large"; /* RFC 9110's name; Node keeps the older one */
    const char *r = reason(status);
    return r != NULL ? r : "Unknown";
}
