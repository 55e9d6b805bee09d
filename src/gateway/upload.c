/* Multipart mode (spec §8.3) on the streaming parser of codec/multipart.h.
 *
 * The call starts as soon as the __manifest field decodes; its input is
 * the manifest's "input" member, byte for byte, with the file sentinels
 * in place. File parts ("file:<id>") that come before the manifest are
 * buffered (each within the file-size limit) and replayed once the call
 * has started; later ones are streamed to the backend as they arrive,
 * with the core's flow control. When the backend answers before the body
 * has ended, the answer is held: a multipart failure found later (bad
 * framing, a limit, a sentinel whose part never came) replaces it. */
#include <stdlib.h>
#include <string.h>

#include "codec/multipart.h"
#include "codec/rjson.h"
#include "core/err.h"
#include "core/log.h"
#include "gateway/gw.h"

/* Files a manifest may name (each then needs its part). */
#define MAX_SENTINELS 1024

enum cur { CUR_NONE, CUR_MANIFEST, CUR_EARLY, CUR_LIVE };

struct sentinel {
    char *id;      /* owned */
    json_t *meta;  /* owned: the manifest's meta object (or NULL) */
    bool received; /* its part began */
    bool ended;    /* ... and ended */
};

struct early {
    struct early *next;
    char *id, *filename, *mime; /* owned */
    struct cv_buf data;
};

struct gw_upload {
    struct cv_mp *mp;
    struct cv_mp_limits lim;
    struct cv_buf manifest;
    bool manifest_seen, started, done;
    bool failing; /* answers the backend gives while we fail are dropped */
    enum cur cur;
    struct sentinel *sent; /* owned array */
    size_t nsent;
    struct sentinel *live; /* the sentinel of the current live part */
    struct early *early, *cur_early;
    /* the failure to answer, set inside parser callbacks */
    int fail_status;
    const char *fail_code;
    char fail_msg[160];
};

static void set_fail(struct gw_upload *u, int status, const char *code, const char *msg)
{
    if (u->fail_status)
        return;
    u->fail_status = status;
    u->fail_code = code;
    snprintf(u->fail_msg, sizeof u->fail_msg, "%s", msg);
}

static struct sentinel *find_sentinel(struct gw_upload *u, const char *id)
{
    for (size_t i = 0; i < u->nsent; i++)
        if (strcmp(u->sent[i].id, id) == 0)
            return &u->sent[i];
    return NULL;
}

