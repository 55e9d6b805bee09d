#define _GNU_SOURCE /* O_TMPFILE, mkostemp */
#include "gateway/spool.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/err.h"

void cv_spool_init(struct cv_spool *s, const char *dir, struct cv_spool_budget *budget)
{
    s->budget = budget;
    s->dir = dir;
    cv_buf_init(&s->mem, budget->max);
    s->fd = -1;
    s->size = 0;
}

void cv_spool_fini(struct cv_spool *s)
{
    if (s->fd >= 0)
        close(s->fd);
    s->fd = -1;
    if (s->budget != NULL)
        s->budget->used -= s->mem.len;
    cv_buf_fini(&s->mem);
    s->size = 0;
}

const char *cv_spool_default_dir(void)
{
    const char *d = getenv("TMPDIR");
    return d != NULL && *d != '\0' ? d : "/tmp";
}

int cv_spool_mkstemp(const char *dir)
{
    char path[4096];
    int n = snprintf(path, sizeof path, "%s/culvert-spool-XXXXXX", dir);
    if (n < 0 || (size_t)n >= sizeof path)
        return -ENAMETOOLONG;
    int fd = mkostemp(path, O_CLOEXEC);
    if (fd < 0)
        return -errno;
    /* Unnamed from now on: the space goes back when the descriptor
     * closes, even if the process is killed. */
    if (unlink(path) != 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    return fd;
}

int cv_spool_tmpfile(const char *dir)
{
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0)
        return fd;
    /* Kernels or file systems without O_TMPFILE answer one of these
     * (older kernels see O_DIRECTORY alone: EISDIR). */
    if (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL)
        return cv_spool_mkstemp(dir);
    return -errno;
}

int cv_spool_check_dir(const char *dir)
{
    int fd = cv_spool_tmpfile(dir);
    if (fd < 0)
        return fd;
    close(fd);
    return 0;
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (k == 0)
            return -EIO;
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

int cv_spool_append(struct cv_spool *s, const void *p, size_t n)
{
    const uint8_t *b = p;
    /* Memory first, but only until the file exists: the file then holds
     * everything past the memory prefix, in order. */
    if (s->fd < 0) {
        size_t room = s->budget->max - s->budget->used;
        size_t k = n < room ? n : room;
        if (k > 0) {
            int rc = cv_buf_append(&s->mem, b, k);
            if (rc < 0)
                return rc == CV_ETOOBIG ? CV_ENOMEM : rc;
            s->budget->used += k;
            s->size += k;
            b += k;
            n -= k;
        }
        if (n == 0)
            return 0;
        int fd = cv_spool_tmpfile(s->dir);
        if (fd < 0)
            return fd;
        s->fd = fd;
    }
    int rc = write_all(s->fd, b, n);
    if (rc < 0)
        return rc;
    s->size += n;
    return 0;
}

uint64_t cv_spool_size(const struct cv_spool *s)
{
    return s->size;
}

bool cv_spool_is_on_disk(const struct cv_spool *s)
{
    return s->fd >= 0;
}

int cv_spool_read(const struct cv_spool *s, uint64_t off, void *buf, size_t cap, size_t *got)
{
    uint8_t *out = buf;
    size_t n = 0;
    *got = 0;
    if (off >= s->size)
        return 0;
    if (cap > s->size - off)
        cap = (size_t)(s->size - off);
    if (off < s->mem.len) {
        n = s->mem.len - (size_t)off;
        if (n > cap)
            n = cap;
        memcpy(out, cv_buf_head(&s->mem) + off, n);
        off += n;
    }
    while (n < cap) {
        ssize_t k = pread(s->fd, out + n, cap - n, (off_t)(off - s->mem.len));
        if (k < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (k == 0)
            return -EIO; /* shorter than what was written: the file is damaged */
        n += (size_t)k;
        off += (uint64_t)k;
    }
    *got = n;
    return 0;
}
