/*
 * hub_pairs: benchmarks/hub_relay.py's load as a C client, so that the hub is driven
 * the way mqtt_pairs.c drives mosquitto: by a client whose own cost is small.
 *
 * It speaks the real duplex protocol v1 (DESIGN.md section 3): frames of a 4-byte
 * big-endian length and a MessagePack map whose "type" names the message. Every
 * connection says Hello and logs in with a password; then K pairs, user <prefix>s<i>
 * sending to <prefix>r<i>:
 *   - closed loop (default): W messages in flight per pair, the next Send when the
 *     hub answers "stored" (the message is on disk at the hub), as hub_relay.py's
 *     Python clients do;
 *   - open loop (-R rate): message k leaves at start + k/rate from sender k mod K,
 *     and its latency counts from that scheduled time (no coordinated omission).
 * Receivers ack once per read, cumulatively (Ack{upto}); senders ack their receipts
 * after -a seconds (the real client's RECEIPT_ACK_DELAY), so the hub does all of a
 * real conversation's work. Message ids are UUIDv7, as the real client's. Bodies are
 * the send time (CLOCK_MONOTONIC, which is Python's perf_counter) as 20 characters,
 * padded with 'x' to the payload size: a message sent before this run started
 * (replayed at login) is counted as stale, not measured. Every connection pings at
 * the heartbeat its Welcome gives.
 *
 *   cc -O2 -o hub_pairs hub_pairs.c
 *   ./hub_pairs -p port [-h host] [-n pairs] [-W window] [-R rate] [-d seconds]
 *               [-w warmup] [-s payload] [-c cpu] [-u prefix] [-a ack_delay]
 *               [-o samples_file] < resume
 *
 * The password comes from $DUPLEX_PASSWORD. stdin gives each user's last sequence
 * ("user seq" lines, possibly none); the device is "bench-<user>", as the Python
 * clients', so either can resume where the other stopped. stdout: the line
 * "measuring" when the measured seconds begin and "measured" when they end (the
 * caller reads the hub's CPU time at both), then one JSON object:
 * {"messages":..,"msgs_per_s":..,"elapsed":..,"cpu":..,"errors":..,"stale":..,
 *  "seqs":{"user":seq,...}}. With -o, every measured latency, in microseconds, as
 * native uint32 values. Exit 1 with a message on stderr when the hub cannot be
 * reached, refuses a login or closes a connection; 2 on bad arguments.
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

#define IN_BUF 262144
#define OUT_BUF 65536
#define MAX_SAMPLES 8000000
#define NAME_MAX_LEN 64

enum { HELLO_WAIT, WELCOME_WAIT, READY };

struct conn {
    int fd;
    int pair;
    int is_sender;
    int state;
    char user[NAME_MAX_LEN + 1];
    uint64_t last_seq;
    double heartbeat, next_ping;
    double ack_due; /* sender: when its receipts are acked (0: none pending) */
    uint64_t acked;
    size_t len, out_len;
    unsigned char in[IN_BUF];
    unsigned char out[OUT_BUF];
};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what) {
    fprintf(stderr, "hub_pairs: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void fail(const char *what) {
    fprintf(stderr, "hub_pairs: %s\n", what);
    exit(1);
}

/* ------------------------------------------------------------ MessagePack, writing */

struct w {
    unsigned char *p;
    size_t n, cap;
};

static void w_raw(struct w *w, const void *b, size_t n) {
    if (w->n + n > w->cap) fail("an outgoing frame does not fit its buffer");
    memcpy(w->p + w->n, b, n);
    w->n += n;
}

static void w_byte(struct w *w, unsigned char b) { w_raw(w, &b, 1); }

static void w_be(struct w *w, uint64_t v, int bytes) {
    unsigned char b[8];
    for (int i = 0; i < bytes; i++) b[i] = (unsigned char)(v >> (8 * (bytes - 1 - i)));
    w_raw(w, b, (size_t)bytes);
}

static void w_map(struct w *w, int n) { w_byte(w, (unsigned char)(0x80 | n)); }

static void w_strn(struct w *w, const char *s, size_t n) {
    if (n < 32) {
        w_byte(w, (unsigned char)(0xa0 | n));
    } else if (n < 256) {
        w_byte(w, 0xd9);
        w_byte(w, (unsigned char)n);
    } else {
        w_byte(w, 0xda);
        w_be(w, n, 2);
    }
    w_raw(w, s, n);
}

static void w_str(struct w *w, const char *s) { w_strn(w, s, strlen(s)); }

static void w_uint(struct w *w, uint64_t v) {
    if (v < 128) {
        w_byte(w, (unsigned char)v);
    } else if (v < 256) {
        w_byte(w, 0xcc);
        w_byte(w, (unsigned char)v);
    } else if (v < 65536) {
        w_byte(w, 0xcd);
        w_be(w, v, 2);
    } else if (v < 4294967296ull) {
        w_byte(w, 0xce);
        w_be(w, v, 4);
    } else {
        w_byte(w, 0xcf);
        w_be(w, v, 8);
    }
}

static void w_bin(struct w *w, const unsigned char *b, size_t n) {
    w_byte(w, 0xc4);
    w_byte(w, (unsigned char)n);
    w_raw(w, b, n);
}

static void flush(struct conn *c);

/* Starts a frame in c's output buffer (sending what it holds first when the largest
 * frame might not fit: a window of many messages); frame_end() fills in its length. */
static struct w frame_begin(struct conn *c) {
    if (c->out_len > OUT_BUF - 8192) flush(c);
    struct w w = {c->out + c->out_len + 4, 0, OUT_BUF - c->out_len - 4};
    return w;
}

static void frame_end(struct conn *c, struct w *w) {
    unsigned char *h = c->out + c->out_len;
    h[0] = (unsigned char)(w->n >> 24);
    h[1] = (unsigned char)(w->n >> 16);
    h[2] = (unsigned char)(w->n >> 8);
    h[3] = (unsigned char)w->n;
    c->out_len += 4 + w->n;
}

static void flush(struct conn *c) {
    /* Frames are small and the socket buffer large: a short write means the hub stopped
     * reading, which this load cannot cause; wait for it briefly rather than drop. */
    unsigned char *p = c->out;
    size_t n = c->out_len;
    while (n) {
        ssize_t got = send(c->fd, p, n, MSG_NOSIGNAL);
        if (got < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) { usleep(100); continue; }
            die("send to the hub");
        }
        p += got;
        n -= (size_t)got;
    }
    c->out_len = 0;
}

