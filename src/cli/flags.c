#include "cli/flags.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli/config.h"
#include "core/err.h"
#include "core/log.h"
#include "net/addr.h"
#include "net/tls.h"

int cv_cli_usage_error(const char *prog, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (cv_cli_capturing()) {
        char msg[400];
        vsnprintf(msg, sizeof msg, fmt, ap);
        cv_cli_error("", "%s", msg);
    } else {
        fprintf(stderr, "error: ");
        vfprintf(stderr, fmt, ap);
        fprintf(stderr, "\n\nFor more information, try '%s --help'.\n", prog);
    }
    va_end(ap);
    return 2;
}

int cv_cli_hostport(const char *prefix, const char *name, const char *value, char *host,
                    size_t hostlen, uint16_t *port)
{
    if (cv_addr_split(value, host, hostlen, port) == 0)
        return -1;
    cv_cli_error(prefix, "--%s wants HOST:PORT with a numeric host, got '%s'\n", name, value);
    return 2;
}

int cv_cli_log_level(const char *value)
{
    enum cv_log_level lvl = CV_LOG_INFO;
    if (value != NULL && cv_log_parse_level(value, &lvl) != 0)
        return CV_EINVAL;
    cv_log_set_level(lvl);
    return 0;
}

const char *cv_cli_env_or(const char *given, const char *name)
{
    if (given != NULL)
        return given;
    const char *v = getenv(name);
    return v != NULL && *v != '\0' ? v : NULL;
}

int cv_cli_client_tls(const char *prog, const char *trust_ca, bool insecure, const char *what)
{
    if (trust_ca && insecure)
        return cv_cli_usage_error(prog, "--trust-ca and --insecure exclude each other");
    char err[400];
    if (cv_tls_client_setup(trust_ca, insecure, err, sizeof err) != 0) {
        fprintf(stderr, "Error: %s\n", err);
        return 2;
    }
    if (insecure)
        cv_log_warn("--insecure: the relay's certificate is NOT verified; anyone on the path "
                    "can impersonate the relay and read or alter the %s",
                    what);
    return -1;
}
