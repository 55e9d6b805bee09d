/* WebSocket framing (RFC 6455). Pure: no I/O, no allocation.
 *
 * The frame parser works on a caller-owned contiguous buffer holding the
 * bytes received so far. It parses one complete frame at a time, unmasks the
 * payload in place (word-wide) and reports it as a slice of the buffer. When
 * the buffer does not yet hold a whole frame it returns 0 and says how many
 * bytes it needs, so the caller reads more and calls again with the same
 * start (picohttpparser style: resumable at any byte boundary).
 *
 * Fragmentation state (a message spread over several frames) lives in
 * struct cv_ws_parser; the parser validates the sequence but leaves the
 * reassembly copy to the caller, who sees each data frame with `fin` and
 * the message opcode. */
#ifndef CV_WS_H
#define CV_WS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum cv_ws_opcode {
    CV_WS_CONT = 0x0,
    CV_WS_TEXT = 0x1,
    CV_WS_BINARY = 0x2,
    CV_WS_CLOSE = 0x8,
    CV_WS_PING = 0x9,
    CV_WS_PONG = 0xA
};

/* Close codes we send (RFC 6455 §7.4.1). */
enum cv_ws_close_code {
    CV_WS_NORMAL = 1000,
    CV_WS_GOING_AWAY = 1001,
    CV_WS_PROTOCOL_ERROR = 1002,
    CV_WS_UNSUPPORTED = 1003,
    CV_WS_NO_STATUS = 1005,
    CV_WS_ABNORMAL = 1006,
    CV_WS_INVALID_DATA = 1007,
    CV_WS_POLICY = 1008,
    CV_WS_TOO_BIG = 1009,
    CV_WS_INTERNAL = 1011
};

/* Largest frame header: 2 + 8 (length) + 4 (mask). */
#define CV_WS_MAX_HDR 14
/* Length of a Sec-WebSocket-Accept value plus NUL. */
#define CV_WS_ACCEPT_LEN 29

struct cv_ws_parser {
    uint64_t max_msg;  /* largest message (sum of its fragments), bytes */
    bool server;       /* true: frames must be masked; false: must not be */
    bool in_msg;       /* a fragmented data message is open */
    uint8_t msg_op;    /* its opcode (TEXT or BINARY) */
    uint64_t msg_len;  /* bytes of it seen so far */
    bool unmasked_ok;  /* server: accept unmasked frames too (a negotiated
                          framing without RFC 6455 masking, see net/ws.c) */
};

struct cv_ws_frame {
    uint8_t opcode;         /* frame opcode; CONT frames report msg_opcode */
    uint8_t msg_opcode;     /* TEXT/BINARY for data frames, else = opcode */
    bool fin;               /* last frame of its message */
    bool first;             /* first frame of its message */
    uint8_t *payload;       /* borrowed: unmasked slice of the input */
    size_t len;
    uint16_t close_code;    /* CLOSE frames: code, or CV_WS_NO_STATUS if none */
    const uint8_t *reason;  /* CLOSE frames: reason text (borrowed) */
    size_t reason_len;
};

/* Initialises a parser. server: we are the server side (incoming frames
 * must be masked). max_msg: message size limit. */
void cv_ws_parser_init(struct cv_ws_parser *ps, bool server, uint64_t max_msg);

/* Parses one frame from p[0..n), unmasking its payload in place.
 * Returns:
 *   > 0  bytes consumed; *f describes the frame;
 *   0    incomplete; *need is set to the total byte count that the frame
 *        needs from p (header only when the length is still unknown);
 *   < 0  the peer broke the protocol; *close_code says how to close:
 *        CV_EPROTO with 1002 (bad opcode, RSV bits, masking, control frame
 *        too long or fragmented, bad continuation, bad close payload),
 *        CV_ETOOBIG with 1009 (message over max_msg, judged from the
 *        declared length before the payload arrives; also any frame over
 *        INT_MAX bytes, since the count is returned as int),
 *        CV_EPROTO with 1007 (close reason not UTF-8).
 * Text payload UTF-8 validity is the caller's to check (cv_ws_utf8_valid),
 * since a code point may span fragments. */
int cv_ws_parse(struct cv_ws_parser *ps, uint8_t *p, size_t n, struct cv_ws_frame *f, size_t *need,
                uint16_t *close_code);

/* Encodes a frame header for a payload of len bytes into out (at least
 * CV_WS_MAX_HDR bytes). mask: 4 bytes for a masked (client) frame, or NULL.
 * Returns the header length. The payload itself is masked with cv_ws_mask. */
size_t cv_ws_encode_header(uint8_t *out, bool fin, uint8_t opcode, uint64_t len,
                           const uint8_t *mask);

/* XORs p[0..n) with the mask, starting at mask phase `phase` (the offset of
 * p within the payload, mod 4). Word-wide: wslay masks one byte at a time,
 * which measured 8x slower. */
void cv_ws_mask(uint8_t *p, size_t n, const uint8_t mask[4], size_t phase);

/* Copies src to dst while masking (dst and src must not overlap). */
void cv_ws_mask_copy(uint8_t *dst, const uint8_t *src, size_t n, const uint8_t mask[4]);

/* Computes Sec-WebSocket-Accept for a Sec-WebSocket-Key value into out
 * (NUL-terminated, CV_WS_ACCEPT_LEN bytes). */
void cv_ws_accept_key(const char *key, size_t key_len, char out[CV_WS_ACCEPT_LEN]);

/* True if the Sec-WebSocket-Key value is base64 of exactly 16 bytes. */
bool cv_ws_key_is_valid(const char *key, size_t key_len);

/* Incremental UTF-8 validation (for text messages spread over frames).
 * state starts at 0; returns false as soon as the bytes cannot be UTF-8.
 * After the last fragment the message is valid iff *state == 0. */
bool cv_ws_utf8_feed(uint32_t *state, const uint8_t *p, size_t n);
/* True if p[0..n) is complete, valid UTF-8. */
bool cv_ws_utf8_valid(const uint8_t *p, size_t n);

/* True if code may appear in a CLOSE frame on the wire (RFC 6455 §7.4). */
bool cv_ws_close_code_is_valid(uint16_t code);

#endif
