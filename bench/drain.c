/* bench/drain.c: bulk reader for the stalled-reader scenario of bench/run.
 *
 *   drain PORT SECS        read from 127.0.0.1:PORT for SECS s, print "gbps X bytes N"
 *   drain PORT stall       connect, read nothing; on SIGTERM/SIGUSR1 read what is
 *                          buffered for up to 1 s and print
 *                          "stalled bytes_after N alive 0|1" (alive: no EOF/reset) */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: drain PORT SECS|stall\n");
        return 2;
    }
    int stall = strcmp(argv[2], "stall") == 0;
    sigset_t ss;
    sigemptyset(&ss);
    sigaddset(&ss, SIGUSR1);
    sigaddset(&ss, SIGTERM);
    sigaddset(&ss, SIGINT);
    if (stall)
        sigprocmask(SIG_BLOCK, &ss, NULL);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        perror("drain: connect");
        return 1;
    }
    static char buf[1 << 18];
    if (stall) {
        printf("stalling\n");
        fflush(stdout);
        int sig;
        sigwait(&ss, &sig);
        fcntl(fd, F_SETFL, O_NONBLOCK);
        long long got = 0;
        int alive = 1;
        double end = now_s() + 1.0;
        while (now_s() < end) {
            ssize_t r = read(fd, buf, sizeof buf);
            if (r > 0) {
                got += r;
                continue;
            }
            if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                alive = 0;
                break;
            }
            struct pollfd p = {.fd = fd, .events = POLLIN};
            poll(&p, 1, 50);
        }
        printf("stalled bytes_after %lld alive %d\n", got, alive);
        return 0;
    }
    double secs = atof(argv[2]);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    /* skip the first 0.3 s (slow start, window growth) */
    double t0 = now_s(), start = t0 + 0.3, end = start + secs;
    long long got = 0;
    int counting = 0;
    for (;;) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            fprintf(stderr, "drain: stream ended early (%s)\n", r == 0 ? "EOF" : strerror(errno));
            break;
        }
        double t = now_s();
        if (!counting && t >= start) {
            counting = 1;
            start = t;
            end = t + secs;
        } else if (counting) {
            got += r;
        }
        if (t >= end)
            break;
    }
    double el = now_s() - start;
    printf("gbps %.3f bytes %lld\n", counting && el > 0 ? got * 8 / el / 1e9 : 0.0, got);
    return got > 0 ? 0 : 1;
}
