/* multipart/form-data: the Content-Type boundary, the Runner clients'
 * bodies, quoting, preamble and epilogue, delimiter look-alikes in data,
 * every limit, truncated and malformed bodies; every input fed whole, one
 * byte at a time and in random splits gives the same transcript. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "codec/multipart.h"
#include "core/err.h"

#define S(lit) lit, sizeof(lit) - 1

/* ---- A transcript of callbacks: "[P name|filename|type|F]", "[D]" then
 * the data (consecutive runs merged; NUL written \0 and '\' as \\, so
 * that the transcript is a C string), "[E]", and "=rc" at the end. ---- */

struct rec {
    char *buf;
    size_t len, cap;
    bool in_data;
    const uint8_t *feed; /* the slice being fed, to check zero-copy */
    size_t feed_len;
    size_t max_hold; /* the look-behind bound: boundary + 3 */
    int stop_at;     /* stop (nonzero return) at this callback number, 0: never */
    int calls;
    size_t max_slice_outside; /* largest slice not inside the fed buffer */
};

static void put(struct rec *r, const void *p, size_t n)
{
    if (r->len + n + 1 > r->cap) {
        r->cap = (r->len + n + 1) * 2;
        r->buf = realloc(r->buf, r->cap);
        assert_non_null(r->buf);
    }
    memcpy(r->buf + r->len, p, n);
    r->len += n;
    r->buf[r->len] = '\0';
}

static void puts_(struct rec *r, const char *s)
{
    put(r, s, strlen(s));
}

static void put_escaped(struct rec *r, const uint8_t *p, size_t n)
{
    size_t s = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] != 0 && p[i] != '\\')
            continue;
        put(r, p + s, i - s);
        puts_(r, p[i] == 0 ? "\\0" : "\\\\");
        s = i + 1;
    }
    put(r, p + s, n - s);
}

/* The transcript text of data p[0..n) (caller frees). */
static char *escaped(const char *prefix, const void *p, size_t n, const char *suffix)
{
    struct rec r = {0};
    puts_(&r, prefix);
    put_escaped(&r, p, n);
    puts_(&r, suffix);
    return r.buf;
}

static int stop(struct rec *r)
{
    return ++r->calls == r->stop_at;
}

static int on_part(void *ud, const struct cv_mp_part *p)
{
    struct rec *r = ud;
    r->in_data = false;
    puts_(r, "[P ");
    puts_(r, p->name);
    puts_(r, "|");
    puts_(r, p->filename ? p->filename : "-");
    puts_(r, "|");
    puts_(r, p->content_type ? p->content_type : "-");
    puts_(r, p->is_file ? "|F]" : "|f]");
    assert_true((p->filename != NULL) == p->is_file);
    return stop(r);
}

static int on_data(void *ud, const uint8_t *p, size_t n)
{
    struct rec *r = ud;
    assert_true(n > 0);
    if (!(p >= r->feed && p + n <= r->feed + r->feed_len)) {
        /* Only the small look-behind may be handed on from elsewhere. */
        assert_true(n <= r->max_hold);
        if (n > r->max_slice_outside)
            r->max_slice_outside = n;
    }
    if (!r->in_data)
        puts_(r, "[D]");
    r->in_data = true;
    put_escaped(r, p, n);
    return stop(r);
}

static int on_part_end(void *ud)
{
    struct rec *r = ud;
    r->in_data = false;
    puts_(r, "[E]");
    return stop(r);
}

static const struct cv_mp_cbs cbs = {on_part, on_data, on_part_end};

/* Feeds body in pieces of the given sizes (cycled; 0: all at once), then
 * finishes. Returns the transcript (caller frees). */
static char *run_split(const char *boundary, const struct cv_mp_limits *lim, const char *body,
                       size_t n, const size_t *steps, size_t nsteps, int stop_at)
{
    struct rec r = {0};
    r.max_hold = strlen(boundary) + 3;
    r.stop_at = stop_at;
    struct cv_mp *mp = cv_mp_new(boundary, lim, &cbs, &r);
    assert_non_null(mp);
    size_t off = 0, k = 0;
    int rc = 0;
    while (off < n) {
        size_t step = steps[k++ % nsteps];
        if (step == 0 || step > n - off)
            step = n - off;
        /* A private copy, so that ASan sees reads outside the slice. */
        uint8_t *piece = malloc(step);
        assert_non_null(piece);
        memcpy(piece, body + off, step);
        r.feed = piece;
        r.feed_len = step;
        rc = cv_mp_feed(mp, piece, step);
        free(piece);
        off += step;
        if (rc != 0)
            break;
    }
    if (rc == 0)
        rc = cv_mp_finish(mp);
    else
        assert_int_equal(cv_mp_feed(mp, (const uint8_t *)"x", 1), rc); /* sticky */
    assert_int_equal(cv_mp_finish(mp), rc);
    char tail[64];
    snprintf(tail, sizeof tail, "=%s", rc == 0 ? "ok" : cv_strerror(rc));
    puts_(&r, tail);
    if (rc == CV_ETOOBIG)
        puts_(&r, cv_mp_limit_message(cv_mp_limit_hit(mp)));
    else
        assert_int_equal(cv_mp_limit_hit(mp), CV_MP_LIMIT_NONE);
    cv_mp_free(mp);
    return r.buf;
}

