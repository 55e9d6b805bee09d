/* Micro benchmark: the floor of an HTTP server on this machine.
 *
 *   httpfloor LISTEN_PORT
 *
 * A minimal epoll server on 127.0.0.1 that answers every readable event with
 * one read and one write of a fixed response: the bytes the gateway sends for
 * app.tasks.add (same status line, headers and 22-byte body, so the client
 * parses as much), without parsing the request, checking anything or running
 * a task. It assumes one whole request per read (wrk without pipelining), so
 * it is only for that load. Next to a server under wrk it shows how much of
 * the machine the syscalls alone take: what no server can go below here.
 * Not built by CMake:  cc -O2 bench/micro/httpfloor.c -o httpfloor */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "micro.h"

static const char resp[] = "HTTP/1.1 200 OK\r\n"
                           "x-runner-request-id: 00000000-0000-4000-8000-000000000000\r\n"
                           "Access-Control-Allow-Origin: *\r\n"
                           "content-type: application/json; charset=utf-8\r\n"
                           "content-length: 22\r\n"
                           "X-Content-Type-Options: nosniff\r\n"
                           "X-Frame-Options: DENY\r\n"
                           "Date: Thu, 01 Jan 2026 00:00:00 GMT\r\n"
                           "Connection: keep-alive\r\n"
                           "Keep-Alive: timeout=5\r\n"
                           "\r\n"
                           "{\"ok\":true,\"result\":3}";

int main(int argc, char **argv)
{
    static char buf[64 * 1024];
    if (argc != 2) {
        fprintf(stderr, "usage: httpfloor LISTEN_PORT\n");
        return 2;
    }
    int l, one = 1;
    uint16_t bound;
    int ep = micro_listen("httpfloor", (uint16_t)atoi(argv[1]), &l, &bound);
    printf("listening on 127.0.0.1:%u\n", bound);
    fflush(stdout);
    struct epoll_event e = {.events = EPOLLIN};
    for (;;) {
        struct epoll_event ev[256];
        int n = epoll_wait(ep, ev, 256, -1);
        for (int i = 0; i < n; i++) {
            int fd = ev[i].data.fd;
            if (fd == l) {
                int x = accept(l, NULL, NULL);
                if (x < 0)
                    continue;
                setsockopt(x, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                fcntl(x, F_SETFL, O_NONBLOCK);
                e.data.fd = x;
                epoll_ctl(ep, EPOLL_CTL_ADD, x, &e);
                continue;
            }
            ssize_t r = read(fd, buf, sizeof buf);
            if (r <= 0 || write(fd, resp, sizeof resp - 1) != (ssize_t)(sizeof resp - 1))
                close(fd);
        }
    }
}
