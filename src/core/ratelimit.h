/* Per-key token buckets in a fixed-size table (the relay's per-IP
 * handshake rate limit). Each key may take `burst` tokens at once and earns
 * `rate` tokens per second back. Memory is bounded: the table is set
 * associative (4 ways), and a new key evicts the way idle longest, which
 * at worst hands that key a fresh (full) bucket: under a flood of distinct
 * addresses the limit degrades to per-slot, never to unbounded memory. */
#ifndef CV_RATELIMIT_H
#define CV_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct cv_ratelimit;

/* rate > 0 tokens per second, burst >= 1, slots rounded up to a power of
 * two (>= 4). Returns NULL on a bad argument or out of memory. */
struct cv_ratelimit *cv_ratelimit_new(double rate, double burst, size_t slots);
void cv_ratelimit_free(struct cv_ratelimit *rl);

/* The key of a client address: IPv6 as is, IPv4 mapped (::ffff:a.b.c.d). */
void cv_ratelimit_key(const struct sockaddr_storage *ss, uint8_t key[16]);

/* Takes one token for key (16 bytes: an IPv6 address, or an IPv4 address
 * mapped into one) at time now_ms (monotonic). Returns 0 if it was
 * available, else how many ms until one will be. */
uint64_t cv_ratelimit_take(struct cv_ratelimit *rl, const uint8_t key[16], uint64_t now_ms);

#endif
