/* The native data plane (Linux): once a session's opening is settled, the relay hands both sockets
 * of a connection to this pump, which splices them in its own thread with epoll, without the
 * interpreter or the GIL. It follows the same rules as pump.py, written once in
 * docs/architecture.md ("The pump's rules"), with the write-buffer marks pump.py passes to
 * relay_pump_start: memory per connection is bounded by high + SCRATCH each way.
 * Python drives it through a command queue and learns of closed pairs from a report queue; an
 * eventfd wakes each side. A process may start several pumps (one per CPU); each is independent
 * and owns the pairs given to it. With busy polling set (`busy_poll`, off by default), a thread
 * with pairs polls without sleeping, yielding the CPU between polls, for that many microseconds
 * before it sleeps: a thread that sleeps is placed on a CPU again when woken, and on a small
 * machine often beside the thread that sends to it (docs/benchmarks.md). Loaded with ctypes: no
 * Python headers needed to build it. One file on purpose (over 400 lines): one translation unit
 * that setup.py builds as is, with no header between its two sides (the thread's and Python's).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SCRATCH (256 * 1024)      /* one read */
#define MAX_EVENTS 256
#define RELEASE_BATCH 64          /* ended pairs whose release may wait for the thread's next command */

enum { CMD_ADD, CMD_CLOSE, CMD_ABORT };
/* who ended a pair, as reported: the side (0 client, 1 upstream) that sent FIN or was lost first,
 * or the relay */
enum { BY_CLIENT = 0, BY_UPSTREAM = 1, BY_RELAY = 2 };

struct pair;

struct side {
    struct pair *pair;
    int fd;          /* -1 once closed */
    int idx;
    uint32_t mask;   /* events registered with epoll */
};

struct direction {   /* bytes read from side i, written to side 1 - i */
    char *pend;      /* what the writer could not take yet: plen bytes at poff, room for cap */
    size_t plen, poff, cap;
    int full;        /* the high mark reached: side i is not read until the low one */
    int eof;         /* side i sent FIN */
    int shut;        /* FIN forwarded */
};

struct pair {
    struct side side[2];
    struct direction dir[2];
    uint64_t bytes[2];      /* read from each side; Python reads them while the pair lives */
    uint64_t held[2];       /* of those, not yet written to the other side (dir[i].plen, for Python) */
    int closing;            /* no more reading; flush what is pending, then close */
    int ending;             /* a side sent FIN or was lost, or closing: the session is over (Python reads it) */
    int reported;
    int by, err;            /* who ended it first, and the error (0: FIN or the relay) */
    int drain_ms;
    int64_t deadline;       /* closing: monotonic ms by which pending bytes must be gone */
    struct pair *prev, *next;
    struct pair *done_next; /* once ended: the pump's reported, then released list (under its lock) */
};

struct report { struct pair *pair; uint64_t bytes[2]; int32_t by, err; };
struct cmd { int op; struct pair *pair; };

struct queue { void *items; size_t len, cap, size; };

struct pump {
    int ep, cmd_fd, report_fd;
    pthread_t thread;
    pthread_mutex_t lock;
    struct queue cmds;
    /* ended pairs, linked through the pairs themselves: reporting and releasing need no memory, so
     * they cannot fail. Python takes reports from `reported`; each goes on `released`, and the
     * thread frees those after the commands queued before them. */
    struct pair *reported, *reported_tail, *released;
    int released_count;
    struct pair *live;      /* pairs the thread owns and has not reported */
    int closing_count;
    char *scratch;
    int busy_poll_us;       /* Python may change it at any time */
    long pairs;             /* added and not yet freed (released and run), for tests */
    size_t high, low;       /* the write-buffer marks, pump.py's */
};

static int64_t now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t now_ms(void) { return now_us() / 1000; }

static void note_ending(struct pair *pr) {
    __atomic_store_n(&pr->ending, 1, __ATOMIC_RELAXED);
}

static void note_held(struct pair *pr, int i) {
    __atomic_store_n(&pr->held[i], (uint64_t)pr->dir[i].plen, __ATOMIC_RELAXED);
}

