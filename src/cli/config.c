#include "cli/config.h"

#include <ini.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* While a config entry is checked, errors land here instead of stderr. */
static char *capture;
static size_t capture_len;

bool cv_cli_capturing(void) { return capture != NULL; }

void cv_cli_error(const char *prefix, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (capture != NULL && capture[0] == 0) {
        vsnprintf(capture, capture_len, fmt, ap);
        size_t n = strlen(capture);
        while (n > 0 && capture[n - 1] == '\n')
            capture[--n] = 0;
    } else if (capture == NULL) {
        fprintf(stderr, "%s", prefix);
        vfprintf(stderr, fmt, ap);
    }
    va_end(ap);
}

struct load {
    const char *section;
    const struct option *longopts;
    cv_cli_conf_check check;
    void *ud;
    struct cv_cli_conf *out;
    char why[512];
    int why_line;
    FILE *f;
    int line; /* lines read so far: the current entry's line */
};

static char *read_line(char *str, int num, void *stream)
{
    struct load *l = stream;
    char *r = fgets(str, num, l->f);
    if (r != NULL)
        l->line++;
    return r;
}

static int push(struct cv_cli_conf *c, const char *s)
{
    char **a = realloc(c->argv, sizeof *a * (size_t)(c->argc + 2));
    if (a == NULL)
        return -1;
    c->argv = a;
    if ((a[c->argc] = strdup(s)) == NULL)
        return -1;
    a[++c->argc] = NULL;
    return 0;
}

static int parse_bool(const char *v, bool *out)
{
    static const char *const yes[] = {"true", "yes", "on", "1"}, *const no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < 4; i++) {
        if (strcasecmp(v, yes[i]) == 0)
            return *out = true, 0;
        if (strcasecmp(v, no[i]) == 0)
            return *out = false, 0;
    }
    return -1;
}

/* inih calls this per entry; returning 0 marks the line as an error and
 * ini_parse returns the first such line. Only the first reason is kept. */
static int on_entry(void *user, const char *section, const char *name, const char *value)
{
    struct load *l = user;
    if (l->why[0])
        return 1; /* already failed: the first error is the one reported */
    l->why_line = l->line;
    if (section[0] && strcmp(section, l->section) != 0) {
        snprintf(l->why, sizeof l->why, "unknown section [%s] (use [%s] or none)", section,
                 l->section);
        return 0;
    }
    const struct option *o = l->longopts;
    while (o->name && strcmp(o->name, name) != 0)
        o++;
    if (o->name == NULL || strcmp(name, "config") == 0 || strcmp(name, "help") == 0 ||
        strcmp(name, "version") == 0) {
        snprintf(l->why, sizeof l->why, "unknown key '%s' (keys are the long flag names)", name);
        return 0;
    }
    char flag[128];
    snprintf(flag, sizeof flag, "--%s", name);
    char *argv[4] = {(char *)l->section, flag, (char *)value, NULL};
    int argc = 3;
    if (o->has_arg == no_argument) {
        bool on;
        if (parse_bool(value, &on) != 0) {
            snprintf(l->why, sizeof l->why, "'%s' wants true or false, got '%s'", name, value);
            return 0;
        }
        if (!on)
            return 1;
        argc = 2;
        argv[2] = NULL;
    }
    char msg[400] = "";
    capture = msg;
    capture_len = sizeof msg;
    int bad = l->check(argc, argv, l->ud);
    capture = NULL;
    if (bad) {
        snprintf(l->why, sizeof l->why, "%s", msg[0] ? msg : "invalid value");
        return 0;
    }
    if (push(l->out, flag) != 0 || (argc == 3 && push(l->out, value) != 0)) {
        snprintf(l->why, sizeof l->why, "out of memory");
        return 0;
    }
    return 1;
}

int cv_cli_conf_load(const char *path, const char *section, const struct option *longopts,
                     cv_cli_conf_check check, void *ud, struct cv_cli_conf *out, char *err,
                     size_t errlen)
{
    memset(out, 0, sizeof *out);
    struct load l = {.section = section, .longopts = longopts, .check = check, .ud = ud, .out = out};
    l.f = fopen(path, "r");
    if (l.f == NULL) {
        snprintf(err, errlen, "%s: cannot read: %m", path);
        return -1;
    }
    int line = ini_parse_stream(read_line, &l, on_entry, &l);
    fclose(l.f);
    if (line != 0) {
        if (line < 0)
            snprintf(err, errlen, "%s: cannot read it", path);
        else if (l.why[0] && l.why_line <= line)
            snprintf(err, errlen, "%s:%d: %s", path, l.why_line, l.why);
        else
            snprintf(err, errlen, "%s:%d: syntax error (expected 'key = value' or '[section]')",
                     path, line);
        cv_cli_conf_free(out);
        return -1;
    }
    return 0;
}

void cv_cli_conf_free(struct cv_cli_conf *c)
{
    for (int i = 0; i < c->argc; i++)
        free(c->argv[i]);
    free(c->argv);
    c->argv = NULL;
    c->argc = 0;
}

const char *cv_cli_conf_path(int argc, char **argv)
{
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0)
            break;
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
            path = argv[++i];
        else if (strncmp(argv[i], "--config=", 9) == 0)
            path = argv[i] + 9;
    }
    return path;
}

char **cv_cli_conf_merge(const struct cv_cli_conf *c, int argc, char **argv, int *out_argc)
{
    char **a = malloc(sizeof *a * (size_t)(argc + c->argc + 1));
    if (a == NULL)
        return NULL;
    int n = 0;
    a[n++] = argv[0];
    for (int i = 0; i < c->argc; i++)
        a[n++] = c->argv[i];
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
            i++;
            continue;
        }
        if (strncmp(argv[i], "--config=", 9) == 0)
            continue;
        a[n++] = argv[i];
    }
    a[n] = NULL;
    *out_argc = n;
    return a;
}
