/* ws_client: a scriptable WebSocket client on culvert's WebSocket layer,
 * for the conformance tests (tests/conformance/).
 *
 *   ws_client URL [--max-msg BYTES]
 *
 * Commands on stdin, one per line (sent once the connection is open):
 *   text STRING        send STRING as one text message (may be empty)
 *   binary HEX         send the decoded bytes as one binary message
 *   close CODE [REASON] start the close handshake
 *   big N              send N bytes of pattern i % 251 as one binary message
 * Events on stdout, one per line, flushed:
 *   open | text STRING | binary HEX | binary-len N sha256 HEX (over 1024
 *   bytes) | close CODE REASON | error MSG
 * Exits 0 after the connection closed, 1 if it never opened, 2 on bad usage.
 * End of stdin does nothing: the connection lives until it is closed.
 *
 * stdin is read by a thread with blocking fgets-style reads (works for pipes,
 * files and terminals alike) and handed to the loop through a uv_async. */
#include <errno.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "core/err.h"
#include "net/ws.h"

#define HEX_MAX 1024

struct line {
    struct line *next;
    size_t len;
    char text[]; /* NUL-terminated, without the newline */
};

enum state { ST_CONNECTING, ST_OPEN, ST_CLOSED };

static struct {
    uv_loop_t *loop;
    struct cv_ws *ws; /* borrowed: freed by the library after on_close */
    enum state state;
    bool opened;
    uv_async_t async;
    pthread_mutex_t mu;
    struct line *head; /* owned queue, guarded by mu */
    struct line *tail;
} g = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void emit(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void emit(const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

static void print_hex(const uint8_t *p, size_t n)
{
    static const char digits[] = "0123456789abcdef";

    for (size_t i = 0; i < n; i++) {
        putchar(digits[p[i] >> 4]);
        putchar(digits[p[i] & 15]);
    }
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* --- stdin thread ------------------------------------------------------- */

static void *stdin_main(void *arg)
{
    char *buf = NULL;
    size_t cap = 0;
    ssize_t n;

    (void)arg;
    while ((n = getline(&buf, &cap, stdin)) >= 0) {
        struct line *l;

        if (n > 0 && buf[n - 1] == '\n')
            n--;
        l = malloc(sizeof(*l) + (size_t)n + 1);
        if (!l)
            break;
        memcpy(l->text, buf, (size_t)n);
        l->text[n] = '\0';
        l->len = (size_t)n;
        l->next = NULL;
        pthread_mutex_lock(&g.mu);
        if (g.tail)
            g.tail->next = l;
        else
            g.head = l;
        g.tail = l;
        pthread_mutex_unlock(&g.mu);
        uv_async_send(&g.async);
    }
    free(buf);
    return NULL;
}

/* --- commands ----------------------------------------------------------- */

static void send_msg(uint8_t opcode, const void *p, size_t n)
{
    int rc = cv_ws_send(g.ws, opcode, p, n);

    if (rc != 0)
        emit("error send: %s", cv_strerror(rc));
}

static void cmd_binary(const char *hex, size_t n)
{
    uint8_t *out;
    size_t i;

    if (n % 2) {
        fprintf(stderr, "ws_client: odd hex length\n");
        return;
    }
    out = malloc(n / 2 + 1);
    if (!out)
        return;
    for (i = 0; i < n / 2; i++) {
        int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);

        if (hi < 0 || lo < 0) {
            fprintf(stderr, "ws_client: bad hex\n");
            free(out);
            return;
        }
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    send_msg(CV_WS_BINARY, out, n / 2);
    free(out);
}

static void cmd_big(const char *arg)
{
    char *end;
    unsigned long long n;
    uint8_t *p;

    errno = 0;
    n = strtoull(arg, &end, 10);
    if (errno || end == arg || *end || *arg == '-') {
        fprintf(stderr, "ws_client: bad size '%s'\n", arg);
        return;
    }
    p = malloc(n ? n : 1);
    if (!p) {
        emit("error big: out of memory");
        return;
    }
    for (unsigned long long i = 0; i < n; i++)
        p[i] = (uint8_t)(i % 251);
    send_msg(CV_WS_BINARY, p, n);
    free(p);
}

static void cmd_close(const char *arg)
{
    char *end;
    unsigned long code;

    errno = 0;
    code = strtoul(arg, &end, 10);
    if (errno || end == arg || code > 65535 || (*end && *end != ' ')) {
        fprintf(stderr, "ws_client: bad close code '%s'\n", arg);
        return;
    }
    cv_ws_close(g.ws, (uint16_t)code, *end == ' ' ? end + 1 : NULL);
}

static void run_command(struct line *l)
{
    const char *t = l->text;

    if (strncmp(t, "text", 4) == 0 && (t[4] == ' ' || t[4] == '\0'))
        send_msg(CV_WS_TEXT, t[4] ? t + 5 : "", t[4] ? l->len - 5 : 0);
    else if (strncmp(t, "binary", 6) == 0 && (t[6] == ' ' || t[6] == '\0'))
        cmd_binary(t[6] ? t + 7 : "", t[6] ? l->len - 7 : 0);
    else if (strncmp(t, "close ", 6) == 0)
        cmd_close(t + 6);
    else if (strncmp(t, "big ", 4) == 0)
        cmd_big(t + 4);
    else if (l->len)
        fprintf(stderr, "ws_client: unknown command '%s'\n", t);
}

/* Runs queued commands while the connection is open. */
static void drain_commands(void)
{
    while (g.state == ST_OPEN) {
        struct line *l;

        pthread_mutex_lock(&g.mu);
        l = g.head;
        if (l) {
            g.head = l->next;
            if (!g.head)
                g.tail = NULL;
        }
        pthread_mutex_unlock(&g.mu);
        if (!l)
            break;
        run_command(l);
        free(l);
    }
}

static void on_async(uv_async_t *a)
{
    (void)a;
    drain_commands();
}

/* --- WebSocket callbacks ------------------------------------------------ */

static void on_open(struct cv_ws *ws, int status)
{
    (void)ws;
    if (status != 0) {
        emit("error open: %s", cv_strerror(status));
        return;
    }
    g.opened = true;
    g.state = ST_OPEN;
    emit("open");
    drain_commands();
}

static void on_msg(struct cv_ws *ws, uint8_t opcode, uint8_t *data, size_t len)
{
    (void)ws;
    if (opcode == CV_WS_TEXT) {
        fputs("text ", stdout);
        fwrite(data, 1, len, stdout);
        putchar('\n');
        fflush(stdout);
    } else if (len <= HEX_MAX) {
        fputs("binary ", stdout);
        print_hex(data, len);
        putchar('\n');
        fflush(stdout);
    } else {
        uint8_t md[EVP_MAX_MD_SIZE];
        unsigned int mdlen = 0;

        if (!EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL)) {
            emit("error sha256 failed");
            return;
        }
        printf("binary-len %zu sha256 ", len);
        print_hex(md, mdlen);
        putchar('\n');
        fflush(stdout);
    }
}

static void on_close(struct cv_ws *ws, uint16_t code, const char *reason)
{
    (void)ws;
    g.state = ST_CLOSED;
    g.ws = NULL;
    emit("close %u %s", code, reason);
    /* Closing the async handle empties the loop; the stdin thread may still
     * sit in a blocking read, which exit() ends. */
    uv_close((uv_handle_t *)&g.async, NULL);
}

int main(int argc, char **argv)
{
    const struct cv_ws_cbs cbs = {
        .on_open = on_open, .on_msg = on_msg, .on_close = on_close, .on_drain = NULL};
    struct cv_ws_opts opts;
    const char *url = NULL;
    pthread_t tid;
    int rc;

    signal(SIGPIPE, SIG_IGN);
    cv_ws_opts_default(&opts);
    /* The bare handshake of spec §2: no User-Agent. */
    opts.user_agent = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--max-msg") == 0 && i + 1 < argc) {
            char *end;

            errno = 0;
            opts.max_msg = strtoull(argv[++i], &end, 10);
            if (errno || *end || end == argv[i] || argv[i][0] == '-' || opts.max_msg == 0) {
                fprintf(stderr, "ws_client: bad --max-msg '%s': want a byte count > 0\n",
                        argv[i]);
                return 2;
            }
        } else if (!url && argv[i][0] != '-') {
            url = argv[i];
        } else {
            url = NULL;
            break;
        }
    }
    if (!url) {
        fprintf(stderr, "usage: ws_client URL [--max-msg BYTES]\n");
        return 2;
    }

    g.loop = uv_default_loop();
    uv_async_init(g.loop, &g.async, on_async);
    rc = cv_ws_connect(g.loop, url, &opts, &cbs, NULL, &g.ws);
    if (rc != 0) {
        emit("error connect: %s", cv_strerror(rc));
        return 1;
    }
    if (pthread_create(&tid, NULL, stdin_main, NULL) != 0) {
        emit("error cannot start stdin thread");
        return 1;
    }
    pthread_detach(tid);

    uv_run(g.loop, UV_RUN_DEFAULT);
    fflush(stdout);
    /* exit() rather than return: the stdin thread may still be blocked. */
    exit(g.opened ? 0 : 1);
}
