/* Load generator and backends for bench/compare.py. Prints key=value lines.
 *
 *   loadgen echo PORT                       epoll echo server on 127.0.0.1
 *   loadgen sink PORT                       reads to EOF, answers the byte count (8 bytes), closes
 *   loadgen pingpong PORT SIZE COUNT        one connection, COUNT round trips: p50_us p99_us
 *   loadgen concurrent PORT CONNS SIZE SECS CONNS connections ping-ponging: msgs_per_s p50_us p99_us
 *   loadgen bulk PORT MIB                   MIB MiB to the sink, half-close, wait for its count: mib_per_s
 *   loadgen connrate PORT SECS              connect, 1-byte echo, close, repeatedly: conns_per_s
 *   loadgen idle PORT N                     N connections, one echo each, print ready, hold until stdin EOF
 * A client's PORT may be "P1,P2,...": its connections go round-robin over those ports.
 *
 * With LOADGEN_TWS=1 every connection opens with the TWS API handshake (client hello, server
 * version reply, startApi, then TWS's managedAccounts and nextValidId that accept the session)
 * before its traffic, on both the client and the backend side.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAXFD 65536
#define HIST_US 200000

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void die(const char *m) { perror(m); exit(1); }

static int tws_mode;
static void write_all(int fd, const char *p, size_t n);
static void read_exact(int fd, char *p, size_t n);

static void read_frame(int fd) {
    uint32_t n;
    char buf[4096];
    read_exact(fd, (char *)&n, 4);
    n = ntohl(n);
    if (n > sizeof buf) { fprintf(stderr, "frame too long\n"); exit(1); }
    read_exact(fd, buf, n);
}

static void tws_client_handshake(int fd) {
    static const char hello[] = "API\0\0\0\0\x09v157..178";
    static const char start[] = "\0\0\0\x08" "71\0" "2\0" "1\0" "\0";
    write_all(fd, hello, sizeof hello - 1);
    read_frame(fd);                               /* server version reply */
    write_all(fd, start, sizeof start - 1);
    read_frame(fd);                               /* managedAccounts */
    read_frame(fd);                               /* nextValidId: the session is accepted */
}

static int recv_exact(int fd, char *p, size_t n) {   /* 0 on success, -1 if the peer went away */
    while (n) {
        ssize_t r = read(fd, p, n);
        if (r <= 0) { if (r < 0 && errno == EINTR) continue; return -1; }
        p += r; n -= r;
    }
    return 0;
}

static int recv_frame(int fd) {
    uint32_t n;
    char buf[4096];
    if (recv_exact(fd, (char *)&n, 4)) return -1;
    n = ntohl(n);
    return n > sizeof buf ? -1 : recv_exact(fd, buf, n);
}

static int tws_server_handshake(int fd) {        /* fd is blocking here; -1: drop this connection */
    static const char reply[] = "\0\0\0\x1a" "176\0" "20261124 09:30:00 EST\0";
    static const char accept[] = "\0\0\0\x09" "15\0" "1\0" "DU1\0" "\0\0\0\x06" "9\0" "1\0" "1\0";
    char magic[4];
    if (recv_exact(fd, magic, 4) || recv_frame(fd)) return -1;    /* API\0, v157..178 */
    if (write(fd, reply, sizeof reply - 1) != sizeof reply - 1) return -1;
    if (recv_frame(fd)) return -1;                                 /* startApi */
    return write(fd, accept, sizeof accept - 1) == sizeof accept - 1 ? 0 : -1;   /* accounts, next id */
}

/* PORT may be "P1,P2,...": connections go round-robin over the ports (several relay processes,
 * one per core, as SO_REUSEPORT would spread them) */
static int ports[16], n_ports, next_port;

static int dial(int port) {
    if (n_ports > 1) port = ports[next_port++ % n_ports];
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    if (fd < 0 || connect(fd, (void *)&a, sizeof a)) die("connect");
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (tws_mode) tws_client_handshake(fd);
    return fd;
}

static void write_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EAGAIN) { struct pollfd q = {fd, POLLOUT, 0}; poll(&q, 1, -1); continue; }
            if (errno == EINTR) continue;
            die("write");
        }
        p += w; n -= w;
    }
}

static void read_exact(int fd, char *p, size_t n) {
    while (n) {
        ssize_t r = read(fd, p, n);
        if (r <= 0) { if (r < 0 && errno == EINTR) continue; fprintf(stderr, "short read\n"); exit(1); }
        p += r; n -= r;
    }
}

