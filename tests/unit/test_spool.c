/* gateway/spool: memory first within a shared budget, then an unnamed
 * temporary file; reads across the memory/file boundary; the budget given
 * back; O_TMPFILE and the mkstemp fallback leave no name behind; open,
 * write and read failures come back as -errno. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/err.h"
#include "gateway/spool.h"

struct fx {
    char dir[64];
    struct cv_spool_budget budget;
};

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/cv-spool-test-XXXXXX");
    if (mkdtemp(f->dir) == NULL)
        return -1;
    f->budget.max = 1000;
    *state = f;
    return 0;
}

static size_t entries(const char *dir)
{
    size_t n = 0;
    DIR *d = opendir(dir);
    assert_non_null(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    rmdir(f->dir);
    free(f);
    return 0;
}

static void fill(uint8_t *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(i * 31 + seed + (i >> 8));
}

/* Reads the whole spool back in pieces of `step` bytes. */
static void check_content(struct cv_spool *s, const uint8_t *want, size_t n, size_t step)
{
    uint8_t *got = malloc(n + 1);
    size_t off = 0, k;
    while (off < n) {
        assert_int_equal(cv_spool_read(s, off, got + off, step, &k), 0);
        assert_true(k > 0 && k <= step);
        off += k;
    }
    assert_int_equal(off, n);
    assert_memory_equal(got, want, n);
    assert_int_equal(cv_spool_read(s, n, got, 1, &k), 0);
    assert_int_equal(k, 0);
    assert_int_equal(cv_spool_read(s, n + 100, got, 1, &k), 0);
    assert_int_equal(k, 0);
    free(got);
}

static void test_memory_below_budget(void **state)
{
    struct fx *f = *state;
    struct cv_spool s;
    uint8_t data[1000];
    fill(data, sizeof data, 1);
    cv_spool_init(&s, f->dir, &f->budget);
    assert_int_equal(cv_spool_append(&s, data, 400), 0);
    assert_int_equal(cv_spool_append(&s, data + 400, 600), 0);
    assert_false(cv_spool_is_on_disk(&s));
    assert_int_equal(cv_spool_size(&s), 1000);
    assert_int_equal(f->budget.used, 1000);
    check_content(&s, data, sizeof data, 7);
    cv_spool_fini(&s);
    assert_int_equal(f->budget.used, 0);
    cv_spool_fini(&s); /* idempotent */
    assert_int_equal(f->budget.used, 0);
}

static void test_switch_to_file_at_budget(void **state)
{
    struct fx *f = *state;
    struct cv_spool s;
    size_t n = 300000;
    uint8_t *data = malloc(n);
    fill(data, n, 2);
    cv_spool_init(&s, f->dir, &f->budget);
    assert_int_equal(cv_spool_append(&s, data, 999), 0);
    assert_false(cv_spool_is_on_disk(&s));
    /* one byte still fits, the next goes to the file */
    assert_int_equal(cv_spool_append(&s, data + 999, 2), 0);
    assert_true(cv_spool_is_on_disk(&s));
    assert_int_equal(f->budget.used, 1000);
    assert_int_equal(s.mem.len, 1000);
    /* once on disk, everything goes there, even with budget freed */
    f->budget.used -= 10;
    assert_int_equal(cv_spool_append(&s, data + 1001, n - 1001), 0);
    f->budget.used += 10;
    assert_int_equal(s.mem.len, 1000);
    assert_int_equal(cv_spool_size(&s), n);
    /* a file exists, but has no name in the directory */
    assert_int_equal(entries(f->dir), 0);
    struct stat st;
    assert_int_equal(fstat(s.fd, &st), 0);
    assert_int_equal(st.st_size, n - 1000);
    assert_int_equal(st.st_nlink, 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_true(fcntl(s.fd, F_GETFD) & FD_CLOEXEC);
    check_content(&s, data, n, 65536);
    check_content(&s, data, n, 997); /* pieces across the boundary */
    uint8_t b[10];
    size_t k;
    assert_int_equal(cv_spool_read(&s, 995, b, sizeof b, &k), 0);
    assert_int_equal(k, 10);
    assert_memory_equal(b, data + 995, 10);
    int fd = s.fd;
    cv_spool_fini(&s);
    assert_int_equal(s.fd, -1);
    assert_int_equal(fcntl(fd, F_GETFD), -1); /* closed */
    assert_int_equal(f->budget.used, 0);
    free(data);
}

static void test_budget_shared(void **state)
{
    struct fx *f = *state;
    struct cv_spool a, b;
    uint8_t data[2000];
    fill(data, sizeof data, 3);
    cv_spool_init(&a, f->dir, &f->budget);
    cv_spool_init(&b, f->dir, &f->budget);
    assert_int_equal(cv_spool_append(&a, data, 800), 0);
    assert_int_equal(cv_spool_append(&b, data, 500), 0);
    assert_false(cv_spool_is_on_disk(&a));
    assert_true(cv_spool_is_on_disk(&b));
    assert_int_equal(b.mem.len, 200);
    assert_int_equal(f->budget.used, 1000);
    check_content(&b, data, 500, 64);
    cv_spool_fini(&a);
    assert_int_equal(f->budget.used, 200);
    /* the freed budget serves a new spool */
    cv_spool_init(&a, f->dir, &f->budget);
    assert_int_equal(cv_spool_append(&a, data, 800), 0);
    assert_false(cv_spool_is_on_disk(&a));
    cv_spool_fini(&a);
    cv_spool_fini(&b);
    assert_int_equal(f->budget.used, 0);
}

static void test_zero_budget(void **state)
{
    struct fx *f = *state;
    struct cv_spool_budget none = {0, 0};
    struct cv_spool s;
    uint8_t data[100];
    fill(data, sizeof data, 4);
    cv_spool_init(&s, f->dir, &none);
    assert_int_equal(cv_spool_append(&s, data, 0), 0);
    assert_false(cv_spool_is_on_disk(&s));
    assert_int_equal(cv_spool_append(&s, data, 100), 0);
    assert_true(cv_spool_is_on_disk(&s));
    check_content(&s, data, 100, 33);
    cv_spool_fini(&s);
}

static void test_mkstemp_fallback(void **state)
{
    struct fx *f = *state;
    int fd = cv_spool_mkstemp(f->dir);
    assert_true(fd >= 0);
    assert_int_equal(entries(f->dir), 0);
    assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    assert_int_equal(write(fd, "abc", 3), 3);
    char b[3];
    assert_int_equal(pread(fd, b, 3, 0), 3);
    assert_memory_equal(b, "abc", 3);
    close(fd);
    assert_int_equal(cv_spool_mkstemp("/nonexistent-cv-spool"), -ENOENT);
}

static void test_bad_dirs(void **state)
{
    struct fx *f = *state;
    char file[128];
    snprintf(file, sizeof file, "%s/plain", f->dir);
    int fd = open(file, O_CREAT | O_WRONLY, 0600);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(cv_spool_check_dir(f->dir), 0);
    assert_int_equal(cv_spool_check_dir("/nonexistent-cv-spool"), -ENOENT);
    assert_int_equal(cv_spool_check_dir(file), -ENOTDIR);

    /* an append that needs a file it cannot make fails, with the errno */
    struct cv_spool s;
    uint8_t data[1200];
    fill(data, sizeof data, 5);
    cv_spool_init(&s, "/nonexistent-cv-spool", &f->budget);
    assert_int_equal(cv_spool_append(&s, data, sizeof data), -ENOENT);
    assert_false(cv_spool_is_on_disk(&s));
    cv_spool_fini(&s);
    assert_int_equal(f->budget.used, 0);
    unlink(file);
}

static void test_no_descriptor_left(void **state)
{
    struct fx *f = *state;
    struct rlimit old, lim;
    assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
    /* the lowest free descriptor becomes the limit: no more can open */
    int probe = dup(0);
    assert_true(probe >= 0);
    close(probe);
    lim = old;
    lim.rlim_cur = (rlim_t)probe;
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &lim), 0);
    struct cv_spool s;
    uint8_t data[1500];
    fill(data, sizeof data, 6);
    cv_spool_init(&s, f->dir, &f->budget);
    int rc = cv_spool_append(&s, data, sizeof data);
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
    assert_int_equal(rc, -EMFILE);
    cv_spool_fini(&s);
    assert_int_equal(f->budget.used, 0);
}