static int q_push(struct queue *q, const void *item) {
    if (q->len == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 64;
        void *items = realloc(q->items, cap * q->size);
        if (!items) return -1;
        q->items = items;
        q->cap = cap;
    }
    memcpy((char *)q->items + q->len * q->size, item, q->size);
    q->len++;
    return 0;
}

static void wake(int fd) {
    uint64_t one = 1;
    ssize_t n = write(fd, &one, sizeof one);
    (void)n;   /* an eventfd write fails only when its counter is full: already awake */
}

/* -- the thread's side ------------------------------------------------------------------------ */

static void set_mask(struct pump *p, struct side *s) {
    struct pair *pr = s->pair;
    if (s->fd < 0) return;
    uint32_t want = 0;
    struct direction *d = &pr->dir[s->idx];
    if (d->full ? d->plen <= p->low : d->plen >= p->high) d->full = !d->full;
    if (!pr->closing && !d->eof && !d->full && pr->side[1 - s->idx].fd >= 0)
        want |= EPOLLIN;
    if (pr->dir[1 - s->idx].plen) want |= EPOLLOUT;
    if (want == s->mask) return;
    struct epoll_event ev = { .events = want, .data.ptr = s };
    epoll_ctl(p->ep, EPOLL_CTL_MOD, s->fd, &ev);
    s->mask = want;
}

static void close_side(struct pump *p, struct side *s) {
    if (s->fd < 0) return;
    epoll_ctl(p->ep, EPOLL_CTL_DEL, s->fd, NULL);
    close(s->fd);
    s->fd = -1;
}

static void finish_if_done(struct pump *p, struct pair *pr) {
    if (pr->side[0].fd >= 0 || pr->side[1].fd >= 0 || pr->reported) return;
    pr->reported = 1;
    for (int i = 0; i < 2; i++) {
        free(pr->dir[i].pend);
        pr->dir[i].pend = NULL;
        pr->dir[i].plen = pr->dir[i].cap = 0;
        note_held(pr, i);
    }
    if (pr->closing) p->closing_count--;
    if (pr->prev) pr->prev->next = pr->next; else p->live = pr->next;
    if (pr->next) pr->next->prev = pr->prev;
    pr->prev = pr->next = NULL;
    pthread_mutex_lock(&p->lock);
    pr->done_next = NULL;
    if (p->reported_tail) p->reported_tail->done_next = pr; else p->reported = pr;
    p->reported_tail = pr;
    pthread_mutex_unlock(&p->lock);
    wake(p->report_fd);
}

/* Close both sides now, whatever is still owed to them. */
static void cut(struct pump *p, struct pair *pr) {
    for (int i = 0; i < 2; i++) close_side(p, &pr->side[i]);
    finish_if_done(p, pr);
}

static void ended_by(struct pair *pr, int by, int err) {
    if (pr->by < 0) { pr->by = by; pr->err = err; }
}

/* Stop reading; close each side at once unless bytes are still owed to it. */
static void start_closing(struct pump *p, struct pair *pr) {
    note_ending(pr);
    if (!pr->closing) {
        pr->closing = 1;
        p->closing_count++;
        pr->deadline = now_ms() + pr->drain_ms;
    }
    for (int i = 0; i < 2; i++) {
        if (pr->dir[1 - i].plen == 0) close_side(p, &pr->side[i]);
        else set_mask(p, &pr->side[i]);
    }
    finish_if_done(p, pr);
}

static void lose(struct pump *p, struct pair *pr, int i, int err) {
    ended_by(pr, i, err ? err : ECONNRESET);
    free(pr->dir[1 - i].pend);   /* owed to the side that is gone */
    pr->dir[1 - i].pend = NULL;
    pr->dir[1 - i].plen = pr->dir[1 - i].poff = pr->dir[1 - i].cap = 0;
    note_held(pr, 1 - i);
    close_side(p, &pr->side[i]);
    start_closing(p, pr);
}

static void forward_fin(struct pump *p, struct pair *pr, int i) {
    struct direction *d = &pr->dir[i];
    if (!d->eof || d->shut || d->plen) return;
    d->shut = 1;
    if (pr->side[1 - i].fd >= 0) shutdown(pr->side[1 - i].fd, SHUT_WR);
    if (pr->dir[1 - i].shut) start_closing(p, pr);   /* both ways done */
}