static char *run_lim(const char *boundary, const struct cv_mp_limits *lim, const char *body,
                     size_t n)
{
    size_t all = 0;
    return run_split(boundary, lim, body, n, &all, 1, 0);
}

/* Checks that one-shot, byte-at-a-time, every two-piece split and some
 * random splits agree, and that the one-shot transcript is want. */
static void expect_lim(const char *boundary, const struct cv_mp_limits *lim, const char *body,
                       size_t n, const char *want)
{
    char *whole = run_lim(boundary, lim, body, n);
    if (strcmp(whole, want) != 0)
        fail_msg("transcript\n got: %s\nwant: %s", whole, want);
    size_t one = 1;
    char *t = run_split(boundary, lim, body, n, &one, 1, 0);
    assert_string_equal(t, whole);
    free(t);
    for (size_t cut = 1; cut < n; cut++) {
        size_t steps[2] = {cut, 0};
        t = run_split(boundary, lim, body, n, steps, 2, 0);
        assert_string_equal(t, whole);
        free(t);
    }
    srand(7);
    for (int i = 0; i < 20; i++) {
        size_t steps[8];
        for (size_t j = 0; j < 8; j++)
            steps[j] = 1 + (size_t)rand() % 13;
        t = run_split(boundary, lim, body, n, steps, 8, 0);
        assert_string_equal(t, whole);
        free(t);
    }
    free(whole);
}

static void expect(const char *boundary, const char *body, size_t n, const char *want)
{
    struct cv_mp_limits lim;
    cv_mp_limits_init(&lim);
    expect_lim(boundary, &lim, body, n, want);
}

/* ---- cv_mp_boundary ---- */

static int bnd(const char *ct, char *out)
{
    return cv_mp_boundary(ct, strlen(ct), out);
}

static void test_boundary(void **state)
{
    char b[CV_MP_MAX_BOUNDARY + 1];
    assert_int_equal(bnd("multipart/form-data; boundary=runner-mwrb32ry-sns37gtvjio", b), 0);
    assert_string_equal(b, "runner-mwrb32ry-sns37gtvjio");
    assert_int_equal(bnd("Multipart/Form-Data;boundary=----formdata-undici-0123456789", b), 0);
    assert_string_equal(b, "----formdata-undici-0123456789");
    assert_int_equal(bnd("multipart/form-data; charset=\"utf-8\"; BOUNDARY=\"a'b\"", b), 0);
    assert_string_equal(b, "a'b");
    /* '"' is no bchar, even escaped. */
    assert_int_equal(bnd("multipart/form-data; boundary=\"a b\\\"c\"", b), CV_EPROTO);
    assert_int_equal(bnd("multipart/form-data; boundary=\"a b(c\"", b), 0);
    assert_string_equal(b, "a b(c");
    /* Only \" and \\ are escapes: "\(" keeps its backslash, no bchar. */
    assert_int_equal(bnd("multipart/form-data; boundary=\"a b\\(c\"", b), CV_EPROTO);
    assert_int_equal(bnd("  multipart/form-data ;\tboundary=x=y:z?;", b), 0);
    assert_string_equal(b, "x=y:z?");
    assert_int_equal(bnd("multipart/form-data; boundary=a; boundary=b", b), 0);
    assert_string_equal(b, "a");
    static const char b70[] =
        "0123456789012345678901234567890123456789012345678901234567890123456789";
    char ct[200];
    snprintf(ct, sizeof ct, "multipart/form-data; boundary=%s", b70);
    assert_int_equal(bnd(ct, b), 0);
    assert_string_equal(b, b70);
    snprintf(ct, sizeof ct, "multipart/form-data; boundary=\"%sx\"", b70);
    assert_int_equal(bnd(ct, b), CV_EPROTO); /* 71 */
    char ct2[400];
    snprintf(ct2, sizeof ct2, "multipart/form-data; boundary=\"%s%s%s\"", b70, b70, b70);
    assert_int_equal(bnd(ct2, b), CV_EPROTO); /* long enough to skip decoding */
    snprintf(ct, sizeof ct, "multipart/form-data; boundary=%sx", b70);
    assert_int_equal(bnd(ct, b), CV_EPROTO);

    static const char *bad[] = {
        "",
        "multipart/form-data",
        "multipart/form-data;",
        "multipart/form-data; boundary=",
        "multipart/form-data; boundary=\"\"",
        "multipart/form-data; boundary=\"ab \"", /* space last */
        "multipart/form-data; boundary=\"abc",   /* unterminated */
        "multipart/form-data; boundary=a\x01",
        "multipart/form-data; boundary=a{b",
        "multipart/form-data; boundary=a b",
        "multipart/form-data boundary=ab",
        "multipart/mixed; boundary=ab",
        "multipart/form-datax; boundary=ab",
        "application/json",
        "multipart/form-data; =ab",
        "multipart/form-data; boundary",
        "multipart/form-data; charset; boundary=ab",
        "multipart/form-data; boundary=\"a\xc3\xa9\"",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        if (bnd(bad[i], b) != CV_EPROTO)
            fail_msg("accepted: %s", bad[i]);
    }
    /* The length is honoured (no NUL needed). */
    assert_int_equal(cv_mp_boundary("multipart/form-data; boundary=abcdef", 33, b), 0);
    assert_string_equal(b, "abc");
}

