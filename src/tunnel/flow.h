/* Per-stream credit flow control of the native protocol (docs/PROTOCOL.md
 * §3). Pure bookkeeping, no I/O: the owner sends the WINDOW messages these
 * functions ask for.
 *
 * A receiver grants credit (a window) to its sender; the sender may only
 * send DATA within the credit it holds. The receiver returns credit as the
 * data leaves it, and doubles the window (up to CV_FLOW_WINDOW_MAX) when it
 * returns credit while its own output for the stream is empty — the
 * consumer keeps up, so a bigger window can only help — as long as the
 * session's budget (the sum of all its windows) stays under its cap. */
#ifndef CV_FLOW_H
#define CV_FLOW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CV_FLOW_WINDOW0 (256u * 1024)
#define CV_FLOW_WINDOW_MAX (16u * 1024 * 1024)
#define CV_FLOW_SESSION_CAP (64u * 1024 * 1024)

/* Memory a session has granted across its streams. */
struct cv_flow_budget {
    size_t granted;
    size_t cap;
};

/* The receiving half of one stream direction. */
struct cv_flow_rx {
    uint32_t window;      /* current window size */
    uint32_t outstanding; /* credit the sender still holds */
    uint32_t consumed;    /* bytes consumed and not yet returned */
};

/* The sending half: credit granted by the peer and not yet used. */
struct cv_flow_tx {
    uint64_t credit;
};

void cv_flow_budget_init(struct cv_flow_budget *b, size_t cap);

/* Starts a receiver with CV_FLOW_WINDOW0 granted (counted in b). */
void cv_flow_rx_init(struct cv_flow_rx *rx, struct cv_flow_budget *b);
/* Releases the receiver's window from b. */
void cv_flow_rx_fini(struct cv_flow_rx *rx, struct cv_flow_budget *b);
/* n bytes of DATA arrived. Returns 0, or CV_EPROTO if the sender exceeded
 * its credit (the stream must be ended). */
int cv_flow_rx_data(struct cv_flow_rx *rx, size_t n);
/* n received bytes left the receiver. idle: its output for this stream is
 * now empty. Returns the credit increment to send in a WINDOW message, or 0
 * when none is due yet. */
uint32_t cv_flow_rx_consume(struct cv_flow_rx *rx, struct cv_flow_budget *b, size_t n, bool idle);

static inline void cv_flow_tx_init(struct cv_flow_tx *tx) { tx->credit = CV_FLOW_WINDOW0; }
/* A WINDOW arrived. Returns 0, or CV_EPROTO if the credit would exceed what
 * any window allows (a broken peer). */
int cv_flow_tx_window(struct cv_flow_tx *tx, uint32_t inc);

#endif
