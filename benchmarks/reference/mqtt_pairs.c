/*
 * mqtt_pairs: the baseline for benchmarks/hub_relay.py, an MQTT broker (mosquitto)
 * driven by a C client the way hub_relay drives the hub.
 *
 * K pairs: a publisher and a subscriber connection per pair (MQTT 3.1.1, clean
 * session), the subscriber on topic "duplex-bench/<run>/<i>". Closed loop, W
 * messages in flight per pair (default 1): with QoS 1 the publisher sends its next
 * PUBLISH when the broker's PUBACK arrives (as a duplex sender sends its next
 * message on "stored"); with QoS 0, when its subscriber has one. Latency is from the
 * PUBLISH to the subscriber's receipt (the send time rides in the payload's first
 * 8 bytes). One thread, epoll.
 *
 *   cc -O2 -o mqtt_pairs mqtt_pairs.c
 *   ./mqtt_pairs [-h host] [-p port] [-n pairs] [-q qos] [-d seconds] [-w warmup]
 *                [-s payload] [-c cpu] [-W window]
 *
 * Prints one JSON object: {"qos":1,"pairs":100,"window":1,"messages":...,
 * "msgs_per_s":...,"p50_ms":...,"p99_ms":...,"max_ms":...,"cpu":...} (cpu: this
 * client's, in cores). Exits 1 with a message on stderr when the broker cannot be
 * reached or refuses the connection, 2 on bad arguments.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUF 65536
#define MAX_SAMPLES 4000000

struct conn {
    int fd;
    int pair;
    int is_pub;
    int ready; /* CONNACK (and for a subscriber SUBACK) seen */
    size_t len;
    unsigned char in[BUF];
};

struct pair {
    struct conn *pub, *sub;
    uint16_t pid;
};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what) {
    fprintf(stderr, "mqtt_pairs: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void send_all(int fd, const unsigned char *p, size_t n) {
    /* Packets are small and the socket buffer is large: a short write means the
     * broker stopped reading, which this closed loop cannot cause; treat as fatal. */
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) { usleep(100); continue; }
            die("send");
        }
        p += w;
        n -= (size_t)w;
    }
}

static size_t put_len(unsigned char *p, size_t n) {
    size_t i = 0;
    do {
        unsigned char b = n % 128;
        n /= 128;
        if (n) b |= 128;
        p[i++] = b;
    } while (n);
    return i;
}

static size_t put_str(unsigned char *p, const char *s) {
    size_t n = strlen(s);
    p[0] = (unsigned char)(n >> 8);
    p[1] = (unsigned char)n;
    memcpy(p + 2, s, n);
    return n + 2;
}

static size_t packet(unsigned char *out, unsigned char type, const unsigned char *body, size_t n) {
    size_t i = 0;
    out[i++] = type;
    i += put_len(out + i, n);
    memcpy(out + i, body, n);
    return i + n;
}

static int dial(const char *host, int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        fprintf(stderr, "mqtt_pairs: not an IPv4 address: %s\n", host);
        exit(2);
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) die("connect to the broker");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static char topic_prefix[64];
static int qos = 1, payload = 64, window = 1;
static double *samples;
static long nsamples, delivered;
static int measuring;

static void publish(struct pair *p) {
    unsigned char body[4096], out[4200];
    char topic[96];
    size_t i = 0;
    snprintf(topic, sizeof topic, "%s/%d", topic_prefix, p->pub->pair);
    i += put_str(body, topic);
    if (qos) {
        p->pid = (uint16_t)(p->pid % 65535 + 1);
        body[i++] = (unsigned char)(p->pid >> 8);
        body[i++] = (unsigned char)p->pid;
    }
    /* The payload starts with the send time, so any number may be in flight. */
    double t = now();
    memset(body + i, 'x', (size_t)payload);
    memcpy(body + i, &t, sizeof t);
    i += (size_t)payload;
    send_all(p->pub->fd, out, packet(out, (unsigned char)(0x30 | (qos << 1)), body, i));
}