/* ---- Bodies ---- */

static void test_runner_smart_client(void **state)
{
    /* §12, de-chunked. */
    static const char body[] =
        "--runner-mwrb32ry-sns37gtvjio\r\n"
        "Content-Disposition: form-data; name=\"__manifest\"\r\n"
        "\r\n"
        "{\"input\":{\"note\":{\"when\":{}},\"file\":{\"$runnerFile\":\"File\",\"id\":\"F1\","
        "\"meta\":{\"name\":\"hello.txt\",\"type\":\"text/plain\",\"size\":11,\"extra\":{"
        "\"tag\":1}}}}}\r\n"
        "--runner-mwrb32ry-sns37gtvjio\r\n"
        "Content-Disposition: form-data; name=\"file:F1\"; filename=\"hello.txt\"\r\n"
        "Content-Type: text/plain\r\n"
        "\r\n"
        "hello world\r\n"
        "--runner-mwrb32ry-sns37gtvjio--\r\n";
    expect("runner-mwrb32ry-sns37gtvjio", S(body),
           "[P __manifest|-|-|f][D]{\"input\":{\"note\":{\"when\":{}},\"file\":{\"$runnerFile\":"
           "\"File\",\"id\":\"F1\",\"meta\":{\"name\":\"hello.txt\",\"type\":\"text/plain\","
           "\"size\":11,\"extra\":{\"tag\":1}}}}}[E]"
           "[P file:F1|hello.txt|text/plain|F][D]hello world[E]=ok");
}

static void test_undici_formdata(void **state)
{
    /* Node's fetch/FormData (undici) body layout. */
    static const char body[] =
        "------formdata-undici-0123456789\r\n"
        "Content-Disposition: form-data; name=\"__manifest\"\r\n"
        "\r\n"
        "{\"input\":{\"f\":{\"$runnerFile\":\"File\",\"id\":\"F1\",\"meta\":{\"name\":\"a.bin\"}}}}"
        "\r\n"
        "------formdata-undici-0123456789\r\n"
        "Content-Disposition: form-data; name=\"file:F1\"; filename=\"hello.txt\"\r\n"
        "Content-Type: application/octet-stream\r\n"
        "\r\n"
        "\x00\x01\r\n\r\n--\r\n"
        "\r\n"
        "------formdata-undici-0123456789--";
    expect("----formdata-undici-0123456789", S(body),
           "[P __manifest|-|-|f][D]{\"input\":{\"f\":{\"$runnerFile\":\"File\",\"id\":\"F1\","
           "\"meta\":{\"name\":\"a.bin\"}}}}[E]"
           "[P file:F1|hello.txt|application/octet-stream|F][D]"
           "\\0\x01\r\n\r\n--\r\n[E]=ok");
}

static void test_headers(void **state)
{
    /* Escapes, case, token values, other headers, folding, padding. */
    expect("b",
           S("--b\r\n"
             "content-disposition: FORM-DATA ; NAME=\"a\\\"q\\\\\" ;FileName=\"c:\\\\x\\y.txt\"\r\n"
             "X-Other: whatever; \"unbalanced\r\n"
             "CONTENT-TYPE:   text/plain; charset=utf-8  \r\n"
             "\r\n"
             "v\r\n"
             "--b \t\r\n"
             "Content-Disposition: form-data; name=file:F2; filename=\"\"\r\n"
             "\r\n"
             "\r\n"
             "--b\r\n"
             "Content-Disposition: form-data;\r\n"
             " name=\"folded\"\r\n"
             "Content-Type: a\r\n"
             "Content-Type: b\r\n"
             "Content-Disposition: form-data; name=second\r\n"
             "\r\n"
             "x\r\n"
             "--b--"),
           "[P a\"q\\|c:\\x\\y.txt|text/plain; charset=utf-8|F][D]v[E]"
           "[P file:F2||-|F][E]"
           "[P folded|-|a|f][D]x[E]=ok");
    /* filename*: preferred over filename, percent-decoded. */
    expect("b",
           S("--b\r\n"
             "Content-Disposition: form-data; name=f; filename*=UTF-8''%e2%82%ac%20rates.txt; "
             "filename=\"plain.txt\"\r\n"
             "\r\n"
             "\r\n"
             "--b\r\n"
             "Content-Disposition: form-data; name=g; filename*=iso-8859-1'en'%E9t%e9\r\n"
             "\r\n"
             "\r\n"
             "--b--\r\n"),
           "[P f|\xe2\x82\xac rates.txt|-|F][E][P g|\xc3\xa9t\xc3\xa9|-|F][E]=ok");
    /* Repeated parameters: the first wins. Empty name is a name. */
    expect("b",
           S("--b\r\nContent-Disposition: form-data; name=a; name=\"\"; name=z\r\n\r\n"
             "\r\n--b\r\nContent-Disposition: form-data; name=\"\"\r\n\r\n\r\n--b--"),
           "[P a|-|-|f][E][P |-|-|f][E]=ok");
    /* UTF-8 names pass through. */
    expect("b",
           S("--b\r\nContent-Disposition: form-data; name=\"\xc3\xa9t\xc3\xa9\"\r\n\r\n"
             "1\r\n--b--"),
           "[P \xc3\xa9t\xc3\xa9|-|-|f][D]1[E]=ok");
}