/* Write d's pending bytes to side `to`; 0 when all went, 1 when some are left, -1 on error. */
static int flush(struct pump *p, struct pair *pr, int to) {
    struct direction *d = &pr->dir[1 - to];
    while (d->plen) {
        ssize_t w = send(pr->side[to].fd, d->pend + d->poff, d->plen, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 1;
            lose(p, pr, to, errno);
            return -1;
        }
        d->poff += (size_t)w;
        d->plen -= (size_t)w;
        note_held(pr, 1 - to);
    }
    free(d->pend);     /* an idle connection holds no buffer */
    d->pend = NULL;
    d->poff = d->cap = 0;
    return 0;
}

/* Keep n more bytes after what already waits; -1 when memory runs out. */
static int keep(struct pair *pr, int i, const char *data, size_t n) {
    struct direction *d = &pr->dir[i];
    if (d->cap - d->poff - d->plen < n) {
        if (d->poff) {
            memmove(d->pend, d->pend + d->poff, d->plen);
            d->poff = 0;
        }
        if (d->cap - d->plen < n) {
            size_t cap = d->plen + n;
            char *pend = realloc(d->pend, cap);
            if (!pend) return -1;
            d->pend = pend;
            d->cap = cap;
        }
    }
    memcpy(d->pend + d->poff + d->plen, data, n);
    d->plen += n;
    note_held(pr, i);
    return 0;
}

static void read_side(struct pump *p, struct pair *pr, int i) {
    int to = 1 - i;
    struct direction *d = &pr->dir[i];
    ssize_t n = recv(pr->side[i].fd, p->scratch, SCRATCH, MSG_DONTWAIT);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
        lose(p, pr, i, errno);
        return;
    }
    if (n == 0) {
        note_ending(pr);     /* before the FIN goes on: whoever sees it there finds the session over */
        d->eof = 1;
        ended_by(pr, i, 0);
        forward_fin(p, pr, i);
        return;
    }
    __atomic_store_n(&pr->bytes[i], pr->bytes[i] + (uint64_t)n, __ATOMIC_RELAXED);
    size_t off = 0;
    while (d->plen == 0 && off < (size_t)n) {   /* bytes already waiting go first: keep order */
        ssize_t w = send(pr->side[to].fd, p->scratch + off, (size_t)n - off, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            lose(p, pr, to, errno);
            return;
        }
        off += (size_t)w;
    }
    if (off < (size_t)n && keep(pr, i, p->scratch + off, (size_t)n - off) < 0) {
        ended_by(pr, BY_RELAY, ENOMEM);
        start_closing(p, pr);
    }
}