/* Handles one complete packet; returns nothing, updates the pair's state. */
static void on_packet(struct conn *c, struct pair *pairs, unsigned char type,
                      const unsigned char *b, size_t n, int *ready_count) {
    struct pair *p = &pairs[c->pair];
    switch (type >> 4) {
    case 2: /* CONNACK */
        if (n < 2 || b[1] != 0) {
            fprintf(stderr, "mqtt_pairs: the broker refused the connection (code %d)\n",
                    n >= 2 ? b[1] : -1);
            exit(1);
        }
        if (c->is_pub) {
            c->ready = 1;
            ++*ready_count;
        } else {
            unsigned char body[128], out[140];
            char topic[96];
            size_t i = 0;
            snprintf(topic, sizeof topic, "%s/%d", topic_prefix, c->pair);
            body[i++] = 0;
            body[i++] = 1; /* packet id */
            i += put_str(body + i, topic);
            body[i++] = (unsigned char)qos;
            send_all(c->fd, out, packet(out, 0x82, body, i));
        }
        break;
    case 9: /* SUBACK */
        if (n < 3 || b[2] == 0x80) {
            fprintf(stderr, "mqtt_pairs: the broker refused the subscription\n");
            exit(1);
        }
        c->ready = 1;
        ++*ready_count;
        break;
    case 3: { /* PUBLISH, at the subscriber */
        int q = (type >> 1) & 3;
        size_t tl = (size_t)(b[0] << 8 | b[1]);
        size_t at = 2 + tl + (q ? 2 : 0);
        if (measuring && n >= at + sizeof(double)) {
            double sent;
            memcpy(&sent, b + at, sizeof sent);
            double lat = now() - sent;
            if (nsamples < MAX_SAMPLES) samples[nsamples++] = lat;
            delivered++;
        }
        if (q == 1) {
            unsigned char ack[4] = {0x40, 2, b[2 + tl], b[3 + tl]};
            send_all(c->fd, ack, 4);
        }
        if (qos == 0) publish(p);
        break;
    }
    case 4: /* PUBACK, at the publisher */
        publish(p);
        break;
    default:
        break;
    }
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = 1883, npairs = 100, cpu = -1, opt;
    double duration = 5, warmup = 1;
    while ((opt = getopt(argc, argv, "h:p:n:q:d:w:s:c:W:")) != -1) {
        switch (opt) {
        case 'h': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'n': npairs = atoi(optarg); break;
        case 'q': qos = atoi(optarg); break;
        case 'd': duration = atof(optarg); break;
        case 'w': warmup = atof(optarg); break;
        case 's': payload = atoi(optarg); break;
        case 'c': cpu = atoi(optarg); break;
        case 'W': window = atoi(optarg); break;
        default:
            fprintf(stderr, "usage: %s [-h host] [-p port] [-n pairs] [-q 0|1] "
                            "[-d seconds] [-w warmup] [-s payload] [-c cpu] [-W window]\n", argv[0]);
            return 2;
        }
    }
    if (npairs < 1 || npairs > 10000 || (qos != 0 && qos != 1) || payload < 8 ||
        payload > 4000 || duration <= 0 || window < 1 || window > 1000) {
        fprintf(stderr, "mqtt_pairs: pairs 1..10000, qos 0 or 1, payload 8..4000, "
                        "duration > 0, window 1..1000\n");
        return 2;
    }
    if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        if (sched_setaffinity(0, sizeof set, &set) < 0) die("sched_setaffinity");
    }
    samples = malloc(sizeof(double) * MAX_SAMPLES);
    struct pair *pairs = calloc((size_t)npairs, sizeof *pairs);
    struct conn **conns = calloc((size_t)npairs * 2, sizeof *conns);
    if (!samples || !pairs || !conns) die("malloc");
    snprintf(topic_prefix, sizeof topic_prefix, "duplex-bench/%d", (int)getpid());
    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    for (int i = 0; i < npairs * 2; i++) {
        struct conn *c = calloc(1, sizeof *c);
        if (!c) die("malloc");
        c->pair = i / 2;
        c->is_pub = i % 2;
        c->fd = dial(host, port);
        if (c->is_pub) pairs[c->pair].pub = c; else pairs[c->pair].sub = c;
        unsigned char body[128], out[140];
        char id[64];
        size_t n = 0;
        snprintf(id, sizeof id, "db%d-%c%d", (int)getpid(), c->is_pub ? 'p' : 's', c->pair);
        n += put_str(body, "MQTT");
        body[n++] = 4;    /* protocol level 3.1.1 */
        body[n++] = 0x02; /* clean session */
        body[n++] = 0;
        body[n++] = 60; /* keep alive */
        n += put_str(body + n, id);
        send_all(c->fd, out, packet(out, 0x10, body, n));
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl");
        conns[i] = c;
    }
    int ready = 0, started = 0;
    double t_start = now(), t_measure = 0, t_end = 0;
    struct rusage r0, r1;
    struct epoll_event evs[256];
    for (;;) {
        double t = now();
        if (!started && ready == npairs * 2) {
            started = 1;
            t_start = t;
            for (int i = 0; i < npairs; i++)
                for (int w = 0; w < window; w++) publish(&pairs[i]);
        }
        if (!started && t - t_start > 10) {
            fprintf(stderr, "mqtt_pairs: only %d of %d connections ready after 10 s\n",
                    ready, npairs * 2);
            return 1;
        }
        if (started && !measuring && t_measure == 0 && t - t_start >= warmup) {
            measuring = 1;
            t_measure = t;
            delivered = 0;
            getrusage(RUSAGE_SELF, &r0);
        }
        if (measuring && t - t_measure >= duration) {
            t_end = t;
            getrusage(RUSAGE_SELF, &r1);
            break;
        }
        int n = epoll_wait(ep, evs, 256, 100);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int k = 0; k < n; k++) {
            struct conn *c = evs[k].data.ptr;
            ssize_t got = recv(c->fd, c->in + c->len, BUF - c->len, 0);
            if (got == 0) {
                fprintf(stderr, "mqtt_pairs: the broker closed a connection\n");
                return 1;
            }
            if (got < 0) {
                if (errno == EINTR || errno == EAGAIN) continue;
                die("recv");
            }
            c->len += (size_t)got;
            size_t off = 0;
            for (;;) {
                /* fixed header: type byte, then 1-4 bytes of remaining length */
                if (c->len - off < 2) break;
                size_t rl = 0, mul = 1, i = off + 1;
                int complete = 0;
                while (i < c->len && i < off + 5) {
                    rl += (c->in[i] & 127) * mul;
                    mul *= 128;
                    if (!(c->in[i++] & 128)) { complete = 1; break; }
                }
                if (!complete || c->len - i < rl) break;
                on_packet(c, pairs, c->in[off], c->in + i, rl, &ready);
                off = i + rl;
            }
            memmove(c->in, c->in + off, c->len - off);
            c->len -= off;
        }
    }
    double elapsed = t_end - t_measure;
    double cpu_s = (r1.ru_utime.tv_sec - r0.ru_utime.tv_sec) +
                   (r1.ru_utime.tv_usec - r0.ru_utime.tv_usec) / 1e6 +
                   (r1.ru_stime.tv_sec - r0.ru_stime.tv_sec) +
                   (r1.ru_stime.tv_usec - r0.ru_stime.tv_usec) / 1e6;
    qsort(samples, (size_t)nsamples, sizeof(double), cmp);
    double p50 = nsamples ? samples[nsamples / 2] : 0;
    double p99 = nsamples ? samples[(size_t)(nsamples * 0.99)] : 0;
    double mx = nsamples ? samples[nsamples - 1] : 0;
    printf("{\"qos\":%d,\"pairs\":%d,\"window\":%d,\"messages\":%ld,\"msgs_per_s\":%.1f,\"p50_ms\":%.3f,"
           "\"p99_ms\":%.3f,\"max_ms\":%.3f,\"cpu\":%.3f}\n",
           qos, npairs, window, delivered, delivered / elapsed, p50 * 1e3, p99 * 1e3, mx * 1e3,
           cpu_s / elapsed);
    for (int i = 0; i < npairs * 2; i++) {
        /* DISCONNECT, so the broker keeps no session state for us */
        unsigned char d[2] = {0xe0, 0};
        send_all(conns[i]->fd, d, 2);
        close(conns[i]->fd);
    }
    return 0;
}
