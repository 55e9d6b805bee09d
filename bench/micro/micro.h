/* Shared by the micro benchmarks (fwd.c, httpfloor.c): a listening socket on
 * 127.0.0.1 in a new epoll set. Header-only; the programs stay single files
 * for `cc -O2 file.c`. */
#ifndef MICRO_H
#define MICRO_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>

/* Listens on 127.0.0.1:port (0: any free port) and returns an epoll set
 * watching it (EPOLLIN, data.fd = the socket); *lfd is the socket, *bound
 * the port. Exits the program with a message if it cannot. */
static int micro_listen(const char *who, uint16_t port, int *lfd, uint16_t *bound)
{
    struct sockaddr_in la = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    la.sin_port = htons(port);
    socklen_t sl = sizeof la;
    int one = 1, l = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(l, (struct sockaddr *)&la, sizeof la) != 0 || listen(l, 128) != 0 ||
        getsockname(l, (struct sockaddr *)&la, &sl) != 0) {
        fprintf(stderr, "%s: cannot listen on 127.0.0.1:%u: ", who, port);
        perror(NULL);
        exit(1);
    }
    int ep = epoll_create1(0);
    struct epoll_event e = {.events = EPOLLIN, .data.fd = l};
    epoll_ctl(ep, EPOLL_CTL_ADD, l, &e);
    *lfd = l;
    *bound = ntohs(la.sin_port);
    return ep;
}

#endif