static void on_event(struct pump *p, struct side *s, uint32_t ev) {
    struct pair *pr = s->pair;
    int i = s->idx;
    if (s->fd < 0 || pr->reported) return;
    if ((ev & EPOLLOUT) && pr->dir[1 - i].plen) {
        if (flush(p, pr, i) < 0) goto done;
        forward_fin(p, pr, 1 - i);
        if (pr->closing && !pr->dir[1 - i].plen) close_side(p, s);
    }
    if (s->fd >= 0 && !pr->closing && (s->mask & EPOLLIN) && (ev & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
        read_side(p, pr, i);
    } else if (s->fd >= 0 && (ev & (EPOLLHUP | EPOLLERR))) {
        /* not reading it, and it hung up or failed: the connection is gone (HUP alone would repeat) */
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        lose(p, pr, i, err ? err : EPIPE);
    }
done:
    for (int k = 0; k < 2; k++) set_mask(p, &pr->side[k]);
    finish_if_done(p, pr);
}

static void add_pair(struct pump *p, struct pair *pr) {
    pr->next = p->live;
    if (p->live) p->live->prev = pr;
    p->live = pr;
    for (int i = 0; i < 2; i++) {
        struct side *s = &pr->side[i];
        s->mask = EPOLLIN;
        struct epoll_event ev = { .events = EPOLLIN, .data.ptr = s };
        if (epoll_ctl(p->ep, EPOLL_CTL_ADD, s->fd, &ev) < 0) {
            s->mask = 0;
            ended_by(pr, BY_RELAY, errno);
            close(s->fd);
            s->fd = -1;
        }
    }
    if (pr->by >= 0) start_closing(p, pr);
}

static void run_commands(struct pump *p) {
    uint64_t n;
    if (read(p->cmd_fd, &n, sizeof n) < 0 && errno != EAGAIN) return;
    pthread_mutex_lock(&p->lock);
    struct queue batch = p->cmds;                    /* take the whole queue; Python starts a new one */
    p->cmds.items = NULL;
    p->cmds.len = p->cmds.cap = 0;
    struct pair *released = p->released;             /* freed after this batch: the commands before them */
    p->released = NULL;
    p->released_count = 0;
    pthread_mutex_unlock(&p->lock);
    struct cmd *cmds = batch.items;
    for (size_t k = 0; k < batch.len; k++) {
        struct pair *pr = cmds[k].pair;
        switch (cmds[k].op) {
        case CMD_ADD: add_pair(p, pr); break;
        case CMD_CLOSE:
            if (!pr->reported) { ended_by(pr, BY_RELAY, 0); start_closing(p, pr); }
            break;
        case CMD_ABORT:
            if (!pr->reported) { ended_by(pr, BY_RELAY, 0); cut(p, pr); }
            break;
        }
    }
    free(cmds);
    while (released) {
        struct pair *pr = released;
        released = pr->done_next;
        free(pr);
        __atomic_sub_fetch(&p->pairs, 1, __ATOMIC_RELAXED);
    }
}

static void expire(struct pump *p) {
    int64_t now = now_ms();
    struct pair *pr = p->live, *next;
    for (; pr; pr = next) {
        next = pr->next;
        if (pr->closing && now >= pr->deadline) cut(p, pr);
    }
}

static void *run(void *arg) {
    struct pump *p = arg;
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int timeout = -1;
        if (p->closing_count) {
            int64_t soonest = INT64_MAX;
            for (struct pair *pr = p->live; pr; pr = pr->next)
                if (pr->closing && pr->deadline < soonest) soonest = pr->deadline;
            int64_t wait = soonest - now_ms();
            timeout = wait < 0 ? 0 : wait > 1000 ? 1000 : (int)wait;
        }
        int n = 0, busy_us = __atomic_load_n(&p->busy_poll_us, __ATOMIC_RELAXED);
        if (busy_us && p->live) {
            int64_t until = now_us() + busy_us;
            while ((n = epoll_wait(p->ep, events, MAX_EVENTS, 0)) == 0 && now_us() < until)
                sched_yield();   /* a thread woken onto this CPU (the peer we just wrote to) runs now */
        }
        if (n == 0) n = epoll_wait(p->ep, events, MAX_EVENTS, timeout);
        if (n < 0 && errno != EINTR) break;
        int commands = 0;
        for (int k = 0; k < n; k++) {
            if (events[k].data.ptr == NULL) commands = 1;
            else on_event(p, events[k].data.ptr, events[k].events);
        }
        /* after the batch's socket events: a pair closed early in the batch may have been reported,
         * read and released by Python before a later event of the batch names one of its sides */
        if (commands) run_commands(p);
        if (p->closing_count) expire(p);
    }
    return NULL;
}

/* -- Python's side (the event loop thread) ------------------------------------------------------ */

static int push_cmd(struct pump *p, int op, struct pair *pr) {
    struct cmd c = { op, pr };
    pthread_mutex_lock(&p->lock);
    int rc = q_push(&p->cmds, &c);
    pthread_mutex_unlock(&p->lock);
    if (rc == 0) wake(p->cmd_fd);
    return rc;
}

struct pump *relay_pump_start(long high, long low) {
    struct pump *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->high = (size_t)high;
    p->low = (size_t)low;
    p->cmds.size = sizeof(struct cmd);
    p->scratch = malloc(SCRATCH);
    p->ep = epoll_create1(EPOLL_CLOEXEC);
    p->cmd_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    p->report_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    pthread_mutex_init(&p->lock, NULL);
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
    if (!p->scratch || p->ep < 0 || p->cmd_fd < 0 || p->report_fd < 0
            || epoll_ctl(p->ep, EPOLL_CTL_ADD, p->cmd_fd, &ev) < 0)
        goto fail;
    /* signals (Ctrl+C) stay with the interpreter's thread */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&p->thread, NULL, run, p);
    if (rc == 0) pthread_setname_np(p->thread, "relay-pump");   /* as top -H and /proc name it */
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc == 0) return p;
fail:
    if (p->ep >= 0) close(p->ep);
    if (p->cmd_fd >= 0) close(p->cmd_fd);
    if (p->report_fd >= 0) close(p->report_fd);
    free(p->scratch);
    free(p);
    return NULL;
}