static void test_preamble_epilogue(void **state)
{
    expect("XyZ",
           S("This is the preamble.\r\n-- XyZ\r\n"
             "--XyZ\r\nContent-Disposition: form-data; name=a\r\n\r\n"
             "A\r\n--XyZ--\r\nThe epilogue, with a delimiter:\r\n--XyZ\r\nignored"),
           "[P a|-|-|f][D]A[E]=ok");
    /* A preamble that ends with CRLF right before the first delimiter. */
    expect("XyZ", S("\r\n--XyZ\r\nContent-Disposition: form-data; name=a\r\n\r\n\r\n--XyZ--"),
           "[P a|-|-|f][E]=ok");
    /* "--XyZ" mid-line is not a delimiter: all this is preamble. */
    expect("XyZ", S("x--XyZ\r\nContent-Disposition: form-data; name=a\r\n\r\n\r\n--XyZ--"), "=ok");
    /* No parts at all. */
    expect("XyZ", S("--XyZ--"), "=ok");
    expect("XyZ", S("--XyZ--garbage"), "=ok");
    /* Close delimiter without the final CRLF, or with padding. */
    expect("XyZ", S("--XyZ\r\nContent-Disposition: form-data; name=a\r\n\r\nA\r\n--XyZ--  \r\n"),
           "[P a|-|-|f][D]A[E]=ok");
}

static void test_lookalikes(void **state)
{
    /* Near-delimiters in data are data, delivered in order. */
    static const char body[] = "--bnd\r\nContent-Disposition: form-data; name=f; filename=x\r\n\r\n"
                               "\r\n--bnX\r\n-\r\n--bn\r\r\n--b\n--bnd"
                               "\r\n--bnd--";
    expect("bnd", S(body), "[P f|x|-|F][D]\r\n--bnX\r\n-\r\n--bn\r\r\n--b\n--bnd[E]=ok");
    /* CRLF--boundary always ends the part (RFC 2046: it cannot occur in
     * data); followed by anything but padding+CRLF or "--" it is an error. */
    expect("bnd", S("--bnd\r\nContent-Disposition: form-data; name=f\r\n\r\nab\r\n--bndX\r\n"),
           "[P f|-|-|f][D]ab=protocol error");
    expect("bnd", S("--bnd\r\nContent-Disposition: form-data; name=f\r\n\r\nab\r\n--bnd -\r\n"),
           "[P f|-|-|f][D]ab=protocol error");
    expect("bnd", S("--bnd\r\nContent-Disposition: form-data; name=f\r\n\r\nab\r\n--bnd-x"),
           "[P f|-|-|f][D]ab=protocol error");
    expect("bnd", S("--bnd\r\nContent-Disposition: form-data; name=f\r\n\r\nab\r\n--bnd\rx"),
           "[P f|-|-|f][D]ab=protocol error");
    /* A boundary that is a prefix of the data's lines. */
    expect("a", S("--a\r\nContent-Disposition: form-data; name=f\r\n\r\n\r\n-\r\n--\r\r\n--a--"),
           "[P f|-|-|f][D]\r\n-\r\n--\r[E]=ok");
}

/* Gives the expected transcript from the whole-feed run; the split runs
 * are compared against it by expect_lim. */
static void expect_split_only(const char *boundary, const struct cv_mp_limits *lim,
                              const char *body, size_t n)
{
    char *whole = run_lim(boundary, lim, body, n);
    expect_lim(boundary, lim, body, n, whole);
    free(whole);
}