/* ------------------------------------------------------------ MessagePack, reading */

struct r {
    const unsigned char *p, *end;
    int bad;
};

static uint64_t r_be(struct r *r, int bytes) {
    uint64_t v = 0;
    if (r->end - r->p < bytes) { r->bad = 1; return 0; }
    for (int i = 0; i < bytes; i++) v = v << 8 | *r->p++;
    return v;
}

/* Reads a string or binary header and returns its bytes (length in *n), or NULL. */
static const unsigned char *r_bytes(struct r *r, size_t *n) {
    if (r->p >= r->end) { r->bad = 1; return NULL; }
    unsigned char t = *r->p++;
    if ((t & 0xe0) == 0xa0) *n = t & 31;
    else if (t == 0xd9 || t == 0xc4) *n = r_be(r, 1);
    else if (t == 0xda || t == 0xc5) *n = r_be(r, 2);
    else if (t == 0xdb || t == 0xc6) *n = r_be(r, 4);
    else { r->bad = 1; return NULL; }
    if (r->bad || (size_t)(r->end - r->p) < *n) { r->bad = 1; return NULL; }
    const unsigned char *s = r->p;
    r->p += *n;
    return s;
}

/* Reads a number (any MessagePack int or float) as a double. */
static double r_num(struct r *r) {
    if (r->p >= r->end) { r->bad = 1; return 0; }
    unsigned char t = *r->p++;
    if (t < 0x80) return t;
    if (t >= 0xe0) return (int8_t)t;
    switch (t) {
    case 0xcc: return (double)r_be(r, 1);
    case 0xcd: return (double)r_be(r, 2);
    case 0xce: return (double)r_be(r, 4);
    case 0xcf: return (double)r_be(r, 8);
    case 0xd0: return (int8_t)r_be(r, 1);
    case 0xd1: return (int16_t)r_be(r, 2);
    case 0xd2: return (int32_t)r_be(r, 4);
    case 0xd3: return (double)(int64_t)r_be(r, 8);
    case 0xca: {
        uint32_t u = (uint32_t)r_be(r, 4);
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    case 0xcb: {
        uint64_t u = r_be(r, 8);
        double d;
        memcpy(&d, &u, 8);
        return d;
    }
    default: r->bad = 1; return 0;
    }
}

static void r_skip(struct r *r, int depth) {
    if (r->p >= r->end || depth > 16) { r->bad = 1; return; }
    unsigned char t = *r->p;
    size_t n;
    if ((t & 0xe0) == 0xa0 || t == 0xd9 || t == 0xda || t == 0xdb || t == 0xc4 ||
        t == 0xc5 || t == 0xc6) {
        r_bytes(r, &n);
        return;
    }
    if (t < 0x80 || t >= 0xe0 || (t >= 0xca && t <= 0xd3)) { r_num(r); return; }
    r->p++;
    if (t == 0xc0 || t == 0xc2 || t == 0xc3) return; /* nil, false, true */
    size_t items;
    int pairs = 0;
    if ((t & 0xf0) == 0x80) { items = t & 15; pairs = 1; }
    else if ((t & 0xf0) == 0x90) items = t & 15;
    else if (t == 0xdc) items = r_be(r, 2);
    else if (t == 0xdd) items = r_be(r, 4);
    else if (t == 0xde) { items = r_be(r, 2); pairs = 1; }
    else if (t == 0xdf) { items = r_be(r, 4); pairs = 1; }
    else { r->bad = 1; return; }
    for (size_t i = 0; i < items * (pairs ? 2 : 1) && !r->bad; i++) r_skip(r, depth + 1);
}

/* The fields of a hub message this client looks at. */
struct msg {
    char type[16];
    char kind[16];
    char code[64];
    const unsigned char *body, *text;
    size_t body_len, text_len;
    uint64_t seq;
    double heartbeat;
};

static int key_is(const unsigned char *k, size_t n, const char *name) {
    return n == strlen(name) && memcmp(k, name, n) == 0;
}

static void copy_str(char *dst, size_t cap, const unsigned char *s, size_t n) {
    if (n >= cap) n = cap - 1;
    memcpy(dst, s, n);
    dst[n] = 0;
}

static int parse(const unsigned char *b, size_t n, struct msg *m) {
    struct r r = {b, b + n, 0};
    memset(m, 0, sizeof *m);
    if (r.p >= r.end) return -1;
    unsigned char t = *r.p++;
    size_t items;
    if ((t & 0xf0) == 0x80) items = t & 15;
    else if (t == 0xde) items = r_be(&r, 2);
    else return -1;
    for (size_t i = 0; i < items && !r.bad; i++) {
        size_t kn, vn;
        const unsigned char *k = r_bytes(&r, &kn);
        if (!k) return -1;
        if (key_is(k, kn, "type") || key_is(k, kn, "kind") || key_is(k, kn, "code")) {
            const unsigned char *v = r_bytes(&r, &vn);
            if (!v) return -1;
            if (k[0] == 't') copy_str(m->type, sizeof m->type, v, vn);
            else if (k[0] == 'k') copy_str(m->kind, sizeof m->kind, v, vn);
            else copy_str(m->code, sizeof m->code, v, vn);
        } else if (key_is(k, kn, "body")) {
            m->body = r_bytes(&r, &m->body_len);
        } else if (key_is(k, kn, "message")) {
            m->text = r_bytes(&r, &m->text_len);
        } else if (key_is(k, kn, "seq")) {
            m->seq = (uint64_t)r_num(&r);
        } else if (key_is(k, kn, "heartbeat")) {
            m->heartbeat = r_num(&r);
        } else {
            r_skip(&r, 0);
        }
    }
    return r.bad ? -1 : 0;
}

/* ------------------------------------------------------------ the load */

static int npairs = 100, window = 1, payload = 64;
static double rate = 0, ack_delay = 0.2, run_started;
static const char *password;
static uint32_t *samples;
static long nsamples, delivered, errors, stale;
static int measuring, stopping;
static uint64_t id_counter;
static struct conn **receivers, **senders;

static void put_hello(struct conn *c) {
    struct w w = frame_begin(c);
    w_map(&w, 3);
    w_str(&w, "type");
    w_str(&w, "hello");
    w_str(&w, "proto");
    w_uint(&w, 1);
    w_str(&w, "agent");
    w_str(&w, "hub_pairs.c");
    frame_end(c, &w);
}

static void put_login(struct conn *c) {
    char device[NAME_MAX_LEN + 8];
    snprintf(device, sizeof device, "bench-%s", c->user);
    struct w w = frame_begin(c);
    w_map(&w, 6);
    w_str(&w, "type");
    w_str(&w, "login");
    w_str(&w, "rid");
    w_uint(&w, 1);
    w_str(&w, "user");
    w_str(&w, c->user);
    w_str(&w, "device");
    w_str(&w, device);
    w_str(&w, "password");
    w_str(&w, password);
    w_str(&w, "last_seq");
    w_uint(&w, c->last_seq);
    frame_end(c, &w);
}

static void put_ack(struct conn *c, uint64_t upto) {
    struct w w = frame_begin(c);
    w_map(&w, 2);
    w_str(&w, "type");
    w_str(&w, "ack");
    w_str(&w, "upto");
    w_uint(&w, upto);
    frame_end(c, &w);
    c->acked = upto;
}

static void put_ping(struct conn *c) {
    struct w w = frame_begin(c);
    w_map(&w, 2);
    w_str(&w, "type");
    w_str(&w, "ping");
    w_str(&w, "n");
    w_uint(&w, 0);
    frame_end(c, &w);
}

/* A UUIDv7 (RFC 9562): 48 bits of wall-clock ms, version 7, variant 2, then a counter
 * and random bits, so the ids of one run are unique and ordered by time. */
static void new_id(unsigned char id[16]) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
    uint64_t count = ++id_counter;
    uint64_t noise = (uint64_t)random() << 31 ^ (uint64_t)random();
    for (int i = 0; i < 6; i++) id[i] = (unsigned char)(ms >> (40 - 8 * i));
    id[6] = (unsigned char)(0x70 | ((count >> 8) & 0x0f));
    id[7] = (unsigned char)count;
    id[8] = (unsigned char)(0x80 | ((count >> 12) & 0x3f));
    id[9] = (unsigned char)(count >> 18);
    for (int i = 10; i < 16; i++) id[i] = (unsigned char)(noise >> (8 * (i - 10)));
}