static void serve(int port, int echo) {
    static char buf[1 << 18];
    static uint64_t count[MAXFD];
    int one = 1, ls = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(ls, (void *)&a, sizeof a) || listen(ls, 4096)) die("listen");
    fcntl(ls, F_SETFL, O_NONBLOCK);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls}, evs[256];
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    printf("ready=1\n");
    fflush(stdout);
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                int c;
                while ((c = accept4(ls, NULL, NULL, 0)) >= 0) {
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    if (tws_mode && tws_server_handshake(c)) { close(c); continue; }
                    fcntl(c, F_SETFL, O_NONBLOCK);
                    count[c] = 0;
                    struct epoll_event ce = {.events = EPOLLIN, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
                }
                continue;
            }
            for (;;) {
                ssize_t r = read(fd, buf, sizeof buf);
                if (r > 0) {
                    if (echo) write_all(fd, buf, r); else count[fd] += r;
                    continue;
                }
                if (r < 0 && errno == EAGAIN) break;
                if (r == 0 && !echo) write_all(fd, (char *)&count[fd], 8);
                close(fd);
                break;
            }
        }
    }
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void pingpong(int port, int size, int count) {
    char *msg = calloc(1, size), *back = malloc(size);
    double *lat = malloc(sizeof(double) * count);
    int fd = dial(port);
    for (int i = 0; i < 2000; i++) { write_all(fd, msg, size); read_exact(fd, back, size); }   /* warm up */
    for (int i = 0; i < count; i++) {
        double t0 = now();
        write_all(fd, msg, size);
        read_exact(fd, back, size);
        lat[i] = (now() - t0) * 1e6;
    }
    qsort(lat, count, sizeof(double), cmp_d);
    printf("p50_us=%.1f\np99_us=%.1f\n", lat[count / 2], lat[count * 99 / 100]);
}

static double hist_pct(uint64_t *h, uint64_t total, double pct) {
    uint64_t want = (uint64_t)(total * pct), seen = 0;
    for (int i = 0; i < HIST_US; i++) { seen += h[i]; if (seen > want) return i; }
    return HIST_US;
}

static void concurrent(int port, int conns, int size, double secs) {
    static uint64_t hist[HIST_US];
    static double sent_at[MAXFD];
    static int got[MAXFD];
    char *msg = calloc(1, size), buf[65536];
    int ep = epoll_create1(0);
    struct epoll_event evs[512];
    for (int i = 0; i < conns; i++) {
        int fd = dial(port);
        fcntl(fd, F_SETFL, O_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        got[fd] = 0;
        sent_at[fd] = now();
        write_all(fd, msg, size);
    }
    uint64_t done = 0;
    double start = now(), end = start + secs;
    while (now() < end) {
        int n = epoll_wait(ep, evs, 512, 100);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            ssize_t r = read(fd, buf, sizeof buf);
            if (r <= 0) { if (r < 0 && errno == EAGAIN) continue; fprintf(stderr, "conn lost\n"); exit(1); }
            got[fd] += r;
            if (got[fd] >= size) {
                double t = now();
                long us = (long)((t - sent_at[fd]) * 1e6);
                hist[us < HIST_US ? us : HIST_US - 1]++;
                done++;
                got[fd] -= size;
                sent_at[fd] = t;
                write_all(fd, msg, size);
            }
        }
    }
    double el = now() - start;
    printf("msgs_per_s=%.0f\np50_us=%.0f\np99_us=%.0f\n", done / el, hist_pct(hist, done, 0.5), hist_pct(hist, done, 0.99));
}

static void bulk(int port, int mib) {
    size_t chunk = 1 << 20;
    char *buf = malloc(chunk);
    memset(buf, 'b', chunk);
    uint64_t total = (uint64_t)mib << 20, count = 0;
    int fd = dial(port);
    double t0 = now();
    for (int i = 0; i < mib; i++) write_all(fd, buf, chunk);
    shutdown(fd, SHUT_WR);
    read_exact(fd, (char *)&count, 8);
    double el = now() - t0;
    if (count != total) { fprintf(stderr, "sink counted %llu of %llu\n", (unsigned long long)count, (unsigned long long)total); exit(1); }
    printf("mib_per_s=%.0f\n", mib / el);
}

static void connrate(int port, double secs) {
    char b = 'c';
    uint64_t n = 0;
    double start = now(), end = start + secs;
    while (now() < end) {
        int fd = dial(port);
        write_all(fd, &b, 1);
        read_exact(fd, &b, 1);
        close(fd);
        n++;
    }
    printf("conns_per_s=%.0f\n", n / (now() - start));
}

static void idle(int port, int n) {
    char b = 'i';
    for (int i = 0; i < n; i++) {
        int fd = dial(port);
        write_all(fd, &b, 1);
        read_exact(fd, &b, 1);
    }
    printf("ready=%d\n", n);
    fflush(stdout);
    while (read(0, &b, 1) > 0) {}
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    tws_mode = getenv("LOADGEN_TWS") && !strcmp(getenv("LOADGEN_TWS"), "1");
    if (argc < 3) { fprintf(stderr, "usage: see the top of loadgen.c\n"); return 2; }
    const char *m = argv[1];
    int port = atoi(argv[2]);
    for (char *p = argv[2]; p && *p && n_ports < 16; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL)
        ports[n_ports++] = atoi(p);
    if (!strcmp(m, "echo")) serve(port, 1);
    else if (!strcmp(m, "sink")) serve(port, 0);
    else if (!strcmp(m, "pingpong") && argc == 5) pingpong(port, atoi(argv[3]), atoi(argv[4]));
    else if (!strcmp(m, "concurrent") && argc == 6) concurrent(port, atoi(argv[3]), atoi(argv[4]), atof(argv[5]));
    else if (!strcmp(m, "bulk") && argc == 4) bulk(port, atoi(argv[3]));
    else if (!strcmp(m, "connrate") && argc == 4) connrate(port, atof(argv[3]));
    else if (!strcmp(m, "idle") && argc == 4) idle(port, atoi(argv[3]));
    else { fprintf(stderr, "bad arguments\n"); return 2; }
    return 0;
}
