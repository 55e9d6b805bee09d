/* A spool: an append-only store for the bytes of one multipart file part
 * that came before the manifest (spec §8.3), read back once the call has
 * started. The first bytes stay in memory, within a budget shared by all
 * the spools of one request; the rest goes to an unnamed temporary file
 * (O_TMPFILE, else mkstemp and an immediate unlink), so that a client
 * sending large files ahead of the manifest costs disk, not memory, and
 * nothing is left behind if the process dies.
 *
 * Plain blocking file I/O: the file is local and the caller moves it in
 * bounded chunks (upload.c). Not thread-safe; one owner. */
#ifndef CV_GW_SPOOL_H
#define CV_GW_SPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

/* The memory the spools of one request may hold together. */
struct cv_spool_budget {
    size_t used;
    size_t max;
};

struct cv_spool {
    struct cv_spool_budget *budget; /* borrowed */
    const char *dir;                /* borrowed: where the file goes */
    struct cv_buf mem;              /* the first bytes (owned) */
    int fd;                         /* owned: the rest, or -1 (none yet) */
    uint64_t size;                  /* bytes appended in all */
};

/* An empty spool whose file, if it needs one, goes to dir; its memory is
 * counted in budget. Both are borrowed and must outlive the spool. */
void cv_spool_init(struct cv_spool *s, const char *dir, struct cv_spool_budget *budget);
/* Closes the file and frees the memory, returning it to the budget.
 * Idempotent; the spool may be initialised again afterwards. */
void cv_spool_fini(struct cv_spool *s);

/* Appends n bytes: to memory while the budget allows, then to the file
 * (created on first need). Returns 0, CV_ENOMEM, or -errno of the file's
 * creation or a write (-ENOSPC, -EIO, -EMFILE...). After a failure the
 * spool's content is undefined: the caller gives it up (cv_spool_fini). */
int cv_spool_append(struct cv_spool *s, const void *p, size_t n);
/* Bytes appended so far. */
uint64_t cv_spool_size(const struct cv_spool *s);
/* Whether some bytes went to the file. */
bool cv_spool_is_on_disk(const struct cv_spool *s);
/* Copies up to cap bytes from offset off into buf; *got is how many (0 at
 * or past the end). Returns 0 or -errno of the file read (-EIO...). */
int cv_spool_read(const struct cv_spool *s, uint64_t off, void *buf, size_t cap, size_t *got);

/* The directory used when none is configured: $TMPDIR if set and not
 * empty, else /tmp. */
const char *cv_spool_default_dir(void);
/* An unnamed read-write temporary file in dir (close-on-exec, mode 0600):
 * O_TMPFILE where the file system supports it, else cv_spool_mkstemp.
 * Returns the descriptor or -errno. */
int cv_spool_tmpfile(const char *dir);
/* The fallback alone: mkostemp in dir, then unlink. Returns the
 * descriptor or -errno. */
int cv_spool_mkstemp(const char *dir);
/* Checks that dir can hold spool files (creates and drops one). Returns 0
 * or -errno (-ENOENT, -ENOTDIR, -EACCES, -EROFS...). */
int cv_spool_check_dir(const char *dir);

#endif