static void test_malformed(void **state)
{
    static const char *bad[] = {
        /* No Content-Disposition, or not form-data, or no name. */
        "--b\r\n\r\nx\r\n--b--",
        "--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b--",
        "--b\r\nContent-Disposition: attachment; name=a\r\n\r\nx\r\n--b--",
        "--b\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b--",
        "--b\r\nContent-Disposition: form-data; filename=a\r\n\r\nx\r\n--b--",
        "--b\r\nContent-Disposition: form-data; name=\"a\r\n\r\nx\r\n--b--",
        "--b\r\nContent-Disposition: form-data; name=a b\r\n\r\nx\r\n--b--",
        "--b\r\nContent-Disposition: form-data; name=\r\n\r\nx\r\n--b--",
        "--b\r\nContent-Disposition: form-data; name=\"a\x01\"\r\n\r\nx\r\n--b--",
        "--b\r\nContent-Disposition: form-data; name=\"a\\\x01\"\r\n\r\nx\r\n--b--",
        "--b\r\nContent-Disposition: form-data; name=\"a\\\r\n\r\nx\r\n--b--",
        "--b\r\nContent-Disposition: form-data; name=a; filename*=abc\r\n\r\nx\r\n--b--",
        "--b\r\nContent-Disposition: form-data; name=a; filename*=utf-8''a%0\r\n\r\nx\r\n--b--",
        "--b\r\nContent-Disposition: form-data; name=a; filename*=utf-8''a%00\r\n\r\nx\r\n--b--",
        "--b\r\nContent-Disposition: form-data; name=a; filename*=utf-8''%zz\r\n\r\nx\r\n--b--",
        "--b\r\nContent-Disposition: form-data; name=a; filename*=iso-8859-1''\xff\xff\r\n\r\n"
        "x\r\n--b--",
        /* Header syntax. */
        "--b\r\nContent-Disposition form-data; name=a\r\n\r\nx\r\n--b--",
        "--b\r\n: x\r\nContent-Disposition: form-data; name=a\r\n\r\nx\r\n--b--",
        "--b\r\nBad Name: x\r\nContent-Disposition: form-data; name=a\r\n\r\nx\r\n--b--",
        "--b\r\n Content-Disposition: form-data; name=a\r\n\r\nx\r\n--b--",
        "--b\r\nContent-Disposition: form-data; name=a\nX: y\r\n\r\nx\r\n--b--",
        "--b\r\nContent-Disposition: form-data; name=a\rX: y\r\n\r\nx\r\n--b--",
        "--b\r\nContent-Type: a\x7f\r\nContent-Disposition: form-data; name=a\r\n\r\n\r\n--b--",
        /* Delimiter lines. */
        "--b\nContent-Disposition: form-data; name=a\r\n\r\nx\r\n--b--",
        "--bx\r\nContent-Disposition: form-data; name=a\r\n\r\nx\r\n--b--",
        "--b -\r\n",
        "--b\r\nContent-Disposition: form-data; name=a\r\n\r\nx\r\n--b\n",
        "--b\r\nContent-Disposition: form-data; name=a\r\n\r\nx\r\n--b \t--",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char *t = run_lim("b", NULL, bad[i], strlen(bad[i]));
        const char *eq = strrchr(t, '=');
        if (strcmp(eq, "=protocol error") != 0)
            fail_msg("case %zu: %s", i, t);
        free(t);
        expect_split_only("b", NULL, bad[i], strlen(bad[i]));
    }
}

static void test_truncated(void **state)
{
    static const char body[] = "--b\r\nContent-Disposition: form-data; name=a\r\n\r\nxy\r\n--b--";
    /* Every proper prefix: no error while feeding, finish says EPROTO. */
    for (size_t i = 0; i + 1 < sizeof body; i++) {
        char *t = run_lim("b", NULL, body, i);
        const char *eq = strrchr(t, '=');
        assert_string_equal(eq, "=protocol error");
        free(t);
    }
    /* Empty body. */
    char *t = run_lim("b", NULL, "", 0);
    assert_string_equal(t, "=protocol error");
    free(t);
}

