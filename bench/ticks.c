/* Tick-stream benchmark: what a trader feels. A stand-in TWS streams framed, timestamped,
 * sequenced market-data messages to N bots through a path (direct, or a proxy); each bot records
 * one-way latency and checks for loss, duplication and reordering.
 *
 *   ticks PATH_PORT TWS_PORT BOTS RATE BURST SECS [OPENING]
 *     PATH_PORT  where the bots connect (TWS_PORT itself for a direct path); "P1,P2,...": bot i
 *                connects to the (i mod n)-th port (several relay processes, one per core)
 *     TWS_PORT   where the stand-in TWS listens (127.0.0.1)
 *     RATE       messages per second per bot, evenly spaced (steady rows); 0 with BURST
 *     BURST      messages per bot sent back to back once a second (burst rows); 0 with RATE
 *     OPENING    "settled" (default), or "never": after startApi the stand-in TWS sends no
 *                managedAccounts / nextValidId, only market data (an opening that never settles)
 *   prints: msgs= lost= reordered= p50_us= p99_us= p999_us= max_us=
 *
 * Every bot opens with the TWS API handshake (hello, version reply, startApi, managedAccounts and
 * nextValidId), as ib_async does, so a TWS-aware proxy reads a real opening. Connections that do not
 * say "API\0" (a proxy's own target checks) are closed. Messages are tickPrice-shaped text fields
 * padded to ~130 bytes; the timestamp is CLOCK_MONOTONIC, taken when the message is written.
 * Two threads: the stand-in TWS sends, the bots receive (epoll).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAXBOTS 256
#define MSG 130

static int bots, rate, burst, secs, tws_listener, settles = 1;
static int server_fd[MAXBOTS];            /* the stand-in TWS's side of each bot's session */
static volatile int ready_count, sending_done;
static uint64_t *lat;                     /* ns, one per received message */
static uint64_t nlat, cap;

static void die(const char *what) { perror(what); exit(1); }

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + t.tv_nsec;
}

static void write_all(int fd, const void *p, size_t n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) { if (errno == EINTR) continue; die("write"); }
        p = (const char *)p + w; n -= w;
    }
}

static int read_exact(int fd, void *p, size_t n) {   /* 0 ok, -1 closed */
    while (n) {
        ssize_t r = read(fd, p, n);
        if (r <= 0) { if (r < 0 && errno == EINTR) continue; return -1; }
        p = (char *)p + r; n -= r;
    }
    return 0;
}

static int read_frame(int fd, char *buf, size_t size) {  /* payload length, -1 closed */
    uint32_t n;
    if (read_exact(fd, &n, 4)) return -1;
    n = ntohl(n);
    if (n >= size || read_exact(fd, buf, n)) return -1;
    buf[n] = 0;
    return (int)n;
}

static void frame(int fd, const char *payload, size_t n) {
    char out[512];
    uint32_t len = htonl((uint32_t)n);
    memcpy(out, &len, 4);
    memcpy(out + 4, payload, n);
    write_all(fd, out, n + 4);
}

/* ---------------------------------------------------------------- the stand-in TWS */

static void *acceptor(void *arg) {
    (void)arg;
    for (;;) {
        int c = accept(tws_listener, NULL, NULL);
        if (c < 0) { if (errno == EINTR) continue; return NULL; }
        int one = 1;
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        char magic[4], buf[512];
        if (read_exact(c, magic, 4) || memcmp(magic, "API\0", 4) || read_frame(c, buf, sizeof buf) < 0) {
            close(c);                                   /* a proxy's target check, or garbage */
            continue;
        }
        static const char version[] = "176\0" "20261125 09:30:00 EST";
        frame(c, version, sizeof version);              /* both fields with their NULs */
        int n = read_frame(c, buf, sizeof buf);         /* startApi: 71 \0 2 \0 id \0 \0 */
        if (n < 0) { close(c); continue; }
        int id = atoi(buf + 5);
        if (id < 0 || id >= bots || server_fd[id]) { close(c); continue; }
        static const char accounts[] = "15\0" "1\0" "DU1";
        static const char next_id[] = "9\0" "1\0" "1";
        if (settles) {
            frame(c, accounts, sizeof accounts);
            frame(c, next_id, sizeof next_id);
        }
        server_fd[id] = c;
        __sync_fetch_and_add(&ready_count, 1);
    }
}

static void send_tick(int bot, uint64_t seq) {
    char p[MSG];
    int n = snprintf(p, sizeof p, "1%c6%c%d%c%llu%c%llu%c", 0, 0, bot, 0, (unsigned long long)seq, 0,
                     (unsigned long long)now_ns(), 0);
    memset(p + n, 'x', MSG - 1 - n);                    /* padding, then the last NUL */
    p[MSG - 1] = 0;
    frame(server_fd[bot], p, MSG);
}

static uint64_t sent;

static void *sender(void *arg) {
    (void)arg;
    uint64_t seq[MAXBOTS] = {0};
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    uint64_t end = now_ns() + (uint64_t)secs * 1000000000ull;
    long step = rate ? 1000000000L / rate : 1000000000L;
    while (now_ns() < end) {
        for (int b = 0; b < bots; b++)
            for (int k = 0; k < (rate ? 1 : burst); k++) {
                send_tick(b, ++seq[b]);
                sent++;
            }
        next.tv_nsec += step;
        while (next.tv_nsec >= 1000000000L) { next.tv_nsec -= 1000000000L; next.tv_sec++; }
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL) == EINTR) {}
    }
    static const char endmsg[] = "0\0end";
    for (int b = 0; b < bots; b++) frame(server_fd[b], endmsg, sizeof endmsg);
    sending_done = 1;
    return NULL;
}

