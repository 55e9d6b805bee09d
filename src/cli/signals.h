/* SIGINT and SIGTERM for a command's loop: both call one stop function. */
#ifndef CV_CLI_SIGNALS_H
#define CV_CLI_SIGNALS_H

#include <uv.h>

struct cv_cli_signals {
    uv_signal_t sig[2];
    void (*stop)(void *data);
    void *data; /* borrowed */
};

/* Installs the handlers; stop(data) runs on the first signal (logged). */
void cv_cli_signals_start(uv_loop_t *loop, struct cv_cli_signals *s, void (*stop)(void *data),
                          void *data);
/* Closes both handles (asynchronously; s must live until the loop ends). */
void cv_cli_signals_close(struct cv_cli_signals *s);

#endif