static void test_write_failure(void **state)
{
    struct fx *f = *state;
    struct rlimit old, lim;
    /* A file size limit makes writes fail as a full disk would (EFBIG
     * instead of ENOSPC); SIGXFSZ ignored so that the write returns. */
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = 4096;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
    struct cv_spool s;
    uint8_t *data = malloc(20000);
    fill(data, 20000, 7);
    cv_spool_init(&s, f->dir, &f->budget);
    assert_int_equal(cv_spool_append(&s, data, 3000), 0); /* 1000 in memory, 2000 on disk */
    int rc = cv_spool_append(&s, data + 3000, 17000);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
    signal(SIGXFSZ, prev);
    assert_int_equal(rc, -EFBIG);
    cv_spool_fini(&s);
    assert_int_equal(f->budget.used, 0);
    assert_int_equal(entries(f->dir), 0);
    free(data);
}

static void test_read_failure(void **state)
{
    struct fx *f = *state;
    struct cv_spool s;
    uint8_t data[3000], b[100];
    size_t k = 7;
    fill(data, sizeof data, 8);
    cv_spool_init(&s, f->dir, &f->budget);
    assert_int_equal(cv_spool_append(&s, data, sizeof data), 0);
    /* the descriptor replaced by a write-only one: pread fails */
    int w = open("/dev/null", O_WRONLY);
    assert_true(w >= 0);
    assert_int_equal(dup2(w, s.fd), s.fd);
    close(w);
    assert_int_equal(cv_spool_read(&s, 1500, b, sizeof b, &k), -EBADF);
    /* the memory part still reads */
    assert_int_equal(cv_spool_read(&s, 0, b, sizeof b, &k), 0);
    assert_int_equal(k, sizeof b);
    cv_spool_fini(&s);
}

static void test_default_dir(void **state)
{
    (void)state;
    const char *old = getenv("TMPDIR");
    char *saved = old ? strdup(old) : NULL;
    setenv("TMPDIR", "/var/tmp", 1);
    assert_string_equal(cv_spool_default_dir(), "/var/tmp");
    setenv("TMPDIR", "", 1);
    assert_string_equal(cv_spool_default_dir(), "/tmp");
    unsetenv("TMPDIR");
    assert_string_equal(cv_spool_default_dir(), "/tmp");
    if (saved)
        setenv("TMPDIR", saved, 1);
    free(saved);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_memory_below_budget, setup, teardown),
        cmocka_unit_test_setup_teardown(test_switch_to_file_at_budget, setup, teardown),
        cmocka_unit_test_setup_teardown(test_budget_shared, setup, teardown),
        cmocka_unit_test_setup_teardown(test_zero_budget, setup, teardown),
        cmocka_unit_test_setup_teardown(test_mkstemp_fallback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_dirs, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_descriptor_left, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_failure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_failure, setup, teardown),
        cmocka_unit_test(test_default_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
