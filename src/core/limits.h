/* Every quantity a peer controls has its limit named here. */
#ifndef CV_LIMITS_H
#define CV_LIMITS_H

/* HTTP request/response head (request line + headers), bytes. */
#define CV_LIMIT_HTTP_HEAD (16 * 1024)
/* Headers per HTTP message. */
#define CV_LIMIT_HTTP_HEADERS 64
/* Time a peer has to complete an HTTP or WebSocket handshake, ms. */
#define CV_LIMIT_HANDSHAKE_MS 10000
/* New connections per second per client address at the relay's front door,
 * and the burst allowed at once; beyond: 429 and close. */
#define CV_LIMIT_CONN_RATE 20.0
#define CV_LIMIT_CONN_BURST 200.0
/* Largest WebSocket message the relay accepts (spec §9: 16 MiB, 1009 beyond). */
#define CV_LIMIT_WS_MSG_RELAY (16u * 1024 * 1024)
/* Largest message the agent and forward accept: 16 MiB plus a tunnel header. */
#define CV_LIMIT_WS_MSG_CLIENT (16u * 1024 * 1024 + 8)
/* WebSocket transmit queue: stop feeding it above HIGH, resume below LOW. */
#define CV_LIMIT_WS_TX_HIGH (1u * 1024 * 1024)
#define CV_LIMIT_WS_TX_LOW (256u * 1024)
/* Bytes queued for one local connection or one relay stream before that one
 * connection is aborted (spec §9: default 8 MiB). */
#define CV_LIMIT_CONN_PENDING (8u * 1024 * 1024)
/* Connections per tunnel (spec §9), and per native tunnel, where flow
 * control bounds each connection's memory. */
#define CV_LIMIT_TUNNEL_CONNS 4096
#define CV_LIMIT_NATIVE_CONNS 65536
/* Connections per forward session. */
#define CV_LIMIT_SESSION_CONNS 4096
/* Largest tunnel DATA payload we send (spec §2). */
#define CV_LIMIT_DATA_PAYLOAD 65536
/* Native mode reads and sends larger chunks: fewer syscalls per byte. The
 * relay splits them for a KohakuRiver peer. */
#define CV_LIMIT_NATIVE_PAYLOAD (256 * 1024)
/* Largest UDP datagram. */
#define CV_LIMIT_UDP_DGRAM 65536
/* Keepalive: relay pings every INTERVAL, drops a peer silent for TIMEOUT more. */
#define CV_LIMIT_PING_INTERVAL_MS 20000
#define CV_LIMIT_PONG_TIMEOUT_MS 20000
/* Agent: reconnect after this long with nothing received; ping after IDLE. */
#define CV_LIMIT_AGENT_SILENT_MS 60000
#define CV_LIMIT_AGENT_IDLE_PING_MS 30000
/* Local TCP connect timeout (spec §5: 10 s). */
#define CV_LIMIT_CONNECT_MS 10000
/* Forward: wait for the relay's first text frame; idle UDP peer expiry. */
#define CV_LIMIT_FORWARD_HELLO_MS 10000
#define CV_LIMIT_UDP_IDLE_MS 60000
/* Agent: forget an id this long after sending CLOSE (spec §11.3). */
#define CV_LIMIT_CLOSED_ID_MS 30000
/* After CLOSE from the peer: drain the local reader at most this long. */
#define CV_LIMIT_LINGER_MS 5000
/* Reconnect backoff cap, ms. */
#define CV_LIMIT_BACKOFF_CAP_MS 60000

#endif
