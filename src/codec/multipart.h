/* multipart/form-data (RFC 7578, RFC 2046 §5.1) streaming parser. Pure: no I/O.
 *
 * Written here rather than taken from a library: Debian ships no
 * standalone streaming multipart parser for C (libmicrohttpd's post
 * processor is bound to its own connections), and the gateway needs part
 * bodies handed on as zero-copy slices while they arrive.
 *
 * Feed any split of the body; the parser calls back for each part's
 * headers (name, filename, content type, with quoted-string \" and \\
 * unescaped, other backslashes kept, as busboy does) and for each run of part data (a slice of the caller's
 * buffer, or of the parser's small boundary look-behind), and enforces
 * limits. The preamble and epilogue are ignored.
 *
 * Framing (RFC 2046 §5.1.1): a delimiter is CRLF "--" boundary (the first
 * may open the body without the CRLF). It always ends the part, since the
 * boundary cannot occur in data; it must be followed by transport padding
 * (SP/HT) and CRLF, or by "--" (the close delimiter, after which anything
 * is ignored), else CV_EPROTO. "\r\n--boundarX" and the like are data.
 * Part headers are CRLF lines up to an empty line (obs-fold unfolded;
 * names case-insensitive; the first Content-Disposition and Content-Type
 * are used, others ignored). Content-Disposition must be form-data with a
 * name; repeated parameters: the first wins; filename* (RFC 8187, UTF-8 or
 * ISO-8859-1, percent-decoded) is preferred over filename; a filename,
 * even empty, makes the part a file. Names longer than max_name are cut
 * to it (on a UTF-8 character boundary) without error. Filenames are
 * passed as sent (cv_mp_basename gives busboy's version).
 *
 * Where the reference (Runner 5.5.0 on busboy 1.6.0) differs:
 * - busboy ends a part at CRLF--boundary too, but then silently skips
 *   to the next delimiter instead of failing, and knows no padding;
 * - a part without Content-Disposition, or not form-data, is skipped by
 *   busboy, CV_EPROTO here;
 * - busboy makes filename="" a field, and a part typed
 *   application/octet-stream a file even without a filename;
 * - busboy never truncates multipart names (fieldNameSize is applied to
 *   urlencoded bodies only, and Runner does not set it);
 * - busboy trips a size limit when a part reaches it (a file of exactly
 *   20 MiB is refused), the parts limit as the limit-th part ends;
 * - busboy caps a header block at 16 KiB.
 *
 * Callbacks run synchronously inside cv_mp_feed, in the order on_part,
 * on_data*, on_part_end for each part; parts never overlap. on_part_end
 * comes once the next delimiter line is complete and valid. After an
 * error (including a stop), no further callback is made, and the current
 * part gets no on_part_end. Callbacks must not feed or free the parser. */
#ifndef CV_MULTIPART_H
#define CV_MULTIPART_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CV_MP_MAX_BOUNDARY 70

/* Extracts the boundary parameter from a Content-Type value
 * ("multipart/form-data; boundary=..." any case, quoted or token). Returns
 * 0 and copies it NUL-terminated to out (CV_MP_MAX_BOUNDARY + 1 bytes), or
 * CV_EPROTO (not multipart/form-data, missing, empty, too long, bad chars). */
int cv_mp_boundary(const char *content_type, size_t len, char *out);

/* Per-body limits; 0 means "no limit" for parts only (others must be set).
 * Counts trip on the (limit+1)-th file, field or part (files and fields as
 * busboy's do): parts as the part begins, files and fields once its
 * headers are read (before on_part). Sizes trip on the first data byte
 * past the limit; the bytes up to the limit are delivered, not the excess.
 * A header block (its final empty line included) over max_part_head is
 * CV_EPROTO. */
struct cv_mp_limits {
    size_t max_part_head;   /* bytes of one part's header block (8 KiB) */
    size_t max_name;        /* field name bytes (100) */
    uint64_t max_field;     /* bytes of one non-file field (1 MiB) */
    uint64_t max_file;      /* bytes of one file part (20 MiB) */
    uint32_t max_files;     /* file parts (10) */
    uint32_t max_fields;    /* non-file fields (100) */
    uint32_t max_parts;     /* all parts (0: unlimited) */
};
void cv_mp_limits_init(struct cv_mp_limits *l);

/* Which limit was hit (for the §4.1 413 messages). */
enum cv_mp_limit {
    CV_MP_LIMIT_NONE = 0,
    CV_MP_LIMIT_FIELD_SIZE, /* "Field limit exceeded" */
    CV_MP_LIMIT_FILE_SIZE,  /* "File size limit exceeded" */
    CV_MP_LIMIT_FILES,      /* "Files limit exceeded" */
    CV_MP_LIMIT_FIELDS,     /* "Fields limit exceeded" */
    CV_MP_LIMIT_PARTS       /* "Parts limit exceeded" */
};
const char *cv_mp_limit_message(enum cv_mp_limit l);

/* One part's headers, valid during on_part only. */
struct cv_mp_part {
    const char *name;     /* Content-Disposition name (NUL-terminated) */
    const char *filename; /* NULL when absent (a plain field) */
    const char *content_type; /* NULL when absent */
    bool is_file;         /* filename present */
    /* What busboy reports as mimeType (Runner fills a missing manifest
     * type with it): Content-Type's type/subtype in lower case, parameters
     * dropped; "text/plain" when absent or malformed. Never NULL. */
    const char *mime_type;
};

struct cv_mp_cbs {
    /* A part begins. Return 0, or nonzero to stop parsing (cv_mp_feed
     * then returns CV_ECLOSED). */
    int (*on_part)(void *ud, const struct cv_mp_part *part);
    /* Data of the current part (borrowed). Same return convention. */
    int (*on_data)(void *ud, const uint8_t *p, size_t n);
    /* The current part ended. Same return convention. */
    int (*on_part_end)(void *ud);
};

struct cv_mp; /* opaque; one per body */

/* Creates a parser for boundary (from cv_mp_boundary). lim NULL: the
 * defaults; cbs NULL or a NULL member: no callback. One allocation of
 * about 2 * max_part_head bytes; nothing else is allocated later. Returns
 * NULL on ENOMEM or a boundary that is empty or over CV_MP_MAX_BOUNDARY. */
struct cv_mp *cv_mp_new(const char *boundary, const struct cv_mp_limits *lim,
                        const struct cv_mp_cbs *cbs, void *ud);
void cv_mp_free(struct cv_mp *mp);

/* Feeds body bytes. Returns 0, CV_EPROTO (malformed: bad delimiter line,
 * bad or missing Content-Disposition, header block too long, data after
 * the close delimiter is fine and ignored), CV_ETOOBIG (a limit: see
 * cv_mp_limit_hit) or CV_ECLOSED (a callback stopped it). After an error
 * every later call returns the same error. */
int cv_mp_feed(struct cv_mp *mp, const uint8_t *p, size_t n);
/* The body ended: returns 0 if the close delimiter was seen, else CV_EPROTO
 * (or the earlier error). */
int cv_mp_finish(struct cv_mp *mp);
enum cv_mp_limit cv_mp_limit_hit(const struct cv_mp *mp);

/* The file name as busboy hands it to Runner (preservePath off): the part
 * after the last '/' or '\\', and "" for "." and "..". Returns a pointer
 * into filename, or to a static "". */
const char *cv_mp_basename(const char *filename);

#endif
