/* bench/hold.c: hold many idle connections open through a tunnel, for bench/run.
 *
 *   hold PORT N [BATCH]
 *
 * Opens N TCP connections to 127.0.0.1:PORT, BATCH at a time (default 250), and on
 * each sends one byte and waits for it to come back (an echo service), so every
 * stream exists end to end. A connection that fails to connect, is closed or does
 * not answer within 10 s counts as an error. Prints "opened ok X err Y secs S", then
 * holds everything until SIGUSR1 (or SIGTERM), then exchanges one more byte on
 * every held connection, prints "recheck ok X err Y", and exits. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define DEADLINE_MS 10000

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

enum { ST_CONNECTING, ST_WAIT_ECHO, ST_OK, ST_FAIL };

/* Runs one batch: fds[i] are sockets in state st[i] (CONNECTING: connect in flight;
 * WAIT_ECHO: byte to send now). Ends with every one OK or FAIL (failed ones closed). */
static void run_batch(int *fds, int *st, int n)
{
    int ep = epoll_create1(0);
    int pending = 0;
    for (int i = 0; i < n; i++) {
        if (st[i] == ST_FAIL)
            continue;
        if (st[i] == ST_WAIT_ECHO) {
            char c = 'h';
            if (write(fds[i], &c, 1) != 1) {
                st[i] = ST_FAIL;
                close(fds[i]);
                fds[i] = -1;
                continue;
            }
        }
        struct epoll_event ev = {.events = st[i] == ST_CONNECTING ? EPOLLOUT : EPOLLIN,
                                 .data.u32 = (unsigned)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
        pending++;
    }
    double end = now_ms() + DEADLINE_MS;
    struct epoll_event evs[256];
    while (pending > 0) {
        int left = (int)(end - now_ms());
        if (left <= 0)
            break;
        int k = epoll_wait(ep, evs, 256, left);
        if (k < 0 && errno == EINTR)
            continue;
        for (int j = 0; j < k; j++) {
            int i = (int)evs[j].data.u32;
            int fd = fds[i];
            if (st[i] == ST_CONNECTING) {
                int err = 0;
                socklen_t l = sizeof err;
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l);
                char c = 'h';
                if (err == 0 && write(fd, &c, 1) == 1) {
                    st[i] = ST_WAIT_ECHO;
                    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (unsigned)i};
                    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
                    continue;
                }
                st[i] = ST_FAIL;
            } else if (st[i] == ST_WAIT_ECHO) {
                char c;
                ssize_t r = read(fd, &c, 1);
                if (r < 0 && errno == EAGAIN)
                    continue;
                st[i] = r == 1 ? ST_OK : ST_FAIL;
            }
            epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
            pending--;
            if (st[i] == ST_FAIL) {
                close(fd);
                fds[i] = -1;
            }
        }
    }
    for (int i = 0; i < n; i++)
        if (st[i] == ST_CONNECTING || st[i] == ST_WAIT_ECHO) {
            st[i] = ST_FAIL;
            close(fds[i]);
            fds[i] = -1;
        }
    close(ep);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: hold PORT N [BATCH]\n");
        return 2;
    }
    int n = atoi(argv[2]);
    int batch = argc > 3 ? atoi(argv[3]) : 250;
    if (batch < 1)
        batch = 1;
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    signal(SIGPIPE, SIG_IGN);
    sigset_t ss;
    sigemptyset(&ss);
    sigaddset(&ss, SIGUSR1);
    sigaddset(&ss, SIGTERM);
    sigaddset(&ss, SIGINT);
    sigprocmask(SIG_BLOCK, &ss, NULL);

    int *fds = malloc(sizeof(int) * n);
    int *st = malloc(sizeof(int) * n);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1]))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    double t0 = now_ms();
    int first_err = 0;
    for (int b = 0; b < n; b += batch) {
        int m = n - b < batch ? n - b : batch;
        for (int i = b; i < b + m; i++) {
            fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
            st[i] = ST_CONNECTING;
            if (fds[i] < 0) {
                if (!first_err)
                    first_err = errno;
                st[i] = ST_FAIL;
                continue;
            }
            if (connect(fds[i], (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS) {
                if (!first_err)
                    first_err = errno;
                st[i] = ST_FAIL;
                close(fds[i]);
                fds[i] = -1;
            }
        }
        run_batch(fds + b, st + b, m);
    }
    int ok = 0;
    for (int i = 0; i < n; i++)
        ok += st[i] == ST_OK;
    printf("opened ok %d err %d secs %.2f%s%s\n", ok, n - ok, (now_ms() - t0) / 1e3,
           first_err ? " first_errno " : "", first_err ? strerror(first_err) : "");
    fflush(stdout);

    int sig;
    sigwait(&ss, &sig);

    for (int i = 0; i < n; i++)
        if (st[i] == ST_OK)
            st[i] = ST_WAIT_ECHO;
    for (int b = 0; b < n; b += batch) {
        int m = n - b < batch ? n - b : batch;
        run_batch(fds + b, st + b, m);
    }
    int ok2 = 0;
    for (int i = 0; i < n; i++)
        ok2 += st[i] == ST_OK;
    printf("recheck ok %d err %d\n", ok2, ok - ok2);
    fflush(stdout);
    return 0;
}