static void put_send(struct conn *c, double stamp) {
    char body[4100];
    unsigned char id[16];
    int n = snprintf(body, sizeof body, "%-20.9f", stamp);
    if (n > 20) n = 20; /* Python's f"{t:<20.9f}"[:20] */
    if (payload > n) {
        memset(body + n, 'x', (size_t)(payload - n));
        n = payload;
    }
    new_id(id);
    struct w w = frame_begin(c);
    w_map(&w, 4);
    w_str(&w, "type");
    w_str(&w, "send");
    w_str(&w, "id");
    w_bin(&w, id, 16);
    w_str(&w, "to");
    w_str(&w, receivers[c->pair]->user);
    w_str(&w, "body");
    w_strn(&w, body, (size_t)n);
    frame_end(c, &w);
}

static void refused(struct conn *c, const struct msg *m) {
    fprintf(stderr, "hub_pairs: the hub refused %s: %s: %.*s\n", c->user, m->code,
            (int)m->text_len, m->text ? (const char *)m->text : "");
    exit(1);
}

/* Handles one frame; what it answers goes into c's output buffer. */
static void on_frame(struct conn *c, const unsigned char *b, size_t n, int *ready,
                     uint64_t *upto) {
    struct msg m;
    if (parse(b, n, &m) < 0) fail("the hub sent a frame this client cannot read");
    if (strcmp(m.type, "ping") == 0) {
        struct w w = frame_begin(c);
        w_map(&w, 2);
        w_str(&w, "type");
        w_str(&w, "pong");
        w_str(&w, "n");
        w_uint(&w, 0);
        frame_end(c, &w);
        return;
    }
    if (strcmp(m.type, "pong") == 0 || strcmp(m.type, "presence") == 0) return;
    if (c->state != READY) {
        if (strcmp(m.type, "error") == 0) refused(c, &m);
        if (c->state == HELLO_WAIT && strcmp(m.type, "hello") == 0) {
            c->state = WELCOME_WAIT;
            put_login(c);
        } else if (c->state == WELCOME_WAIT && strcmp(m.type, "welcome") == 0) {
            c->state = READY;
            c->heartbeat = m.heartbeat > 0.5 ? m.heartbeat : 0.5;
            c->next_ping = now() + c->heartbeat;
            ++*ready;
        } else {
            fprintf(stderr, "hub_pairs: %s: unexpected %s before the login was accepted\n",
                    c->user, m.type);
            exit(1);
        }
        return;
    }
    if (strcmp(m.type, "deliver") == 0) {
        *upto = c->last_seq = m.seq;
        if (c->is_sender || strcmp(m.kind, "msg") != 0) return; /* a receipt */
        char stamp[32];
        copy_str(stamp, sizeof stamp, m.body ? m.body : (const unsigned char *)"",
                 m.body_len < 20 ? m.body_len : 20);
        double sent = atof(stamp);
        if (sent < run_started) {
            stale++; /* an earlier run's, replayed at login */
        } else if (measuring) {
            double us = (now() - sent) * 1e6;
            if (nsamples < MAX_SAMPLES) samples[nsamples++] = us < 0 ? 0 : (uint32_t)us;
            delivered++;
        }
    } else if (strcmp(m.type, "stored") == 0) {
        if (rate == 0 && !stopping) put_send(c, now());
    } else if (strcmp(m.type, "error") == 0) {
        errors++;
        if (c->is_sender && rate == 0 && !stopping) put_send(c, now());
    }
}

