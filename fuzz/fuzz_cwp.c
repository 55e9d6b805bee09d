/* Fuzzes the worker line parser: every protocol accepts or refuses the
 * line without reading outside it; slices stay inside the compact text;
 * compacting is idempotent (the compact text parses to itself); a result
 * is one valid JSON value on its own; an error object rebuilt by
 * cv_cwp_put_error is a JSON object; base64 decoding stays in bounds; a
 * line refused for invalid UTF-8 parses past it once repaired. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec/cwp.h"
#include "core/err.h"

static void check_slice(struct cv_cwp_slice s, size_t len)
{
    if (s.present && (s.off > len || s.len > len - s.off))
        abort();
}

/* Parses p[0..n) as "{"v":" + value + "}": the value must stay valid. */
static void check_value(const char *p, size_t n)
{
    char *line = malloc(n + 6), *out = malloc(n + 6);
    size_t ol;
    struct cv_cwp_msg m;
    if (line == NULL || out == NULL)
        abort();
    memcpy(line, "{\"v\":", 5);
    memcpy(line + 5, p, n);
    line[n + 5] = '}';
    if (cv_cwp_parse(CV_CWP_PROTO_CWP1, line, n + 6, out, &ol, &m) != 0 || ol != n + 6)
        abort();
    free(line);
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *line = (const char *)data;
    char *out = malloc(size ? size : 1), *again = malloc(size ? size : 1);
    if (out == NULL || again == NULL)
        abort();
    for (int proto = 0; proto <= 2; proto++) {
        struct cv_cwp_msg m, m2;
        size_t ol, ol2;
        int rc = cv_cwp_parse((enum cv_cwp_proto)proto, line, size, out, &ol, &m);
        if (rc != 0) {
            if (rc != CV_EPROTO || m.why == NULL)
                abort();
            /* Repaired UTF-8 is never refused for its UTF-8 again. */
            struct cv_buf fx;
            cv_buf_init(&fx, size * 3 + 8);
            int fr = cv_cwp_fix_utf8(line, size, &fx);
            if (fr < 0 || (strcmp(m.why, "invalid UTF-8") == 0 && fr != 1))
                abort();
            if (fr == 1) {
                char *o2 = malloc(fx.len ? fx.len : 1);
                size_t l2;
                struct cv_cwp_msg m3;
                if (o2 == NULL)
                    abort();
                if (cv_cwp_parse((enum cv_cwp_proto)proto, (const char *)cv_buf_head(&fx), fx.len,
                                 o2, &l2, &m3) != 0 &&
                    strcmp(m3.why, "invalid UTF-8") == 0)
                    abort();
                free(o2);
            }
            cv_buf_fini(&fx);
            continue;
        }
        if (ol > size)
            abort();
        check_slice(m.result, ol);
        check_slice(m.error, ol);
        check_slice(m.headers, ol);
        check_slice(m.content_type, ol);
        check_slice(m.stream_name, ol);
        check_slice(m.b64, ol);
        check_slice(m.meta, ol);
        check_slice(m.frame_error, ol);
        check_slice(m.code_name, ol);
        /* Idempotent: the compact text is its own compact form. */
        if (cv_cwp_parse((enum cv_cwp_proto)proto, out, ol, again, &ol2, &m2) != 0 || ol2 != ol ||
            memcmp(out, again, ol) != 0 || m2.type != m.type || m2.id != m.id)
            abort();
        if (m.type == CV_CWP_REPLY && m.ok && m.result.present)
            check_value(out + m.result.off, m.result.len);
        if (m.type == CV_CWP_REPLY && !m.ok) {
            if (m.status < 400 || m.status > 599)
                abort();
            struct cv_buf b;
            cv_buf_init(&b, 1u << 26);
            if (cv_cwp_put_error(&b, out, &m) == 0)
                check_value((const char *)cv_buf_head(&b), b.len);
            cv_buf_fini(&b);
        }
        if (m.type == CV_CWP_DATA) {
            uint8_t *dec = malloc(m.b64.len / 4 * 3 + 3);
            if (dec == NULL)
                abort();
            int n = cv_cwp_b64_decode(out + m.b64.off, m.b64.len, dec);
            if (n > (int)(m.b64.len / 4 * 3 + 2))
                abort();
            free(dec);
        }
        if (m.type == CV_CWP_HELLO) {
            struct cv_cwp_hello h;
            if (cv_cwp_hello_parse(out, ol, &h) == 0)
                cv_cwp_hello_fini(&h);
        }
    }
    free(out);
    free(again);
    return 0;
}