/* ---------------------------------------------------------------- the bots */

static int dial(int port) {   /* retries a refusal for 15 s: a relay listens once it sees TWS up */
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    for (int tries = 0;; tries++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
        if (fd < 0) die("socket");
        if (connect(fd, (void *)&a, sizeof a) == 0) {
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            return fd;
        }
        if (errno != ECONNREFUSED || tries > 1500) die("connect");
        close(fd);
        usleep(10000);
    }
}

static void bot_opening(int fd, int id) {
    static const char hello[] = "API\0\0\0\0\x09v157..178";
    char buf[512], start[64];
    write_all(fd, hello, sizeof hello - 1);
    if (read_frame(fd, buf, sizeof buf) < 0) die("version reply");
    int n = snprintf(start, sizeof start, "71%c2%c%d%c%c", 0, 0, id, 0, 0);
    frame(fd, start, n);
    for (int got = 0; settles && got < 2;)              /* managedAccounts, nextValidId */
        if (read_frame(fd, buf, sizeof buf) < 0) die("opening"); else got++;
}

struct inbox { int fd; uint64_t expect; char buf[1 << 16]; size_t have; int done; };

int main(int argc, char **argv) {
    if (argc != 7 && argc != 8) { fprintf(stderr, "usage: see the top of ticks.c\n"); return 2; }
    settles = argc == 7 || strcmp(argv[7], "never");
    int path_ports[16], n_paths = 0, tws_port = atoi(argv[2]);
    for (char *p = argv[1]; *p && n_paths < 16; ) {
        path_ports[n_paths++] = atoi(p);
        p = strchr(p, ',');
        if (!p) break;
        p++;
    }
    bots = atoi(argv[3]); rate = atoi(argv[4]); burst = atoi(argv[5]); secs = atoi(argv[6]);
    if (bots < 1 || bots > MAXBOTS || (!rate == !burst)) { fprintf(stderr, "bad arguments\n"); return 2; }

    tws_listener = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(tws_listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(tws_port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (bind(tws_listener, (void *)&a, sizeof a) || listen(tws_listener, 1024)) die("listen");
    pthread_t acc, snd;
    pthread_create(&acc, NULL, acceptor, NULL);

    static struct inbox box[MAXBOTS];
    int ep = epoll_create1(0);
    for (int b = 0; b < bots; b++) {
        box[b].fd = dial(path_ports[b % n_paths]);
        bot_opening(box[b].fd, b);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = b};
        epoll_ctl(ep, EPOLL_CTL_ADD, box[b].fd, &ev);
    }
    while (ready_count < bots) usleep(1000);

    cap = (uint64_t)bots * (rate ? (uint64_t)rate : (uint64_t)burst) * (secs + 1) + 16;
    lat = malloc(cap * sizeof *lat);
    uint64_t reordered = 0, received = 0;
    int open_bots = bots;
    pthread_create(&snd, NULL, sender, NULL);
    uint64_t give_up = 0;
    while (open_bots) {
        struct epoll_event evs[MAXBOTS];
        int n = epoll_wait(ep, evs, MAXBOTS, 100);
        if (sending_done && !give_up) give_up = now_ns() + 10000000000ull;   /* 10 s to drain */
        if (give_up && now_ns() > give_up) break;
        for (int i = 0; i < n; i++) {
            struct inbox *x = &box[evs[i].data.u32];
            ssize_t r = read(x->fd, x->buf + x->have, sizeof x->buf - x->have);
            if (r <= 0) { if (!x->done) { x->done = 1; open_bots--; } continue; }
            x->have += r;
            size_t off = 0;
            for (;;) {
                if (x->have - off < 4) break;
                uint32_t len;
                memcpy(&len, x->buf + off, 4);
                len = ntohl(len);
                if (x->have - off < 4 + len) break;
                uint64_t t = now_ns();
                char *p = x->buf + off + 4;
                if (p[0] == '0') {                       /* the end */
                    if (!x->done) { x->done = 1; open_bots--; }
                } else {
                    char *f = p + strlen(p) + 1;         /* skip "1" */
                    f += strlen(f) + 1;                  /* skip "6" */
                    f += strlen(f) + 1;                  /* skip the bot */
                    uint64_t seq = strtoull(f, NULL, 10);
                    f += strlen(f) + 1;
                    uint64_t ts = strtoull(f, NULL, 10);
                    if (seq != x->expect + 1) reordered++;
                    x->expect = seq > x->expect ? seq : x->expect;
                    if (nlat < cap) lat[nlat++] = t - ts;
                    received++;
                }
                off += 4 + len;
            }
            memmove(x->buf, x->buf + off, x->have - off);
            x->have -= off;
        }
    }
    pthread_join(snd, NULL);
    int cmp(const void *l, const void *r) { uint64_t x = *(const uint64_t *)l, y = *(const uint64_t *)r; return x < y ? -1 : x > y; }
    qsort(lat, nlat, sizeof *lat, cmp);
#define PCT(q) (nlat ? lat[(uint64_t)((nlat - 1) * (q))] / 1000.0 : 0.0)
    printf("msgs=%llu lost=%lld reordered=%llu p50_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%.1f\n",
           (unsigned long long)received, (long long)sent - (long long)received, (unsigned long long)reordered,
           PCT(0.5), PCT(0.99), PCT(0.999), nlat ? lat[nlat - 1] / 1000.0 : 0.0);
    return 0;
}
