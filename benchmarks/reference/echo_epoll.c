/*
 * echo_epoll.c: the physical reference for duplex bench.
 *
 * A minimal single-threaded RFC 862 echo server in C: one epoll loop, nonblocking
 * sockets, level-triggered, TCP_NODELAY, no allocation per request. It is what a
 * concurrency model would cost if the model cost nothing, so `duplex bench --reference`
 * can report every Python model as a fraction of it.
 *
 * Build:  cc -O2 -o echo_epoll echo_epoll.c
 * Run:    ./echo_epoll [HOST [PORT]]     (defaults 127.0.0.1 and 0, an ephemeral port)
 *
 * Once listening it prints one JSON line on stdout, in the same shape as
 * `duplex echo serve --json`:
 *   {"event": "listening", "model": "c-epoll", "host": "127.0.0.1", "port": 40123, ...}
 * SIGTERM or SIGINT ends it (exit status 0).
 *
 * Writes: the echo is written at once; when the socket buffer is full, the rest is
 * kept in the connection's buffer, reading from that connection stops (EPOLLIN off,
 * EPOLLOUT on) until the buffer drains: explicit backpressure, bounded memory.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUFSIZE 65536
#define MAXEVENTS 256

struct conn {
    int fd;
    size_t off, len; /* unsent bytes: buf[off:len] */
    char buf[BUFSIZE];
};

static volatile sig_atomic_t stopping = 0;

static void on_signal(int sig) {
    (void)sig;
    stopping = 1;
}

static void close_conn(int ep, struct conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c);
}

static int set_events(int ep, struct conn *c, unsigned events) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    return epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Writes what is pending; returns -1 on error, 0 when all is written, 1 when blocked. */
static int flush(struct conn *c) {
    while (c->off < c->len) {
        ssize_t n = send(c->fd, c->buf + c->off, c->len - c->off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 1;
            return -1;
        }
        c->off += (size_t)n;
    }
    c->off = c->len = 0;
    return 0;
}

static void on_readable(int ep, struct conn *c) {
    for (;;) {
        ssize_t n = recv(c->fd, c->buf, BUFSIZE, 0);
        if (n == 0) { /* the client's FIN: everything was echoed, close (RFC 862) */
            close_conn(ep, c);
            return;
        }
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            close_conn(ep, c);
            return;
        }
        c->off = 0;
        c->len = (size_t)n;
        int r = flush(c);
        if (r < 0) {
            close_conn(ep, c);
            return;
        }
        if (r > 0) { /* backpressure: stop reading until the echo is written */
            if (set_events(ep, c, EPOLLOUT) < 0)
                close_conn(ep, c);
            return;
        }
        if ((size_t)n < BUFSIZE)
            return; /* level-triggered: a short read means the buffer is empty */
    }
}

static void on_writable(int ep, struct conn *c) {
    int r = flush(c);
    if (r < 0)
        close_conn(ep, c);
    else if (r == 0 && set_events(ep, c, EPOLLIN) < 0)
        close_conn(ep, c);
}

int main(int argc, char **argv) {
    const char *host = argc > 1 ? argv[1] : "127.0.0.1";
    int port = argc > 2 ? atoi(argv[2]) : 0;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: epoll_wait returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0) {
        perror("socket");
        return 1;
    }
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "echo_epoll: invalid IPv4 address %s\n", host);
        return 2;
    }
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        perror("bind");
        return 1;
    }
    if (listen(lfd, 4096) < 0) {
        perror("listen");
        return 1;
    }
    socklen_t alen = sizeof addr;
    getsockname(lfd, (struct sockaddr *)&addr, &alen);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL}; /* NULL marks the listener */
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);

    printf("{\"event\": \"listening\", \"model\": \"c-epoll\", \"host\": \"%s\", \"port\": %d, "
           "\"pid\": %d, \"workers\": null}\n",
           host, ntohs(addr.sin_port), (int)getpid());
    fflush(stdout);

    struct epoll_event events[MAXEVENTS];
    while (!stopping) {
        int n = epoll_wait(ep, events, MAXEVENTS, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (c == NULL) {
                for (;;) { /* accept the whole burst */
                    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0)
                        break; /* EAGAIN, or overload: the queue keeps the rest */
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct conn *nc = malloc(sizeof *nc);
                    if (nc == NULL) {
                        close(fd);
                        continue;
                    }
                    nc->fd = fd;
                    nc->off = nc->len = 0;
                    struct epoll_event cev = {.events = EPOLLIN, .data.ptr = nc};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev) < 0) {
                        close(fd);
                        free(nc);
                    }
                }
            } else if (events[i].events & EPOLLOUT) {
                on_writable(ep, c);
            } else {
                on_readable(ep, c);
            }
        }
    }
    close(ep);
    close(lfd);
    return 0;
}
