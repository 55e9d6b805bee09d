#include "cli/signals.h"

#include <signal.h>

#include "core/log.h"

static void on_signal(uv_signal_t *h, int signum)
{
    struct cv_cli_signals *s = h->data;
    cv_log_info("signal %d: stopping", signum);
    s->stop(s->data);
}

void cv_cli_signals_start(uv_loop_t *loop, struct cv_cli_signals *s, void (*stop)(void *data),
                          void *data)
{
    static const int signums[2] = {SIGINT, SIGTERM};
    s->stop = stop;
    s->data = data;
    for (int i = 0; i < 2; i++) {
        uv_signal_init(loop, &s->sig[i]);
        s->sig[i].data = s;
        uv_signal_start(&s->sig[i], on_signal, signums[i]);
    }
}

void cv_cli_signals_close(struct cv_cli_signals *s)
{
    for (int i = 0; i < 2; i++)
        if (!uv_is_closing((uv_handle_t *)&s->sig[i]))
            uv_close((uv_handle_t *)&s->sig[i], NULL);
}
