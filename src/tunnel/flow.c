#include "tunnel/flow.h"

#include "core/err.h"

void cv_flow_budget_init(struct cv_flow_budget *b, size_t cap)
{
    b->granted = 0;
    b->cap = cap;
}

void cv_flow_rx_init(struct cv_flow_rx *rx, struct cv_flow_budget *b)
{
    rx->window = CV_FLOW_WINDOW0;
    rx->outstanding = CV_FLOW_WINDOW0;
    rx->consumed = 0;
    b->granted += CV_FLOW_WINDOW0;
}

void cv_flow_rx_fini(struct cv_flow_rx *rx, struct cv_flow_budget *b)
{
    b->granted -= rx->window <= b->granted ? rx->window : b->granted;
    rx->window = rx->outstanding = rx->consumed = 0;
}

int cv_flow_rx_data(struct cv_flow_rx *rx, size_t n)
{
    if (n > rx->outstanding)
        return CV_EPROTO;
    rx->outstanding -= (uint32_t)n;
    return 0;
}

uint32_t cv_flow_rx_consume(struct cv_flow_rx *rx, struct cv_flow_budget *b, size_t n, bool idle)
{
    rx->consumed += (uint32_t)n;
    /* Return credit in half-window steps: fewer WINDOW messages, and the
     * sender never runs dry while the consumer keeps up. */
    if (rx->consumed < rx->window / 2)
        return 0;
    uint32_t inc = rx->consumed;
    rx->consumed = 0;
    if (idle && rx->window < CV_FLOW_WINDOW_MAX && b->granted + rx->window <= b->cap) {
        b->granted += rx->window;
        inc += rx->window;
        rx->window *= 2;
    }
    rx->outstanding += inc;
    return inc;
}

int cv_flow_tx_window(struct cv_flow_tx *tx, uint32_t inc)
{
    if (tx->credit + inc > 2ull * CV_FLOW_WINDOW_MAX)
        return CV_EPROTO;
    tx->credit += inc;
    return 0;
}