int relay_pump_report_fd(struct pump *p) { return p->report_fd; }

/* Hand over a connection: the pump owns both descriptors from here (on failure too). */
struct pair *relay_pump_add(struct pump *p, int client_fd, int upstream_fd, int drain_ms) {
    struct pair *pr = calloc(1, sizeof *pr);
    if (!pr) { close(client_fd); close(upstream_fd); return NULL; }
    pr->side[0] = (struct side){ pr, client_fd, 0, 0 };
    pr->side[1] = (struct side){ pr, upstream_fd, 1, 0 };
    pr->by = -1;
    pr->drain_ms = drain_ms;
    __atomic_add_fetch(&p->pairs, 1, __ATOMIC_RELAXED);
    if (push_cmd(p, CMD_ADD, pr) < 0) {
        __atomic_sub_fetch(&p->pairs, 1, __ATOMIC_RELAXED);
        close(client_fd); close(upstream_fd); free(pr);
        return NULL;
    }
    return pr;
}

int relay_pump_close(struct pump *p, struct pair *pr, int abort) { return push_cmd(p, abort ? CMD_ABORT : CMD_CLOSE, pr); }

/* Microseconds the thread polls without sleeping before it sleeps, while it has pairs (0: off). */
void relay_pump_busy_poll(struct pump *p, int us) { __atomic_store_n(&p->busy_poll_us, us, __ATOMIC_RELAXED); }

/* Pairs this pump holds in memory: live, or ended and not yet freed. */
long relay_pump_pairs(struct pump *p) { return __atomic_load_n(&p->pairs, __ATOMIC_RELAXED); }

/* 1 once the session is over: a side sent FIN or was lost, or the pair is closing. */
int relay_pump_ending(struct pair *pr) { return __atomic_load_n(&pr->ending, __ATOMIC_RELAXED); }

/* The marks this pump was started with: a direction holding `high` is not read until it holds no
 * more than `low` (Python checks them in tests). */
void relay_pump_marks(struct pump *p, long out[2]) { out[0] = (long)p->high; out[1] = (long)p->low; }

/* Bytes read from the client and from upstream, then how many of each the pump holds unsent. */
void relay_pump_counts(struct pair *pr, uint64_t out[4]) {
    out[0] = __atomic_load_n(&pr->bytes[0], __ATOMIC_RELAXED);
    out[1] = __atomic_load_n(&pr->bytes[1], __ATOMIC_RELAXED);
    out[2] = __atomic_load_n(&pr->held[0], __ATOMIC_RELAXED);
    out[3] = __atomic_load_n(&pr->held[1], __ATOMIC_RELAXED);
}

/* Closed pairs since the last call, at most `max`. Python forgets a pair once it has its report,
 * so each one handed out is released here: the pump thread frees it after any command queued
 * before (a close Python sent while the pair was ending). The release does not wake the thread by
 * itself (a wake-up per closed connection is a system call and a context switch): it runs with
 * the next command, or once RELEASE_BATCH of them wait. */
int relay_pump_reports(struct pump *p, struct report *out, int max) {
    uint64_t n;
    ssize_t r = read(p->report_fd, &n, sizeof n);
    (void)r;
    pthread_mutex_lock(&p->lock);
    int k = 0;
    while (k < max && p->reported) {
        struct pair *pr = p->reported;
        p->reported = pr->done_next;
        if (!p->reported) p->reported_tail = NULL;
        out[k++] = (struct report){ pr, { pr->bytes[0], pr->bytes[1] }, pr->by, pr->err };
        pr->done_next = p->released;                 /* Python forgets it now: the thread frees it */
        p->released = pr;
        p->released_count++;
    }
    int more = p->reported != NULL;
    int wake_pump = k && p->released_count >= RELEASE_BATCH;
    pthread_mutex_unlock(&p->lock);
    if (more) wake(p->report_fd);
    if (wake_pump) wake(p->cmd_fd);
    return k;
}