static int dial(const char *host, int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        fprintf(stderr, "hub_pairs: not an IPv4 address: %s\n", host);
        exit(2);
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket");
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) die("connect to the hub");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static void read_resume(struct conn **all, int count) {
    char line[256], name[NAME_MAX_LEN + 1];
    unsigned long long seq;
    while (fgets(line, sizeof line, stdin)) {
        if (sscanf(line, "%64s %llu", name, &seq) != 2) continue;
        for (int i = 0; i < count; i++)
            if (strcmp(all[i]->user, name) == 0) all[i]->last_seq = seq;
    }
}

/* Reads what the hub sent on c and handles every complete frame. */
static void on_readable(struct conn *c, int *ready) {
    ssize_t got = recv(c->fd, c->in + c->len, IN_BUF - c->len, 0);
    if (got == 0) {
        fprintf(stderr, "hub_pairs: the hub closed %s's connection\n", c->user);
        exit(1);
    }
    if (got < 0) {
        if (errno == EINTR || errno == EAGAIN) return;
        die("recv");
    }
    c->len += (size_t)got;
    size_t off = 0;
    uint64_t upto = 0;
    while (c->len - off >= 4) {
        const unsigned char *h = c->in + off;
        size_t n = (size_t)h[0] << 24 | (size_t)h[1] << 16 | (size_t)h[2] << 8 | h[3];
        if (n + 4 > IN_BUF) fail("the hub sent a frame larger than this client's buffer");
        if (c->len - off < n + 4) break;
        on_frame(c, h + 4, n, ready, &upto);
        off += n + 4;
    }
    memmove(c->in, c->in + off, c->len - off);
    c->len -= off;
    if (upto) {
        if (!c->is_sender) put_ack(c, upto); /* once per read, cumulatively */
        else if (c->ack_due == 0) c->ack_due = now() + ack_delay;
    }
    if (c->out_len) flush(c);
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1", *prefix = "b", *samples_path = NULL;
    int port = 0, cpu = -1, opt;
    double duration = 5, warmup = 1;
    while ((opt = getopt(argc, argv, "h:p:n:W:R:d:w:s:c:u:a:o:")) != -1) {
        switch (opt) {
        case 'h': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'n': npairs = atoi(optarg); break;
        case 'W': window = atoi(optarg); break;
        case 'R': rate = atof(optarg); break;
        case 'd': duration = atof(optarg); break;
        case 'w': warmup = atof(optarg); break;
        case 's': payload = atoi(optarg); break;
        case 'c': cpu = atoi(optarg); break;
        case 'u': prefix = optarg; break;
        case 'a': ack_delay = atof(optarg); break;
        case 'o': samples_path = optarg; break;
        default:
            fprintf(stderr, "usage: %s -p port [-h host] [-n pairs] [-W window] [-R rate] "
                            "[-d seconds] [-w warmup] [-s payload] [-c cpu] [-u prefix] "
                            "[-a ack_delay] [-o samples_file] < resume\n", argv[0]);
            return 2;
        }
    }
    password = getenv("DUPLEX_PASSWORD");
    if (port < 1 || port > 65535 || npairs < 1 || npairs > 5000 || payload < 20 ||
        payload > 4000 || duration <= 0 || warmup < 0 || window < 1 || window > 1000 ||
        rate < 0 || ack_delay < 0 || strlen(prefix) > 40 || !password) {
        fprintf(stderr, "hub_pairs: -p port 1..65535, pairs 1..5000, payload 20..4000, "
                        "duration > 0, window 1..1000, rate >= 0, prefix up to 40 "
                        "characters, and $DUPLEX_PASSWORD set\n");
        return 2;
    }
    if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        if (sched_setaffinity(0, sizeof set, &set) < 0) die("sched_setaffinity");
    }
    srandom((unsigned)(getpid() ^ (unsigned)(now() * 1e6)));
    run_started = now(); /* bodies stamped before this are an earlier run's */
    samples = malloc(sizeof(uint32_t) * MAX_SAMPLES);
    receivers = calloc((size_t)npairs, sizeof *receivers);
    senders = calloc((size_t)npairs, sizeof *senders);
    struct conn **all = calloc((size_t)npairs * 2, sizeof *all);
    if (!samples || !receivers || !senders || !all) die("malloc");
    for (int i = 0; i < npairs * 2; i++) {
        struct conn *c = calloc(1, sizeof *c);
        if (!c) die("malloc");
        c->pair = i % npairs;
        c->is_sender = i >= npairs;
        snprintf(c->user, sizeof c->user, "%s%c%d", prefix, c->is_sender ? 's' : 'r', c->pair);
        if (c->is_sender) senders[c->pair] = c; else receivers[c->pair] = c;
        all[i] = c;
    }
    read_resume(all, npairs * 2);
    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");
    for (int i = 0; i < npairs * 2; i++) {
        struct conn *c = all[i];
        c->fd = dial(host, port);
        put_hello(c);
        flush(c);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl");
    }
    int ready = 0, started = 0;
    double t0 = now(), t_start = 0, t_measure = 0, t_end = 0, next_scan = 0;
    long k = 0; /* open loop: the next message's number */
    struct rusage r0, r1;
    struct epoll_event evs[512];
    for (;;) {
        double t = now();
        if (!started && ready == npairs * 2) {
            started = 1;
            t_start = t;
            if (rate == 0)
                for (int i = 0; i < npairs; i++) {
                    for (int w = 0; w < window; w++) put_send(senders[i], now());
                    flush(senders[i]);
                }
        }
        if (!started && t - t0 > 120) {
            fprintf(stderr, "hub_pairs: only %d of %d logins accepted after 120 s\n", ready,
                    npairs * 2);
            return 1;
        }
        if (started && !measuring && t_measure == 0 && t - t_start >= warmup) {
            measuring = 1;
            t_measure = t;
            delivered = 0;
            getrusage(RUSAGE_SELF, &r0);
            printf("measuring\n");
            fflush(stdout);
        }
        if (measuring && t - t_measure >= duration) {
            t_end = t;
            getrusage(RUSAGE_SELF, &r1);
            measuring = 0;
            stopping = 1;
            printf("measured\n");
            fflush(stdout);
            break;
        }
        double wait = 0.01;
        if (started && rate > 0) {
            /* Open loop: what is due within half a millisecond leaves now. */
            for (;;) {
                double due = t_start + (double)k / rate;
                if (due - t > 0.0005) {
                    if (due - t < wait) wait = due - t;
                    break;
                }
                struct conn *c = senders[k % npairs];
                put_send(c, due);
                flush(c);
                k++;
            }
        }
        if (t >= next_scan) { /* delayed receipt acks and heartbeats, every 10 ms */
            next_scan = t + 0.01;
            for (int i = 0; i < npairs * 2; i++) {
                struct conn *c = all[i];
                if (c->ack_due && t >= c->ack_due) {
                    c->ack_due = 0;
                    if (c->last_seq > c->acked) put_ack(c, c->last_seq);
                }
                if (c->state == READY && t >= c->next_ping) {
                    c->next_ping = t + c->heartbeat;
                    put_ping(c);
                }
                if (c->out_len) flush(c);
            }
        }
        struct timespec ts = {0, (long)(wait * 1e9)};
        int n = epoll_pwait2(ep, evs, 512, &ts, NULL);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) on_readable(evs[i].data.ptr, &ready);
    }
    double elapsed = t_end - t_measure;
    double cpu_s = (r1.ru_utime.tv_sec - r0.ru_utime.tv_sec) +
                   (r1.ru_utime.tv_usec - r0.ru_utime.tv_usec) / 1e6 +
                   (r1.ru_stime.tv_sec - r0.ru_stime.tv_sec) +
                   (r1.ru_stime.tv_usec - r0.ru_stime.tv_usec) / 1e6;
    if (samples_path) {
        FILE *f = fopen(samples_path, "wb");
        if (!f || fwrite(samples, sizeof(uint32_t), (size_t)nsamples, f) != (size_t)nsamples ||
            fclose(f) != 0)
            die("writing the samples");
    }
    qsort(samples, (size_t)nsamples, sizeof(uint32_t), cmp_u32);
    printf("{\"messages\":%ld,\"msgs_per_s\":%.1f,\"elapsed\":%.6f,\"cpu\":%.4f,"
           "\"errors\":%ld,\"stale\":%ld,\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"max_ms\":%.3f,"
           "\"seqs\":{",
           delivered, delivered / elapsed, elapsed, cpu_s / elapsed, errors, stale,
           nsamples ? samples[nsamples / 2] / 1e3 : 0.0,
           nsamples ? samples[(size_t)(nsamples * 0.99)] / 1e3 : 0.0,
           nsamples ? samples[nsamples - 1] / 1e3 : 0.0);
    for (int i = 0; i < npairs * 2; i++)
        printf("%s\"%s\":%llu", i ? "," : "", all[i]->user,
               (unsigned long long)all[i]->last_seq);
    printf("}}\n");
    fflush(stdout);
    for (int i = 0; i < npairs * 2; i++) close(all[i]->fd);
    return 0;
}
