/* Config files for the commands (`--config FILE`): INI syntax parsed by
 * inih (Debian's libinih), with the long flag names as keys, so a file
 * holds exactly what the command line could:
 *
 *     # relay.conf
 *     listen = 0.0.0.0:8001
 *     token = s3cret
 *     allow-ports = 20000-20999
 *     allow-anonymous = false
 *
 * Keys live outside any section or in a section named after the command
 * ([relay], [agent]). Repeatable flags repeat their key. Flags without a
 * value take true/false (yes/no, on/off, 1/0). Flags given on the command
 * line come after the file, so they win.
 *
 * Every entry is checked when the file is loaded, by the command's own
 * parser, so a bad file is refused with its line and the command's usual
 * message, and nothing of it is applied. */
#ifndef CV_CLI_CONFIG_H
#define CV_CLI_CONFIG_H

#include <getopt.h>
#include <stdbool.h>
#include <stddef.h>

struct cv_cli_conf {
    char **argv; /* owned: the file's entries as flags ("--key", "value", ...) */
    int argc;
};

/* Checks one flag (argv = {prog, "--key"[, "value"]}); returns 0, or
 * nonzero after reporting through cv_cli_error. */
typedef int (*cv_cli_conf_check)(int argc, char **argv, void *ud);

/* Loads path. section: the command's name. Returns 0, or -1 with
 * "PATH:LINE: reason" in err. */
int cv_cli_conf_load(const char *path, const char *section, const struct option *longopts,
                     cv_cli_conf_check check, void *ud, struct cv_cli_conf *out, char *err,
                     size_t errlen);
void cv_cli_conf_free(struct cv_cli_conf *c);

/* The value of --config in argv (either "--config FILE" or "--config=FILE"),
 * or NULL. */
const char *cv_cli_conf_path(int argc, char **argv);

/* Builds {argv[0], file flags..., argv[1..] without --config}: the command
 * line wins over the file. Returns a malloc'd array (free it, not its
 * strings) or NULL. */
char **cv_cli_conf_merge(const struct cv_cli_conf *c, int argc, char **argv, int *out_argc);

/* True while a config entry is being checked (errors are captured). */
bool cv_cli_capturing(void);

/* Reports a command-line error: to stderr, prefixed with prefix, or into
 * the capture buffer while a config entry is being checked. */
void cv_cli_error(const char *prefix, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
