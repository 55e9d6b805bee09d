/* Micro benchmark: the floor of a user-space TCP hop on this machine.
 *
 *   fwd LISTEN_PORT UPSTREAM_PORT
 *
 * A minimal epoll forwarder on 127.0.0.1: each accepted connection gets its own
 * upstream connection; on every readable event one read and one write to the
 * other side (TCP_NODELAY, no framing, no flow control). It does not buffer what
 * a full socket refuses, so it is only for small request/response loads (bench/rtt.c,
 * wrk against a small page). Two of them chained (client -> fwd -> fwd -> service)
 * have the process and syscall structure of client -> relay -> agent -> service
 * without anything culvert adds; see "Perf work, session 3" in bench/README.md.
 * Not built by CMake:  cc -O2 bench/micro/fwd.c -o fwd */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "micro.h"

#define MAXFD 65536

static int peer[MAXFD];
static char buf[256 * 1024];

static void nodelay(int s)
{
    int one = 1;
    setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void drop(int fd)
{
    int p = peer[fd];
    close(fd);
    close(p);
    peer[fd] = peer[p] = -1;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: fwd LISTEN_PORT UPSTREAM_PORT\n");
        return 2;
    }
    struct sockaddr_in ua = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ua.sin_port = htons((uint16_t)atoi(argv[2]));
    int l;
    uint16_t bound;
    int ep = micro_listen("fwd", (uint16_t)atoi(argv[1]), &l, &bound);
    struct epoll_event e = {.events = EPOLLIN};
    for (;;) {
        struct epoll_event ev[256];
        int n = epoll_wait(ep, ev, 256, -1);
        for (int i = 0; i < n; i++) {
            int fd = ev[i].data.fd;
            if (fd == l) {
                int x = accept(l, NULL, NULL), u = socket(AF_INET, SOCK_STREAM, 0);
                if (x < 0 || u < 0 || x >= MAXFD || u >= MAXFD ||
                    connect(u, (struct sockaddr *)&ua, sizeof ua) != 0) {
                    close(x);
                    close(u);
                    continue;
                }
                nodelay(x);
                nodelay(u);
                fcntl(x, F_SETFL, O_NONBLOCK);
                fcntl(u, F_SETFL, O_NONBLOCK);
                peer[x] = u;
                peer[u] = x;
                e.data.fd = x;
                epoll_ctl(ep, EPOLL_CTL_ADD, x, &e);
                e.data.fd = u;
                epoll_ctl(ep, EPOLL_CTL_ADD, u, &e);
                continue;
            }
            if (peer[fd] < 0)
                continue;
            ssize_t r = read(fd, buf, sizeof buf);
            if (r <= 0 || write(peer[fd], buf, (size_t)r) != r)
                drop(fd);
        }
    }
}
