/* bench/rtt.c: one-connection ping-pong latency client for bench/run.
 *
 *   rtt PORT N [WARMUP]
 *
 * Connects to 127.0.0.1:PORT (TCP_NODELAY), sends 1 byte and waits for it to come
 * back, N times after WARMUP untimed rounds (default 200). Prints
 * "n N p50_us X p90_us X p99_us X min_us X max_us X" or exits 1 on any failure. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int round_trip(int fd)
{
    char c = 'x';
    for (;;) {
        ssize_t w = write(fd, &c, 1);
        if (w == 1)
            break;
        if (w < 0 && errno == EINTR)
            continue;
        return -1;
    }
    for (;;) {
        ssize_t r = read(fd, &c, 1);
        if (r == 1)
            return 0;
        if (r < 0 && errno == EINTR)
            continue;
        return -1;
    }
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: rtt PORT N [WARMUP]\n");
        return 2;
    }
    int n = atoi(argv[2]);
    int warm = argc > 3 ? atoi(argv[3]) : 200;
    if (n < 1)
        n = 1;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        perror("rtt: connect");
        return 1;
    }
    for (int i = 0; i < warm; i++)
        if (round_trip(fd) < 0) {
            fprintf(stderr, "rtt: warmup round %d failed\n", i);
            return 1;
        }
    double *s = malloc(sizeof(double) * n);
    for (int i = 0; i < n; i++) {
        double t0 = now_us();
        if (round_trip(fd) < 0) {
            fprintf(stderr, "rtt: round %d failed\n", i);
            return 1;
        }
        s[i] = now_us() - t0;
    }
    qsort(s, n, sizeof(double), cmp);
    printf("n %d p50_us %.1f p90_us %.1f p99_us %.1f min_us %.1f max_us %.1f\n", n,
           s[n / 2], s[(int)(n * 0.90)], s[(int)(n * 0.99)], s[0], s[n - 1]);
    close(fd);
    return 0;
}