/* Collects {"$runnerFile":"File","id":...,"meta":{...}} objects. */
static int collect(struct gw_upload *u, json_t *v, int depth)
{
    if (depth > CV_RJ_MAX_DEPTH)
        return 0;
    if (json_is_array(v)) {
        size_t i;
        json_t *x;
        json_array_foreach(v, i, x)
        {
            int rc = collect(u, x, depth + 1);
            if (rc < 0)
                return rc;
        }
        return 0;
    }
    if (!json_is_object(v))
        return 0;
    const char *tag = json_string_value(json_object_get(v, "$runnerFile"));
    const char *id = json_string_value(json_object_get(v, "id"));
    if (tag != NULL && strcmp(tag, "File") == 0 && id != NULL) {
        if (find_sentinel(u, id) != NULL)
            return 0;
        if (u->nsent >= MAX_SENTINELS)
            return CV_ETOOBIG;
        struct sentinel *s = realloc(u->sent, (u->nsent + 1) * sizeof *s);
        if (s == NULL)
            return CV_ENOMEM;
        u->sent = s;
        json_t *meta = json_object_get(v, "meta");
        s[u->nsent] = (struct sentinel){strdup(id), json_is_object(meta) ? json_incref(meta) : NULL,
                                        false, false};
        if (s[u->nsent].id == NULL)
            return CV_ENOMEM;
        u->nsent++;
        return 0;
    }
    const char *k;
    json_t *x;
    json_object_foreach(v, k, x)
    {
        int rc = collect(u, x, depth + 1);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* The metadata the backend gets: the manifest's, gaps filled from the
 * part headers (filename -> name, content type -> type). */
static char *merged_meta(const struct sentinel *s, const char *filename, const char *mime)
{
    json_t *m = s->meta ? json_deep_copy(s->meta) : json_object();
    if (m == NULL)
        return NULL;
    if (!json_is_string(json_object_get(m, "name")))
        json_object_set_new(m, "name", json_string(filename ? filename : "upload"));
    if (!json_is_string(json_object_get(m, "type")))
        json_object_set_new(m, "type", json_string(mime ? mime : "application/octet-stream"));
    char *txt = json_dumps(m, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(m);
    return txt;
}

static void open_file(struct cv_gw_req *r, struct sentinel *s, const char *filename,
                      const char *mime)
{
    s->received = true;
    if (r->finished)
        return;
    char *meta = merged_meta(s, filename, mime);
    if (meta == NULL) {
        gw_fail_call(r, 500, "INTERNAL_ERROR", "Internal Error");
        return;
    }
    r->be->ops->file_open(r->be, r, s->id, meta, strlen(meta));
    free(meta);
}

/* The manifest is complete: decode it and start the call. Returns 0, or
 * -1 with the failure set. */
static int manifest_ready(struct cv_gw_req *r)
{
    struct gw_upload *u = r->up;
    char *p = (char *)cv_buf_head(&u->manifest);
    size_t n = u->manifest.len;
    const char *why;
    struct cv_rj_top top;

    u->manifest_seen = true;
    if (n == 0 || cv_rj_compact(p, n, p, &n, &why) != 0) {
        set_fail(u, 400, "INVALID_MULTIPART", "Invalid manifest");
        return -1;
    }
    if (cv_rj_top_scan(p, n, &top) != 0 || !top.is_object) {
        set_fail(u, 400, "MISSING_MANIFEST", "Missing manifest");
        return -1;
    }
    json_t *tree = json_loadb(p, n, 0, NULL);
    int rc = tree ? collect(u, json_object_get(tree, "input"), 0) : CV_EPROTO;
    json_decref(tree);
    if (rc == CV_ETOOBIG || (rc == 0 && u->nsent > u->lim.max_files)) {
        set_fail(u, 413, "PAYLOAD_TOO_LARGE", cv_mp_limit_message(CV_MP_LIMIT_FILES));
        return -1;
    }
    if (rc < 0) {
        set_fail(u, 400, "INVALID_MULTIPART", "Invalid manifest");
        return -1;
    }
    if (top.input.present) {
        r->call.input = p + top.input.off;
        r->call.input_len = top.input.len;
    } else {
        r->call.input = CV_RJ_UNDEFINED;
        r->call.input_len = sizeof(CV_RJ_UNDEFINED) - 1;
    }
    u->started = true;
    gw_start(r);
    /* Replay the file parts that came first. */
    for (struct early *e = u->early; e && !r->finished && !r->answered; e = e->next) {
        struct sentinel *s = find_sentinel(u, e->id);
        if (s == NULL || s->received)
            continue;
        open_file(r, s, e->filename, e->mime);
        if (!r->finished && e->data.len > 0)
            gw_stream_in(r, s->id, cv_buf_head(&e->data), e->data.len);
        s->ended = true;
        if (!r->finished)
            r->be->ops->stream_end(r->be, r, s->id, NULL);
    }
    return 0;
}

static int on_part(void *ud, const struct cv_mp_part *part)
{
    struct cv_gw_req *r = ud;
    struct gw_upload *u = r->up;

    u->cur = CUR_NONE;
    if (!part->is_file && strcmp(part->name, "__manifest") == 0) {
        if (!u->manifest_seen)
            u->cur = CUR_MANIFEST;
        return 0;
    }
    if (!part->is_file || strncmp(part->name, "file:", 5) != 0)
        return 0; /* other fields and files: drained, counted by the limits */
    const char *id = part->name + 5;
    if (u->started) {
        struct sentinel *s = find_sentinel(u, id);
        if (s == NULL || s->received)
            return 0;
        open_file(r, s, part->filename, part->mime_type);
        u->live = s;
        u->cur = CUR_LIVE;
        return 0;
    }
    for (struct early *e = u->early; e; e = e->next)
        if (strcmp(e->id, id) == 0)
            return 0;
    struct early *e = calloc(1, sizeof *e);
    if (e == NULL)
        return -1;
    e->id = strdup(id);
    e->filename = strdup(part->filename ? part->filename : "upload");
    e->mime = strdup(part->mime_type);
    cv_buf_init(&e->data, u->lim.max_file + 1);
    e->next = u->early;
    u->early = e;
    if (e->id == NULL || e->filename == NULL || e->mime == NULL)
        return -1;
    u->cur_early = e;
    u->cur = CUR_EARLY;
    return 0;
}

static int on_data(void *ud, const uint8_t *p, size_t n)
{
    struct cv_gw_req *r = ud;
    struct gw_upload *u = r->up;
    switch (u->cur) {
    case CUR_MANIFEST: return cv_buf_append(&u->manifest, p, n) < 0 ? -1 : 0;
    case CUR_EARLY: return cv_buf_append(&u->cur_early->data, p, n) < 0 ? -1 : 0;
    case CUR_LIVE:
        if (!r->finished)
            gw_stream_in(r, u->live->id, p, n);
        return 0;
    default: return 0;
    }
}

static int on_part_end(void *ud)
{
    struct cv_gw_req *r = ud;
    struct gw_upload *u = r->up;
    enum cur cur = u->cur;
    u->cur = CUR_NONE;
    if (cur == CUR_MANIFEST)
        return manifest_ready(r) < 0 ? -1 : 0;
    if (cur == CUR_LIVE) {
        u->live->ended = true;
        if (!r->finished)
            r->be->ops->stream_end(r->be, r, u->live->id, NULL);
    }
    return 0;
}

static const struct cv_mp_cbs g_cbs = {on_part, on_data, on_part_end};

/* Ends the upload with a failure: every open file stream is cut, the
 * backend cancelled, any held answer dropped, the error sent. */
static void fail_now(struct cv_gw_req *r)
{
    struct gw_upload *u = r->up;
    u->done = true;
    u->failing = true;
    r->holding = false;
    cv_log_info("gateway: %s: multipart refused: %s (rid %s)", r->id, u->fail_msg, r->rid);
    if (r->started && !r->finished) {
        static const char err[] = "{\"message\":\"Internal Error\",\"code\":\"STREAM_ERROR\"}";
        for (size_t i = 0; i < u->nsent && !r->finished; i++) {
            struct sentinel *s = &u->sent[i];
            if (s->received && !s->ended) {
                s->ended = true;
                r->be->ops->stream_end(r->be, r, s->id, err);
            }
        }
    }
    /* A backend that answered meanwhile was held: gw_fail_call cancels
     * what is left and sends the failure instead. */
    gw_fail_call(r, u->fail_status, u->fail_code, u->fail_msg);
}

void gw_upload_begin(struct cv_gw_req *r, const char *ctype, size_t len)
{
    char boundary[CV_MP_MAX_BOUNDARY + 1];
    struct gw_upload *u = calloc(1, sizeof *u);
    if (u == NULL) {
        gw_fail_call(r, 500, "INTERNAL_ERROR", "Internal Error");
        return;
    }
    r->up = u;
    u->lim = r->gw->mp;
    cv_buf_init(&u->manifest, u->lim.max_field + 1);
    if (cv_mp_boundary(ctype, len, boundary) != 0 ||
        (u->mp = cv_mp_new(boundary, &u->lim, &g_cbs, r)) == NULL) {
        set_fail(u, 400, "INVALID_MULTIPART", "Invalid multipart payload");
        fail_now(r);
    }
}

void gw_upload_data(struct cv_gw_req *r, const uint8_t *p, size_t n)
{
    struct gw_upload *u = r->up;
    if (u == NULL || u->done)
        return;
    int rc = cv_mp_feed(u->mp, p, n);
    if (rc == 0)
        return;
    if (rc == CV_ETOOBIG)
        set_fail(u, 413, "PAYLOAD_TOO_LARGE", cv_mp_limit_message(cv_mp_limit_hit(u->mp)));
    else
        set_fail(u, 400, "INVALID_MULTIPART", "Invalid multipart payload");
    fail_now(r);
}

void gw_upload_end(struct cv_gw_req *r)
{
    struct gw_upload *u = r->up;
    if (u == NULL || u->done)
        return;
    if (cv_mp_finish(u->mp) != 0)
        set_fail(u, 400, "INVALID_MULTIPART", "Invalid multipart payload");
    else if (!u->manifest_seen)
        set_fail(u, 400, "MISSING_MANIFEST", "Missing manifest");
    for (size_t i = 0; i < u->nsent && !u->fail_status; i++) {
        if (!u->sent[i].received) {
            /* §14.6: the client's fault, so a 400 with the same code. */
            char msg[160];
            snprintf(msg, sizeof msg, "Missing file part for id %s", u->sent[i].id);
            set_fail(u, 400, "MISSING_FILE_PART", msg);
        }
    }
    if (u->fail_status) {
        fail_now(r);
        return;
    }
    u->done = true;
    if (r->holding) {
        r->holding = false;
        gw_answer(r, r->held_status, cv_buf_head(&r->held), r->held.len);
    }
}

bool gw_upload_hold(struct cv_gw_req *r, int status, const void *body, size_t len)
{
    struct gw_upload *u = r->up;
    if (u != NULL && u->failing)
        return true; /* replaced by the failure being sent */
    if (u == NULL || u->done)
        return false;
    cv_buf_reset(&r->held);
    if (cv_buf_append(&r->held, body, len) < 0)
        return false;
    r->held_status = status;
    r->holding = true;
    return true;
}

void gw_upload_abort(struct cv_gw_req *r)
{
    if (r->up != NULL) {
        r->up->done = true;
        r->holding = false;
    }
}

void gw_upload_free(struct cv_gw_req *r)
{
    struct gw_upload *u = r->up;
    if (u == NULL)
        return;
    cv_mp_free(u->mp);
    cv_buf_fini(&u->manifest);
    for (size_t i = 0; i < u->nsent; i++) {
        free(u->sent[i].id);
        json_decref(u->sent[i].meta);
    }
    free(u->sent);
    struct early *e = u->early;
    while (e) {
        struct early *next = e->next;
        free(e->id);
        free(e->filename);
        free(e->mime);
        cv_buf_fini(&e->data);
        free(e);
        e = next;
    }
    free(u);
    r->up = NULL;
}