static void test_malformed_split(void **state)
{
    /* The transcripts of test_malformed's inputs are split-invariant too. */
    static const char *bad[] = {
        "--b\r\nContent-Disposition: form-data; name=a\r\n\r\nx\r\n--b\n",
        "--b\r\nContent-Disposition: form-data; name=a\r\n\r\nxyz\r\n--bq",
        "--b\r\nContent-Disposition: form-data; name=a; filename*=utf-8''%zz\r\n\r\nx\r\n--b--",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        expect_split_only("b", NULL, bad[i], strlen(bad[i]));
}

static void test_limits(void **state)
{
    struct cv_mp_limits lim;
    cv_mp_limits_init(&lim);
    assert_int_equal(lim.max_part_head, 8192);
    assert_int_equal(lim.max_name, 100);
    assert_int_equal(lim.max_field, 1 << 20);
    assert_int_equal(lim.max_file, 20 << 20);
    assert_int_equal(lim.max_files, 10);
    assert_int_equal(lim.max_fields, 100);
    assert_int_equal(lim.max_parts, 0);

    /* Field size: exactly the limit passes, one more is refused without
     * delivering the excess byte. */
    lim.max_field = 3;
    expect_lim("b", &lim, S("--b\r\nContent-Disposition: form-data; name=a\r\n\r\nabc\r\n--b--"),
               "[P a|-|-|f][D]abc[E]=ok");
    expect_lim("b", &lim, S("--b\r\nContent-Disposition: form-data; name=a\r\n\r\nabcd\r\n--b--"),
               "[P a|-|-|f][D]abc=limit exceededField limit exceeded");
    /* A held-back CR that turns out to be data counts. */
    expect_lim("b", &lim, S("--b\r\nContent-Disposition: form-data; name=a\r\n\r\nabc\r\n--x"),
               "[P a|-|-|f][D]abc=limit exceededField limit exceeded");
    /* Files have their own size limit. */
    cv_mp_limits_init(&lim);
    lim.max_file = 2;
    expect_lim("b", &lim,
               S("--b\r\nContent-Disposition: form-data; name=a\r\n\r\nabcd\r\n"
                 "--b\r\nContent-Disposition: form-data; name=f; filename=x\r\n\r\nxy\r\n"
                 "--b\r\nContent-Disposition: form-data; name=g; filename=y\r\n\r\nxyz\r\n--b--"),
               "[P a|-|-|f][D]abcd[E][P f|x|-|F][D]xy[E][P g|y|-|F][D]xy"
               "=limit exceededFile size limit exceeded");
    /* Zero: no data at all. */
    lim.max_file = 0;
    expect_lim("b", &lim,
               S("--b\r\nContent-Disposition: form-data; name=f; filename=x\r\n\r\n\r\n--b\r\n"
                 "Content-Disposition: form-data; name=f; filename=x\r\n\r\n\x00\r\n--b--"),
               "[P f|x|-|F][E][P f|x|-|F]=limit exceededFile size limit exceeded");

    /* Counts: the (limit+1)-th trips it, before its on_part. */
    static const char two_files_two_fields[] =
        "--b\r\nContent-Disposition: form-data; name=f1; filename=x\r\n\r\n1\r\n"
        "--b\r\nContent-Disposition: form-data; name=a1\r\n\r\n2\r\n"
        "--b\r\nContent-Disposition: form-data; name=f2; filename=\"\"\r\n\r\n3\r\n"
        "--b\r\nContent-Disposition: form-data; name=a2\r\n\r\n4\r\n--b--";
    cv_mp_limits_init(&lim);
    lim.max_files = 2;
    lim.max_fields = 2;
    lim.max_parts = 4;
    expect_lim("b", &lim, S(two_files_two_fields),
               "[P f1|x|-|F][D]1[E][P a1|-|-|f][D]2[E][P f2||-|F][D]3[E][P a2|-|-|f][D]4[E]=ok");
    lim.max_files = 1;
    expect_lim("b", &lim, S(two_files_two_fields),
               "[P f1|x|-|F][D]1[E][P a1|-|-|f][D]2[E]=limit exceededFiles limit exceeded");
    lim.max_files = 2;
    lim.max_fields = 1;
    expect_lim("b", &lim, S(two_files_two_fields),
               "[P f1|x|-|F][D]1[E][P a1|-|-|f][D]2[E][P f2||-|F][D]3[E]"
               "=limit exceededFields limit exceeded");
    lim.max_fields = 0;
    expect_lim("b", &lim, S(two_files_two_fields),
               "[P f1|x|-|F][D]1[E]=limit exceededFields limit exceeded");
    lim.max_fields = 2;
    lim.max_parts = 3;
    expect_lim("b", &lim, S(two_files_two_fields),
               "[P f1|x|-|F][D]1[E][P a1|-|-|f][D]2[E][P f2||-|F][D]3[E]"
               "=limit exceededParts limit exceeded");
    /* The parts limit trips as the part begins, before its headers. */
    lim.max_parts = 1;
    expect_lim("b", &lim,
               S("--b\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--b\r\nbroken\r\n"),
               "[P a|-|-|f][D]1[E]=limit exceededParts limit exceeded");

    /* The header block: up to max_part_head bytes (its empty line included),
     * more is a framing error. */
    static const char hb[] = "--b\r\nContent-Disposition: form-data; name=a\r\n\r\n\r\n--b--";
    size_t block = strlen("Content-Disposition: form-data; name=a\r\n\r\n");
    cv_mp_limits_init(&lim);
    lim.max_part_head = block;
    expect_lim("b", &lim, S(hb), "[P a|-|-|f][E]=ok");
    lim.max_part_head = block - 1;
    expect_lim("b", &lim, S(hb), "=protocol error");
    lim.max_part_head = 0;
    expect_lim("b", &lim, S(hb), "=protocol error");
    lim.max_part_head = 1;
    expect_lim("b", &lim, S("--b\r\n\r\n"), "=protocol error");
}

static void test_name_truncation(void **state)
{
    struct cv_mp_limits lim;
    cv_mp_limits_init(&lim);
    lim.max_name = 4;
    /* Silently cut (busboy's fieldNameSize), on a character boundary. */
    expect_lim("b", &lim,
               S("--b\r\nContent-Disposition: form-data; name=abcdef\r\n\r\n\r\n"
                 "--b\r\nContent-Disposition: form-data; name=\"abc\xc3\xa9\"\r\n\r\n\r\n"
                 "--b\r\nContent-Disposition: form-data; name=\"ab\xc3\xa9z\"\r\n\r\n\r\n"
                 "--b\r\nContent-Disposition: form-data; name=abcd\r\n\r\n\r\n--b--"),
               "[P abcd|-|-|f][E][P abc|-|-|f][E][P ab\xc3\xa9|-|-|f][E][P abcd|-|-|f][E]=ok");
    char body[400];
    cv_mp_limits_init(&lim);
    int n = snprintf(body, sizeof body,
                     "--b\r\nContent-Disposition: form-data; name=\"%0150d\"\r\n\r\n\r\n--b--", 7);
    char *t = run_lim("b", &lim, body, (size_t)n);
    char want[200];
    snprintf(want, sizeof want, "[P %0100d|-|-|f][E]=ok", 0);
    assert_string_equal(t, want);
    free(t);
}

static void test_stop(void **state)
{
    static const char body[] = "--b\r\nContent-Disposition: form-data; name=a\r\n\r\nxy\r\n"
                               "--b\r\nContent-Disposition: form-data; name=c\r\n\r\nz\r\n--b--";
    /* Callbacks: P, D, E, P, D, E. Stopping at each gives CV_ECLOSED. */
    static const char *want[] = {
        "[P a|-|-|f]=closed",
        "[P a|-|-|f][D]xy=closed",
        "[P a|-|-|f][D]xy[E]=closed",
        "[P a|-|-|f][D]xy[E][P c|-|-|f]=closed",
        "[P a|-|-|f][D]xy[E][P c|-|-|f][D]z=closed",
        "[P a|-|-|f][D]xy[E][P c|-|-|f][D]z[E]=closed",
    };
    for (int i = 0; i < 6; i++) {
        size_t all = 0;
        char *t = run_split("b", NULL, S(body), &all, 1, i + 1);
        assert_string_equal(t, want[i]);
        free(t);
    }
}

static void test_binary(void **state)
{
    /* Every byte value, twice, including CR LF '-' runs, in a file part. */
    static const char head[] = "--0aB\r\nContent-Disposition: form-data; name=bin; filename=b\r\n"
                               "Content-Type: application/octet-stream\r\n\r\n";
    static const char tail[] = "\r\n--0aB--\r\n";
    uint8_t data[512 + 8];
    for (int i = 0; i < 512; i++)
        data[i] = (uint8_t)(i & 0xff);
    memcpy(data + 512, "\r\n--0a\r\n", 8);
    size_t n = sizeof head - 1 + sizeof data + sizeof tail - 1;
    char *body = malloc(n);
    memcpy(body, head, sizeof head - 1);
    memcpy(body + sizeof head - 1, data, sizeof data);
    memcpy(body + sizeof head - 1 + sizeof data, tail, sizeof tail - 1);
    char *want = escaped("[P bin|b|application/octet-stream|F][D]", data, sizeof data, "[E]=ok");
    expect_lim("0aB", NULL, body, n, want);
    free(want);
    free(body);
}

static void test_large_streamed(void **state)
{
    /* A 32 MiB file through 1000-byte pieces: every slice is zero-copy
     * except look-behind releases of at most boundary+3 bytes, and the data
     * arrives whole and in order. The data is full of CRs and near-delimiters. */
    const char *bd = "----formdata-undici-0123456789";
    static const char head[] =
        "------formdata-undici-0123456789\r\n"
        "Content-Disposition: form-data; name=\"file:F1\"; filename=\"big.bin\"\r\n\r\n";
    static const char tail[] = "\r\n------formdata-undici-0123456789--\r\n";
    size_t dn = 32u << 20, n = sizeof head - 1 + dn + sizeof tail - 1;
    char *body = malloc(n);
    assert_non_null(body);
    memcpy(body, head, sizeof head - 1);
    uint32_t x = 1;
    char *d = body + sizeof head - 1;
    static const char near[] = "\r\n------formdata-undici-012345678";
    for (size_t i = 0; i < dn;) {
        x = x * 1103515245u + 12345u;
        if ((x >> 16) % 64 == 0 && dn - i > sizeof near) {
            size_t l = 1 + (x >> 8) % (sizeof near - 1);
            memcpy(d + i, near, l);
            i += l;
        } else {
            /* Never '9', so that no near-delimiter completes. */
            d[i++] = (char)(x >> 24) == '9' ? 'x' : (char)(x >> 24);
        }
    }
    memcpy(body + sizeof head - 1 + dn, tail, sizeof tail - 1);

    struct cv_mp_limits lim;
    cv_mp_limits_init(&lim);
    lim.max_file = dn;
    size_t step = 1000;
    char *t = run_split(bd, &lim, body, n, &step, 1, 0);
    char *want = escaped("[P file:F1|big.bin|-|F][D]", d, dn, "[E]=ok");
    assert_true(strcmp(t, want) == 0);
    free(t);
    free(want);
    /* One byte less of limit: refused at the last byte. */
    lim.max_file = dn - 1;
    t = run_split(bd, &lim, body, n, &step, 1, 0);
    want =
        escaped("[P file:F1|big.bin|-|F][D]", d, dn - 1, "=limit exceededFile size limit exceeded");
    assert_true(strcmp(t, want) == 0);
    free(t);
    free(want);
    free(body);
}

static int on_part_mime(void *ud, const struct cv_mp_part *p)
{
    struct rec *r = ud;
    puts_(r, "[");
    puts_(r, p->mime_type);
    puts_(r, "|");
    puts_(r, p->filename ? cv_mp_basename(p->filename) : "-");
    puts_(r, "]");
    return 0;
}

static void test_mime_basename(void **state)
{
    /* What busboy gives Runner as mimeType and (preservePath off) filename. */
    static const char body[] =
        "--b\r\nContent-Disposition: form-data; name=a\r\n\r\n\r\n"
        "--b\r\nContent-Disposition: form-data; name=a; filename=\"C:\\\\dir\\\\x.txt\"\r\n"
        "Content-Type: Text/Plain; Charset=UTF-8\r\n\r\n\r\n"
        "--b\r\nContent-Disposition: form-data; name=a; filename=\"/etc/..\"\r\n"
        "Content-Type: image/svg+xml\r\n\r\n\r\n"
        "--b\r\nContent-Disposition: form-data; name=a; filename=\"a/b/c\"\r\n"
        "Content-Type: text\r\n\r\n\r\n"
        "--b\r\nContent-Disposition: form-data; name=a; filename=\".\"\r\n"
        "Content-Type: a/b/c\r\n\r\n\r\n"
        "--b\r\nContent-Disposition: form-data; name=a; filename=\"x/\"\r\n"
        "Content-Type: a/b; =\r\n\r\n\r\n"
        "--b\r\nContent-Disposition: form-data; name=a; filename=\"..x\"\r\n"
        "Content-Type: /b\r\n\r\n\r\n"
        "--b\r\nContent-Disposition: form-data; name=a\r\nContent-Type: a/\r\n\r\n\r\n"
        "--b\r\nContent-Disposition: form-data; name=a\r\nContent-Type:\r\n\r\n\r\n"
        "--b--";
    struct rec r = {0};
    struct cv_mp_cbs c = {on_part_mime, NULL, NULL};
    struct cv_mp *mp = cv_mp_new("b", NULL, &c, &r);
    assert_int_equal(cv_mp_feed(mp, (const uint8_t *)body, sizeof body - 1), 0);
    assert_int_equal(cv_mp_finish(mp), 0);
    cv_mp_free(mp);
    assert_string_equal(r.buf, "[text/plain|-][text/plain|x.txt][image/svg+xml|][text/plain|c]"
                               "[text/plain|][text/plain|][text/plain|..x][text/plain|-]"
                               "[text/plain|-]");
    free(r.buf);
    assert_string_equal(cv_mp_basename(""), "");
    assert_string_equal(cv_mp_basename("a"), "a");
    assert_string_equal(cv_mp_basename(".."), "");
}

static void test_api(void **state)
{
    assert_string_equal(cv_mp_limit_message(CV_MP_LIMIT_FIELD_SIZE), "Field limit exceeded");
    assert_string_equal(cv_mp_limit_message(CV_MP_LIMIT_FILE_SIZE), "File size limit exceeded");
    assert_string_equal(cv_mp_limit_message(CV_MP_LIMIT_FILES), "Files limit exceeded");
    assert_string_equal(cv_mp_limit_message(CV_MP_LIMIT_FIELDS), "Fields limit exceeded");
    assert_string_equal(cv_mp_limit_message(CV_MP_LIMIT_PARTS), "Parts limit exceeded");
    assert_string_equal(cv_mp_limit_message(CV_MP_LIMIT_NONE), "");
    /* Bad boundaries are refused at creation. */
    assert_null(cv_mp_new("", NULL, NULL, NULL));
    static const char b71[] =
        "01234567890123456789012345678901234567890123456789012345678901234567890";
    assert_null(cv_mp_new(b71, NULL, NULL, NULL));
    /* No callbacks: parsing still works. */
    struct cv_mp *mp = cv_mp_new("b", NULL, NULL, NULL);
    assert_non_null(mp);
    static const char body[] = "--b\r\nContent-Disposition: form-data; name=a\r\n\r\nx\r\n--b--";
    assert_int_equal(cv_mp_feed(mp, (const uint8_t *)body, sizeof body - 1), 0);
    assert_int_equal(cv_mp_feed(mp, (const uint8_t *)"more", 4), 0);
    assert_int_equal(cv_mp_finish(mp), 0);
    cv_mp_free(mp);
    cv_mp_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_boundary),
        cmocka_unit_test(test_runner_smart_client),
        cmocka_unit_test(test_undici_formdata),
        cmocka_unit_test(test_headers),
        cmocka_unit_test(test_preamble_epilogue),
        cmocka_unit_test(test_lookalikes),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_malformed_split),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_name_truncation),
        cmocka_unit_test(test_stop),
        cmocka_unit_test(test_binary),
        cmocka_unit_test(test_large_streamed),
        cmocka_unit_test(test_mime_basename),
        cmocka_unit_test(test_api),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
