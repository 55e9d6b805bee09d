/* Flag handling shared by the commands: usage errors, HOST:PORT values,
 * the log level, environment fallbacks and the TLS client of wss:// URLs.
 * Functions that report return the command's convention: -1 to go on, or
 * the exit status after reporting. */
#ifndef CV_CLI_FLAGS_H
#define CV_CLI_FLAGS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Reports a usage error the way clap does ("error: MSG", a blank line and
 * "For more information, try 'PROG --help'." on stderr), or into the
 * capture while a config entry is checked (cv_cli_error). Returns 2. */
int cv_cli_usage_error(const char *prog, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Parses the value of --NAME, HOST:PORT with a numeric host, into host
 * (hostlen bytes) and port. Returns -1, or 2 after reporting "PREFIX--NAME
 * wants HOST:PORT with a numeric host, got 'VALUE'" through cv_cli_error. */
int cv_cli_hostport(const char *prefix, const char *name, const char *value, char *host,
                    size_t hostlen, uint16_t *port);

/* Sets the log level named by value (trace, debug, info, warn, error; NULL:
 * info). Returns 0, or CV_EINVAL with the level unchanged. */
int cv_cli_log_level(const char *value);

/* given if not NULL, else the environment variable name, where an empty
 * variable counts as unset; NULL if neither. */
const char *cv_cli_env_or(const char *given, const char *name);

/* Sets up the TLS client of a wss:// URL: --trust-ca FILE (NULL: the
 * system store) or --insecure, which exclude each other. --insecure logs
 * a warning that ends "read or alter the WHAT". Returns -1, or 2 after
 * reporting (a usage error through cv_cli_usage_error(prog, ...), or
 * "Error: REASON" on stderr). */
int cv_cli_client_tls(const char *prog, const char *trust_ca, bool insecure, const char *what);

#endif
