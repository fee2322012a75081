/*
 * cfleet: a fleet of WebSocket clients in one single-threaded epoll loop, the measuring side of
 * the benchmarks (run.py), written in C so that it is never the bottleneck.
 *
 *     cc -O2 -std=c11 -Wall -Wextra -o cfleet benchmarks/cfleet.c     (run.py builds it)
 *     cfleet --port P --connections N [--stuck K] [--timeout T]
 *
 * Why C: fleet.py (asyncio) costs a few microseconds of Python per read and per message, and at
 * 10,000 clients it used 70 to 87 % of a core in some broadcast rows, so those rows measured the
 * fleet as much as the servers.  Here a read costs one recvmsg(2) and a loop over the frame
 * headers in it: no allocation, no per-message object, payloads are skipped, not copied; and
 * while it waits for a broadcast the loop wakes at most every COALESCE_NS (a wake-up cost more
 * than the read it was for).
 *
 * The command line and the stdin/stdout protocol are fleet.py's (without --deflate: the
 * compressed scenario stays with fleet.py, which inflates and checks the messages), so run.py
 * can use either.  It connects N connections (RFC 6455 client handshakes, the 101 and its
 * Sec-WebSocket-Accept checked), plus K "stuck" ones that complete the handshake and then never
 * read (the slow-consumer scenario), prints "ready", then answers each line on stdin with one
 * JSON line:
 *
 *   expect COUNT SIZE    prints "armed", then waits (at most --timeout) until every normal
 *                        connection has COUNT Binary messages of SIZE bytes (or is closed) and
 *                        reports as fleet.py does: received, complete, connections, closed,
 *                        stuck_closed, last_received_ns, timed_out, frame_errors, latencies_us,
 *                        cpu_s.
 *   echo SECONDS SIZE    every normal connection sends a Binary message of SIZE bytes (the
 *                        "!QQ" header: number, send time) and waits for its echo, repeatedly,
 *                        for SECONDS (then at most --timeout for the echoes in flight): messages,
 *                        seconds, latencies_us (round trips), cpu_s.
 *   upload SECONDS SIZE  every normal connection writes a precomputed, pre-masked Binary frame of
 *                        SIZE bytes back to back, as fast as its socket takes it, for SECONDS,
 *                        then finishes the frame it is in (never half a frame on the wire):
 *                        messages, bytes (payload), seconds, cpu (+ connections, unfinished).
 *   chat SECONDS RATE SIZE
 *                        every normal connection sends RATE Text messages per second of SIZE
 *                        bytes (at least 20), spread evenly over time and over the connections,
 *                        each starting with its send time (time_ns) in 20 decimal digits, and
 *                        counts the Text messages the server sends it; after SECONDS it stops
 *                        sending and waits until no message came for a second (at most
 *                        --timeout): sent, received, seconds (from the start to the last
 *                        delivery, or to the end of sending if later), latency (as latencies_us),
 *                        cpu (+ connections, frame_errors, skipped).
 *   quit (or an empty line, or end of input)
 *                        closes everything and exits.
 *
 * Latency is sampled as fleet.py does: once per read, from the first message of the read whose
 * time stamp is complete in it (the oldest one in the read, so the percentiles err on the high
 * side).  Its arrival is the kernel's receive time of the read's last segment (SO_TIMESTAMPNS,
 * CLOCK_REALTIME like the servers' time_ns; see arrival()), not the time the loop came to the
 * socket, so neither a long batch of ready sockets nor the coalesced wake-ups add to it; the end
 * of a round (last_received_ns) is taken the same way.  The percentiles are reported as
 * fleet.py's summarize(): count and 1,001 quantiles (0.0 to 100.0 % in steps of 0.1,
 * microseconds) that run.py merges over fleets.
 *
 * Every wait is bounded: the connections by CONNECT_LIMIT_S, each command by --timeout past its
 * own duration.  Every report has this process's CPU seconds (getrusage) over the command, and
 * one field more than fleet.py's: "loop", the command's epoll_wait calls and reads and its CPU
 * split into user and system time (where the fleet's CPU went).
 *
 * Linux only (epoll); C11 and libc, nothing else: SHA-1 and base64 for the handshake are here.
 */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* one recvmsg(2) per readiness event, at most this much: what asyncio reads at once */
#define READ_SIZE (256 * 1024)
#define MAX_EVENTS 1024
/* handshakes in flight at once (as fleet.py): a burst of 10,000 SYNs overflows the server's
 * listen backlog, and a dropped SYN costs a 1 s retransmission */
#define CONNECTING_AT_ONCE 200
/* run.py waits 300 s for "ready" */
#define CONNECT_LIMIT_S 300
#define HANDSHAKE_MAX 4096
/* the "!QQ" header of the benchmark's Binary messages: number, time_ns, big-endian */
#define STAMP 16
/* the chat messages' header: time_ns in 20 decimal digits (2^64 has 20) */
#define CHAT_STAMP 20
/* chat: the deliveries have stopped when none came for this long */
#define CHAT_QUIET_NS 1000000000LL
/* expect and chat: the loop sleeps until this long after it last woke before it asks for
 * events again (unless the last wait brought a full batch).  On this 2-core VM the costliest
 * part of a read was not the read but the wake-up before it (a context switch: a third of the
 * fleet's CPU in a perf profile with one 4 KiB message per read); waking at most every
 * COALESCE_NS lets the events of several sockets pile up for one wake-up (with websockets'
 * one write per message, a wake-up per 30 reads instead of per 1 or 2: 25 to 40 % less CPU).
 * The fleet's figures do not move: latencies and the end of a round come from the kernel's
 * arrival time stamps (see arrival()), and a socket holds the data meanwhile (TCP
 * acknowledges on arrival, not on read).  The server's cost may: on loopback the writer wakes
 * a reader that sleeps in epoll_wait, and a napping fleet needs fewer wake-ups (websockets'
 * asyncio rounds were 4 to 25 % shorter in pairs of rounds, trio_wshandler's no different
 * beyond their noise); clients on other machines cost a server no wake-up at all.  Not in
 * echo: there the fleet's answers are the server's work, and answering in batches changed it
 * (a server that gets its messages in batches reads and answers them in batches: up to 1.5x
 * the messages/s with 100 connections); nor in upload (driven by writability). */
#ifndef COALESCE_NS
#define COALESCE_NS 250000LL
#endif
/* upload: writes to one socket per readiness event, so that one fast socket cannot hold the
 * loop while the others wait */
#define WRITES_PER_EVENT 4
/* upload: frames are written from a block of back-to-back copies of the frame, so that small
 * frames do not cost a write(2) each */
#define UPLOAD_BLOCK (256 * 1024)
/* chat: a connection whose unsent bytes exceed this skips its message (the server is not
 * reading): memory stays bounded, the skips are reported */
#define OUT_LIMIT (4u << 20)
#define NS 1000000000LL

enum { C_IDLE, C_CONNECTING, C_HANDSHAKE, C_OPEN, C_CLOSED };
enum { M_CONNECT, M_IDLE, M_EXPECT, M_ECHO, M_UPLOAD, M_CHAT };

struct conn {
    int fd;
    uint8_t state;      /* C_* */
    uint8_t stuck;      /* never reads after the handshake */
    uint8_t closing;    /* close once the output is flushed (after our Close) */
    uint8_t waiting;    /* echo: a message is out, its echo not yet back */
    uint8_t up_stop;    /* upload: finish the frame in progress, then no more */
    uint8_t in_payload; /* the parser is inside a frame's payload */
    uint8_t hlen;       /* header bytes collected (a header may be split between reads) */
    uint8_t want;       /* payload bytes of this frame to keep in cap[] */
    uint8_t got;        /* payload bytes kept so far */
    uint8_t msg_op;     /* opcode of the message in progress (a fragmented one's first) */
    uint8_t hdr[14];
    uint8_t cap[128];   /* a control frame's payload, or a data frame's time stamp */
    uint32_t interest;  /* the epoll events asked for */
    uint64_t plen;      /* this frame's payload length */
    uint64_t remaining; /* of it, still to come */
    uint64_t msg_len;   /* the message in progress, over its frames */
    uint64_t received;  /* data messages (this command) */
    uint64_t seq;       /* echo: messages sent */
    uint64_t up_off;    /* upload: position in the block */
    uint64_t up_bytes;  /* upload: bytes written */
    uint8_t *out;       /* bytes to write, when the socket did not take them at once */
    size_t out_off, out_len, out_cap;
    char *hs;           /* the handshake response, while it comes */
    size_t hs_len;
    char accept[32];    /* the Sec-WebSocket-Accept to expect */
};

static struct {
    int ep;
    int port;
    int normal, stuck, total;
    double timeout;
    struct conn *conns;
    int mode;
    /* connecting */
    int next, inflight, opened;
    int64_t connect_deadline;
    /* the command in progress */
    uint64_t count, size;
    int64_t started;       /* CLOCK_MONOTONIC */
    int64_t deadline;      /* the command's own end (echo, upload, chat: sending stops) */
    int64_t limit;         /* the end of waiting */
    int incomplete;        /* expect: normal connections still short of COUNT */
    int64_t finished_ns;   /* expect: CLOCK_REALTIME when the last one got its COUNT */
    int done;
    uint64_t errors;
    int busy;              /* echo: connections awaiting an echo */
    int sending;           /* echo, upload, chat: still sending */
    double cpu0;
    /* upload */
    uint8_t *block;
    size_t block_len, frame_len;
    /* chat */
    double interval_ns;    /* between two sends over the whole fleet */
    uint64_t slot;         /* the next send, counted over the whole fleet */
    uint64_t sent, skipped, chat_received;
    int64_t last_delivery; /* CLOCK_MONOTONIC */
    uint8_t *filler;       /* chat and echo payload bodies */
    size_t filler_len;
    /* scratch space for one outgoing frame */
    uint8_t *scratch;
    size_t scratch_cap;
    /* what the loop did during the command: epoll_wait calls, reads, user and system CPU */
    uint64_t waits, reads;
    double user0, system0;
    /* latency samples, ns */
    int64_t *lat;
    size_t nlat, latcap;
    /* stdin */
    char line[4096];
    size_t line_len;
    int stdin_eof;
    uint64_t rng;
} F;

static uint8_t rbuf[READ_SIZE];

/* ------------------------------------------------------------------ small helpers */

static int64_t clock_ns(clockid_t clock)
{
    struct timespec t;
    clock_gettime(clock, &t);
    return (int64_t)t.tv_sec * NS + t.tv_nsec;
}

static int64_t mono_ns(void) { return clock_ns(CLOCK_MONOTONIC); }
static int64_t wall_ns(void) { return clock_ns(CLOCK_REALTIME); }

/* this process's CPU seconds, user and system (the kernel's share: the socket reads) */
static double cpu_split(double *system)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    *system = (double)u.ru_stime.tv_sec + u.ru_stime.tv_usec / 1e6;
    return (double)u.ru_utime.tv_sec + u.ru_utime.tv_usec / 1e6;
}

static double cpu_seconds(void)
{
    double system, user = cpu_split(&system);
    return user + system;
}

static void die(const char *fmt, ...)
{
    /* "failed: ..." is what fleet.py prints when it cannot connect; run.py shows the line */
    va_list ap;
    va_start(ap, fmt);
    printf("failed: ");
    vprintf(fmt, ap);
    printf("\n");
    fflush(stdout);
    va_end(ap);
    exit(1);
}

static void *grow(void *p, size_t size)
{
    void *q = realloc(p, size);
    if (!q)
        die("out of memory");
    return q;
}

/* xorshift64*: masking keys.  A client must mask with a key the server cannot predict (RFC 6455
 * 5.3 is about proxies); a fast PRNG seeded from getrandom() is enough for a benchmark. */
static uint32_t random32(void)
{
    F.rng ^= F.rng >> 12;
    F.rng ^= F.rng << 25;
    F.rng ^= F.rng >> 27;
    return (uint32_t)((F.rng * 0x2545F4914F6CDD1DULL) >> 32);
}

static void random_bytes(void *buf, size_t n)
{
    if (getrandom(buf, n, 0) != (ssize_t)n)
        die("getrandom: %s", strerror(errno));
}

static uint64_t be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static void add_sample(int64_t ns)
{
    if (F.nlat == F.latcap) {
        F.latcap = F.latcap ? F.latcap * 2 : 65536;
        F.lat = grow(F.lat, F.latcap * sizeof *F.lat);
    }
    F.lat[F.nlat++] = ns;
}

static int compare_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* fleet.py's summarize(): {"count": n, "quantiles": [1,001 values in us]} */
static void print_latencies(void)
{
    printf("{\"count\": %zu, \"quantiles\": [", F.nlat);
    if (F.nlat) {
        qsort(F.lat, F.nlat, sizeof *F.lat, compare_i64);
        size_t last = F.nlat - 1;
        for (size_t i = 0; i <= 1000; i++) {
            size_t at = i * F.nlat / 1000;
            printf("%s%.3f", i ? ", " : "", F.lat[at < last ? at : last] / 1000.0);
        }
    }
    printf("]}");
}

/* ------------------------------------------------------------------ SHA-1, base64 (handshake) */

static uint32_t rol(uint32_t x, int n) { return x << n | x >> (32 - n); }

static void sha1(const uint8_t *data, size_t len, uint8_t out[20])
{
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    size_t total = ((len + 8) / 64 + 1) * 64; /* the message, 0x80, zeros, 64-bit length */
    uint8_t *m = calloc(total, 1);
    if (!m)
        die("out of memory");
    memcpy(m, data, len);
    m[len] = 0x80;
    put_be64(m + total - 8, (uint64_t)len * 8);
    for (size_t block = 0; block < total; block += 64) {
        uint32_t w[80];
        for (int i = 0; i < 16; i++)
            w[i] = (uint32_t)m[block + 4 * i] << 24 | (uint32_t)m[block + 4 * i + 1] << 16 |
                   (uint32_t)m[block + 4 * i + 2] << 8 | m[block + 4 * i + 3];
        for (int i = 16; i < 80; i++)
            w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
        for (int i = 0; i < 80; i++) {
            uint32_t f, k;
            if (i < 20)
                f = (b & c) | (~b & d), k = 0x5A827999;
            else if (i < 40)
                f = b ^ c ^ d, k = 0x6ED9EBA1;
            else if (i < 60)
                f = (b & c) | (b & d) | (c & d), k = 0x8F1BBCDC;
            else
                f = b ^ c ^ d, k = 0xCA62C1D6;
            uint32_t t = rol(a, 5) + f + e + k + w[i];
            e = d, d = c, c = rol(b, 30), b = a, a = t;
        }
        h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e;
    }
    free(m);
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < 4; j++)
            out[4 * i + j] = (uint8_t)(h[i] >> (24 - 8 * j));
}

static void base64(const uint8_t *in, size_t n, char *out)
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        *out++ = abc[v >> 18], *out++ = abc[v >> 12 & 63], *out++ = abc[v >> 6 & 63];
        *out++ = abc[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        *out++ = abc[v >> 18], *out++ = abc[v >> 12 & 63], *out++ = '=', *out++ = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        *out++ = abc[v >> 18], *out++ = abc[v >> 12 & 63], *out++ = abc[v >> 6 & 63];
        *out++ = '=';
    }
    *out = 0;
}

/* ------------------------------------------------------------------ frames out */

/* A client frame's header (FIN and opcode in b0, the mask bit, the length, the key): its size */
static size_t frame_head(uint8_t *h, uint8_t b0, uint64_t n, const uint8_t key[4])
{
    size_t at = 0;
    h[at++] = b0;
    if (n < 126) {
        h[at++] = (uint8_t)(0x80 | n);
    } else if (n < 65536) {
        h[at++] = 0x80 | 126;
        h[at++] = (uint8_t)(n >> 8), h[at++] = (uint8_t)n;
    } else {
        h[at++] = 0x80 | 127;
        put_be64(h + at, n);
        at += 8;
    }
    memcpy(h + at, key, 4);
    return at + 4;
}

/* dst = src XOR key, four bytes at a time (dst may be src) */
static void mask_copy(uint8_t *dst, const uint8_t *src, size_t n, const uint8_t key[4])
{
    uint32_t k, v;
    memcpy(&k, key, 4);
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        memcpy(&v, src + i, 4);
        v ^= k;
        memcpy(dst + i, &v, 4);
    }
    for (; i < n; i++)
        dst[i] = src[i] ^ key[i & 3];
}

static uint8_t *scratch(size_t n)
{
    if (n > F.scratch_cap) {
        F.scratch_cap = n;
        F.scratch = grow(F.scratch, n);
    }
    return F.scratch;
}

static void conn_close(struct conn *c);

/* Ask epoll for writability only while something waits to be written: level-triggered
 * EPOLLOUT on an idle socket would wake the loop at once, every time. */
static void update_interest(struct conn *c)
{
    if (c->state != C_OPEN && c->state != C_HANDSHAKE)
        return;
    /* a stuck connection never reads once open: only its closing is watched */
    uint32_t want = c->stuck && c->state == C_OPEN ? EPOLLRDHUP : EPOLLIN;
    int uploading = F.mode == M_UPLOAD && !c->stuck &&
                    ((F.sending && !c->up_stop) || c->up_off % F.frame_len);
    if (c->out_len > c->out_off || uploading)
        want |= EPOLLOUT;
    if (want != c->interest) {
        struct epoll_event ev = {.events = want, .data.u32 = (uint32_t)(c - F.conns)};
        if (epoll_ctl(F.ep, EPOLL_CTL_MOD, c->fd, &ev) < 0)
            die("epoll_ctl: %s", strerror(errno));
        c->interest = want;
    }
}

static int mid_frame(const struct conn *c)
{
    return F.mode == M_UPLOAD && F.frame_len && c->up_off % F.frame_len;
}

/* Write now what the socket takes; keep the rest for EPOLLOUT.  A frame is never split by
 * another: while an upload frame is half written, everything else waits behind it. */
static void conn_write(struct conn *c, const uint8_t *data, size_t n)
{
    if (c->state != C_OPEN && c->state != C_HANDSHAKE)
        return;
    if (c->out_len == c->out_off && !mid_frame(c)) {
        ssize_t w = send(c->fd, data, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                conn_close(c);
                return;
            }
            w = 0;
        }
        data += w, n -= (size_t)w;
        if (!n)
            return;
    }
    if (c->out_off && c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    if (c->out_len + n > c->out_cap) {
        if (c->out_off) { /* move what is left to the front before growing */
            memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
            c->out_len -= c->out_off, c->out_off = 0;
        }
        if (c->out_len + n > c->out_cap) {
            c->out_cap = (c->out_len + n) * 2;
            c->out = grow(c->out, c->out_cap);
        }
    }
    memcpy(c->out + c->out_len, data, n);
    c->out_len += n;
    update_interest(c);
}

/* A masked frame with a fresh key: the payload goes straight into the scratch frame */
static void send_frame(struct conn *c, uint8_t b0, const uint8_t *payload, size_t n)
{
    uint8_t key[4];
    uint32_t r = random32();
    memcpy(key, &r, 4);
    uint8_t *f = scratch(n + 14);
    size_t at = frame_head(f, b0, n, key);
    mask_copy(f + at, payload, n, key);
    conn_write(c, f, at + n);
}

/* upload: write the block from where this connection is; only to the end of the frame in
 * progress once sending stopped (or this connection must stop); at most WRITES_PER_EVENT. */
static void upload_write(struct conn *c)
{
    for (int writes = 0; writes < WRITES_PER_EVENT; writes++) {
        size_t off = c->up_off, end = F.block_len;
        if (!F.sending || c->up_stop || c->out_len > c->out_off) {
            size_t into = off % F.frame_len;
            if (!into)
                return; /* at a frame boundary: nothing more to send now */
            end = off - into + F.frame_len;
        }
        ssize_t w = send(c->fd, F.block + off, end - off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                conn_close(c);
            return;
        }
        c->up_bytes += (uint64_t)w;
        c->up_off = off + (size_t)w == F.block_len ? 0 : off + (size_t)w;
        if ((size_t)w < end - off)
            return; /* the socket is full */
    }
}

static void conn_flush(struct conn *c)
{
    if (mid_frame(c))
        upload_write(c); /* the frame in progress first: then the queued control frames */
    int live = c->state == C_OPEN || c->state == C_HANDSHAKE; /* the request may be owed */
    if (live && c->out_len > c->out_off && !mid_frame(c)) {
        ssize_t w = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            conn_close(c);
            return;
        }
        if (w > 0)
            c->out_off += (size_t)w;
        if (c->out_off == c->out_len)
            c->out_off = c->out_len = 0;
    }
    if (c->state == C_OPEN && c->closing && c->out_len == c->out_off && !mid_frame(c)) {
        conn_close(c);
        return;
    }
    if (c->state == C_OPEN && F.mode == M_UPLOAD && !c->stuck && c->out_len == c->out_off)
        upload_write(c);
    update_interest(c);
}

/* ------------------------------------------------------------------ frames in */

struct read_ctx {
    int64_t now;  /* when this read's data arrived (CLOCK_REALTIME, see arrival()) */
    int sampled;  /* a latency sample was taken from this read */
};

static void expect_progress(struct conn *c, const struct read_ctx *r)
{
    if (!c->stuck && c->received == F.count && --F.incomplete == 0 && !F.done) {
        F.finished_ns = r->now; /* when the last message arrived, not when it was read */
        F.done = 1;
    }
}

static void echo_send(struct conn *c);

/* a complete data message (opcode: its first frame's) */
static void on_message(struct conn *c, uint8_t opcode, struct read_ctx *r)
{
    switch (F.mode) {
    case M_EXPECT:
        if (opcode != 0x2 || c->msg_len != F.size)
            F.errors++;
        c->received++;
        expect_progress(c, r);
        break;
    case M_ECHO:
        c->received++;
        if (c->waiting && opcode == 0x2) {
            if (c->got >= STAMP)
                add_sample(r->now - (int64_t)be64(c->cap + 8));
            c->waiting = 0;
            F.busy--;
            c->seq++;
            if (F.sending)
                echo_send(c);
        }
        break;
    case M_CHAT:
        if (opcode == 0x1) {
            c->received++;
            F.chat_received++; /* and last_delivery, once per read (conn_read) */
        } else {
            F.errors++;
        }
        break;
    default:
        c->received++;
    }
}

/* the first bytes of a data frame's payload are in: one latency sample per read */
static void on_stamp(struct conn *c, struct read_ctx *r)
{
    if (r->sampled || (c->hdr[0] & 0x0F) == 0)
        return;
    if (F.mode == M_EXPECT && c->got == STAMP) {
        add_sample(r->now - (int64_t)be64(c->cap + 8));
        r->sampled = 1;
    } else if (F.mode == M_CHAT && c->got == CHAT_STAMP) {
        int64_t t = 0;
        for (int i = 0; i < CHAT_STAMP; i++) {
            if (c->cap[i] < '0' || c->cap[i] > '9')
                return; /* not one of ours */
            t = t * 10 + (c->cap[i] - '0');
        }
        add_sample(r->now - t);
        r->sampled = 1;
    }
}

static void on_frame_end(struct conn *c, struct read_ctx *r)
{
    uint8_t b0 = c->hdr[0], opcode = b0 & 0x0F;
    c->in_payload = 0;
    switch (opcode) {
    case 0x0: /* continuation */
    case 0x1: /* Text */
    case 0x2: /* Binary */
        if (opcode)
            c->msg_op = opcode;
        if (b0 & 0x80)
            on_message(c, c->msg_op, r);
        break;
    case 0x8: { /* Close: answer with its code, then close once that is written */
        size_t n = c->got < 2 ? c->got : 2;
        send_frame(c, 0x88, c->cap, n);
        if (c->state == C_OPEN) {
            c->closing = 1;
            c->up_stop = 1;
            conn_flush(c);
        }
        break;
    }
    case 0x9: /* Ping: Pong with its payload */
        send_frame(c, 0x8A, c->cap, c->got);
        break;
    default: /* Pong, or a reserved opcode: nothing to do */
        break;
    }
}

static size_t header_len(const uint8_t *h)
{
    uint8_t len7 = h[1] & 0x7F;
    return 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + (h[1] & 0x80 ? 4 : 0);
}

/* a frame header is complete: what to keep of its payload */
static void on_frame_start(struct conn *c, struct read_ctx *r)
{
    uint8_t len7 = c->hdr[1] & 0x7F, opcode = c->hdr[0] & 0x0F;
    c->plen = len7 < 126 ? len7 : len7 == 126 ? (uint64_t)c->hdr[2] << 8 | c->hdr[3]
                                              : be64(c->hdr + 2);
    if (c->hdr[1] & 0x80 || c->hdr[0] & 0x70)
        F.errors++; /* a server must not mask, nor set RSV bits unnegotiated */
    if (opcode & 0x8) {
        c->want = c->plen < 125 ? (uint8_t)c->plen : 125;
    } else {
        uint64_t stamp = F.mode == M_CHAT ? CHAT_STAMP : STAMP;
        c->want = opcode ? (uint8_t)(c->plen < stamp ? c->plen : stamp) : 0;
        if (opcode)
            c->msg_len = 0;
        c->msg_len += c->plen;
    }
    c->got = 0;
    c->hlen = 0;
    c->remaining = c->plen;
    c->in_payload = 1;
    if (!c->plen)
        on_frame_end(c, r);
}

/* Parse what a read brought: frame headers are collected (they may be split between reads),
 * payloads are skipped but for the few bytes kept in cap[]. */
static void feed(struct conn *c, const uint8_t *p, size_t n, struct read_ctx *r)
{
    while (n && c->state == C_OPEN) {
        if (!c->in_payload) {
            size_t need = c->hlen < 2 ? 2 : header_len(c->hdr);
            size_t k = need - c->hlen < n ? need - c->hlen : n;
            memcpy(c->hdr + c->hlen, p, k);
            c->hlen += (uint8_t)k, p += k, n -= k;
            if (c->hlen == 2)
                need = header_len(c->hdr);
            if (c->hlen == need)
                on_frame_start(c, r);
            continue;
        }
        size_t take = c->remaining < n ? (size_t)c->remaining : n;
        if (c->got < c->want) {
            size_t k = (size_t)(c->want - c->got) < take ? (size_t)(c->want - c->got) : take;
            memcpy(c->cap + c->got, p, k);
            c->got += (uint8_t)k;
            if (c->got == c->want && !(c->hdr[0] & 0x8))
                on_stamp(c, r);
        }
        p += take, n -= take, c->remaining -= take;
        if (!c->remaining)
            on_frame_end(c, r);
    }
}

/* ------------------------------------------------------------------ connections */

static void conn_close(struct conn *c)
{
    if (c->state == C_CLOSED)
        return;
    int was_open = c->state == C_OPEN;
    close(c->fd); /* also leaves the epoll set */
    c->state = C_CLOSED;
    free(c->out);
    c->out = NULL;
    c->out_off = c->out_len = c->out_cap = 0;
    free(c->hs);
    c->hs = NULL;
    if (!was_open)
        die("connection %d closed during the handshake", (int)(c - F.conns));
    if (c->stuck)
        return;
    if (F.mode == M_EXPECT && c->received < F.count && --F.incomplete == 0 && !F.done) {
        F.finished_ns = wall_ns();
        F.done = 1;
    }
    if (F.mode == M_ECHO && c->waiting) {
        c->waiting = 0;
        F.busy--;
    }
}

static void start_connect(struct conn *c)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket: %s", strerror(errno));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* as asyncio does */
    setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one); /* see arrival() */
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)F.port)};
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&to, sizeof to) < 0 && errno != EINPROGRESS)
        die("connect: %s", strerror(errno));
    c->fd = fd;
    c->state = C_CONNECTING;
    c->interest = EPOLLOUT;
    struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = (uint32_t)(c - F.conns)};
    if (epoll_ctl(F.ep, EPOLL_CTL_ADD, fd, &ev) < 0)
        die("epoll_ctl: %s", strerror(errno));
    F.inflight++;
}

static void connected(struct conn *c)
{
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err)
        die("connect: %s", strerror(err));
    if (c->stuck) { /* as fleet.py: a small receive buffer, so the server backs up sooner */
        int size = 4096;
        setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    }
    uint8_t raw[16];
    char key[32], request[512];
    random_bytes(raw, sizeof raw);
    base64(raw, sizeof raw, key);
    /* the answer the server must give: base64(SHA-1(key + the RFC's GUID)) */
    char both[80];
    uint8_t digest[20];
    int n = snprintf(both, sizeof both, "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", key);
    sha1((const uint8_t *)both, (size_t)n, digest);
    base64(digest, sizeof digest, c->accept);
    n = snprintf(request, sizeof request,
                 "GET / HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n",
                 F.port, key);
    c->state = C_HANDSHAKE;
    c->hs = malloc(HANDSHAKE_MAX + 1);
    if (!c->hs)
        die("out of memory");
    c->hs_len = 0;
    conn_write(c, (const uint8_t *)request, (size_t)n); /* sets EPOLLIN (and OUT if need be) */
    update_interest(c);
}

/* the value of a response header, matched without regard to case; NULL if absent */
static const char *header_value(const char *head, const char *name, size_t *len)
{
    size_t n = strlen(name);
    for (const char *line = strstr(head, "\r\n"); line; line = strstr(line + 2, "\r\n")) {
        const char *at = line + 2;
        if (!strncasecmp(at, name, n) && at[n] == ':') {
            at += n + 1;
            while (*at == ' ' || *at == '\t')
                at++;
            const char *end = strstr(at, "\r\n");
            *len = (size_t)(end - at);
            while (*len && (at[*len - 1] == ' ' || at[*len - 1] == '\t'))
                (*len)--;
            return at;
        }
    }
    return NULL;
}

static void handshake_read(struct conn *c)
{
    ssize_t got = read(c->fd, c->hs + c->hs_len, HANDSHAKE_MAX - c->hs_len);
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return;
    if (got <= 0)
        die("connection %d closed during the handshake", (int)(c - F.conns));
    c->hs_len += (size_t)got;
    c->hs[c->hs_len] = 0;
    char *end = strstr(c->hs, "\r\n\r\n");
    if (!end) {
        if (c->hs_len == HANDSHAKE_MAX)
            die("a handshake response of more than %d bytes", HANDSHAKE_MAX);
        return;
    }
    end[2] = 0; /* the head, each line ending in \r\n */
    if (strncmp(c->hs, "HTTP/1.1 101", 12)) {
        char *eol = strstr(c->hs, "\r\n");
        *eol = 0;
        die("%s", c->hs);
    }
    size_t len;
    const char *accept = header_value(c->hs, "Sec-WebSocket-Accept", &len);
    if (!accept || len != strlen(c->accept) || strncmp(accept, c->accept, len))
        die("wrong or missing Sec-WebSocket-Accept");
    size_t head = (size_t)(end + 4 - c->hs), rest = c->hs_len - head;
    c->state = C_OPEN;
    update_interest(c);
    F.inflight--;
    F.opened++;
    if (rest) { /* frames that came with the response */
        struct read_ctx r = {wall_ns(), 0};
        memcpy(rbuf, c->hs + head, rest);
        feed(c, rbuf, rest, &r);
    }
    free(c->hs);
    c->hs = NULL;
}

/* When the data of a read arrived: the kernel's receive time stamp of its last segment
 * (SO_TIMESTAMPNS, CLOCK_REALTIME), else the time now.  The latencies and the end of a round
 * are taken from it, so they do not depend on when the loop came round to the socket (a batch
 * of a thousand ready sockets takes a millisecond or more; see also COALESCE_NS). */
static int64_t arrival(struct msghdr *msg)
{
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(msg); cm; cm = CMSG_NXTHDR(msg, cm)) {
        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_TIMESTAMPNS) {
            struct timespec t;
            memcpy(&t, CMSG_DATA(cm), sizeof t);
            return (int64_t)t.tv_sec * NS + t.tv_nsec;
        }
    }
    return wall_ns();
}

static void conn_read(struct conn *c)
{
    union {
        char buf[CMSG_SPACE(sizeof(struct timespec))];
        struct cmsghdr align;
    } control;
    struct iovec iov = {.iov_base = rbuf, .iov_len = sizeof rbuf};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                         .msg_controllen = sizeof control.buf};
    ssize_t got = recvmsg(c->fd, &msg, 0);
    F.reads++;
    if (got > 0) {
        struct read_ctx r = {arrival(&msg), 0};
        uint64_t delivered = F.chat_received;
        feed(c, rbuf, (size_t)got, &r);
        if (F.chat_received != delivered)
            F.last_delivery = mono_ns();
    } else if (got == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        conn_close(c);
    }
}

static void on_event(struct conn *c, uint32_t events)
{
    switch (c->state) {
    case C_CONNECTING:
        connected(c);
        break;
    case C_HANDSHAKE:
        if (events & EPOLLOUT)
            conn_flush(c);
        if (events & (EPOLLIN | EPOLLERR | EPOLLHUP))
            handshake_read(c);
        break;
    case C_OPEN:
        if (c->stuck) { /* it never reads: this is the server closing it */
            if (events & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                conn_close(c);
            else if (events & EPOLLOUT)
                conn_flush(c);
            break;
        }
        if (events & (EPOLLIN | EPOLLERR | EPOLLHUP))
            conn_read(c);
        if (c->state == C_OPEN && events & EPOLLOUT)
            conn_flush(c);
        break;
    default:
        break;
    }
}

/* ------------------------------------------------------------------ commands */

static void make_filler(size_t n, char c)
{
    F.filler = grow(F.filler, n + 1);
    F.filler_len = n;
    /* printable ASCII, a pattern rather than one letter (the chat's Text must be valid UTF-8) */
    for (size_t i = 0; i < n; i++)
        F.filler[i] = c ? (uint8_t)c : (uint8_t)('a' + i % 26);
}

static void begin(int mode)
{
    F.mode = mode;
    F.done = 0;
    F.errors = 0;
    F.nlat = 0;
    F.busy = 0;
    F.sending = 0;
    F.started = mono_ns();
    F.waits = F.reads = 0;
    F.user0 = cpu_split(&F.system0);
    F.cpu0 = F.user0 + F.system0;
    for (int i = 0; i < F.total; i++)
        F.conns[i].received = 0;
}

static void cmd_expect(uint64_t count, uint64_t size)
{
    begin(M_EXPECT);
    F.count = count;
    F.size = size;
    F.finished_ns = 0;
    F.incomplete = 0;
    for (int i = 0; i < F.normal; i++)
        F.incomplete += F.conns[i].state == C_OPEN;
    F.limit = F.started + (int64_t)(F.timeout * NS);
    if (!F.incomplete || !count) {
        F.finished_ns = wall_ns();
        F.done = 1;
    }
    printf("armed\n");
    fflush(stdout);
}

/* more than fleet.py reports, to see where the fleet's CPU goes: the loop's epoll_wait calls
 * and reads, and the CPU split into user and system (the kernel's: reads, writes, wake-ups);
 * closes the report's JSON object */
static void print_loop(void)
{
    double system, user = cpu_split(&system);
    printf(", \"loop\": {\"waits\": %" PRIu64 ", \"reads\": %" PRIu64
           ", \"user_s\": %.6f, \"system_s\": %.6f}}\n",
           F.waits, F.reads, user - F.user0, system - F.system0);
}

static void report_expect(void)
{
    uint64_t received = 0;
    int complete = 0, closed = 0, stuck_closed = 0;
    for (int i = 0; i < F.total; i++) {
        struct conn *c = &F.conns[i];
        if (c->stuck) {
            stuck_closed += c->state == C_CLOSED;
            continue;
        }
        received += c->received;
        complete += c->received >= F.count;
        closed += c->state == C_CLOSED;
    }
    printf("{\"received\": %" PRIu64 ", \"complete\": %d, \"connections\": %d, \"closed\": %d, "
           "\"stuck_closed\": %d, \"last_received_ns\": %" PRId64 ", \"timed_out\": %s, "
           "\"frame_errors\": %" PRIu64 ", \"latencies_us\": ",
           received, complete, F.normal, closed, stuck_closed,
           F.done ? F.finished_ns : wall_ns(), F.done ? "false" : "true", F.errors);
    print_latencies();
    printf(", \"cpu_s\": %.6f", cpu_seconds() - F.cpu0);
    print_loop();
}

static void echo_send(struct conn *c)
{
    uint8_t *p = F.filler;
    put_be64(p, c->seq);
    put_be64(p + 8, (uint64_t)wall_ns());
    send_frame(c, 0x82, p, F.filler_len);
    if (c->state == C_OPEN) {
        c->waiting = 1;
        F.busy++;
    }
}

static void cmd_echo(double seconds, uint64_t size)
{
    begin(M_ECHO);
    make_filler(size < STAMP ? STAMP : size, 'e'); /* as fleet.py: at least the header */
    F.sending = 1;
    F.deadline = F.started + (int64_t)(seconds * NS);
    F.limit = F.deadline + (int64_t)(F.timeout * NS);
    F.count = 0;
    for (int i = 0; i < F.normal; i++) {
        F.conns[i].seq = 0;
        F.conns[i].waiting = 0;
    }
    for (int i = 0; i < F.normal; i++)
        if (F.conns[i].state == C_OPEN)
            echo_send(&F.conns[i]);
}

static void report_echo(double seconds)
{
    uint64_t messages = 0;
    for (int i = 0; i < F.normal; i++)
        messages += F.conns[i].seq;
    printf("{\"messages\": %" PRIu64 ", \"seconds\": %.6f, \"latencies_us\": ", messages, seconds);
    print_latencies();
    printf(", \"cpu_s\": %.6f", cpu_seconds() - F.cpu0);
    print_loop();
}

static void cmd_upload(double seconds, uint64_t size)
{
    uint8_t key[4], head[14];
    random_bytes(key, 4);
    /* one frame, masked once: its payload the "!QQ" header (0, now) and padding */
    make_filler(size, 'u');
    if (size >= STAMP) {
        put_be64(F.filler, 0);
        put_be64(F.filler + 8, (uint64_t)wall_ns());
    }
    size_t hl = frame_head(head, 0x82, size, key);
    F.frame_len = hl + size;
    size_t copies = UPLOAD_BLOCK / F.frame_len ? UPLOAD_BLOCK / F.frame_len : 1;
    F.block_len = copies * F.frame_len;
    F.block = grow(F.block, F.block_len);
    memcpy(F.block, head, hl);
    mask_copy(F.block + hl, F.filler, size, key);
    for (size_t i = 1; i < copies; i++)
        memcpy(F.block + i * F.frame_len, F.block, F.frame_len);
    begin(M_UPLOAD);
    F.size = size;
    F.sending = 1;
    F.deadline = F.started + (int64_t)(seconds * NS);
    F.limit = F.deadline + (int64_t)(F.timeout * NS);
    for (int i = 0; i < F.normal; i++) {
        struct conn *c = &F.conns[i];
        c->up_off = c->up_bytes = 0;
        c->up_stop = 0;
        if (c->state == C_OPEN)
            conn_flush(c); /* the first writes now, then on EPOLLOUT */
    }
}

/* upload: every connection is at a frame boundary (those that closed do not count) */
static int upload_finished(void)
{
    for (int i = 0; i < F.normal; i++) {
        struct conn *c = &F.conns[i];
        if (c->state == C_OPEN && c->up_off % F.frame_len)
            return 0;
    }
    return 1;
}

static void report_upload(void)
{
    double seconds = (mono_ns() - F.started) / 1e9;
    uint64_t messages = 0;
    int unfinished = 0, connections = 0;
    for (int i = 0; i < F.normal; i++) {
        struct conn *c = &F.conns[i];
        if (c->state == C_OPEN && c->up_off % F.frame_len) {
            /* could not finish its frame within --timeout: a stream cut mid-frame is of no
             * further use, so it is closed */
            unfinished++;
            conn_close(c);
        }
        messages += c->up_bytes / F.frame_len;
        connections += c->state == C_OPEN;
    }
    F.mode = M_IDLE; /* before update_interest: no more EPOLLOUT for the upload */
    for (int i = 0; i < F.normal; i++)
        update_interest(&F.conns[i]);
    printf("{\"messages\": %" PRIu64 ", \"bytes\": %" PRIu64 ", \"seconds\": %.6f, "
           "\"cpu\": %.6f, \"connections\": %d, \"unfinished\": %d",
           messages, messages * F.size, seconds, cpu_seconds() - F.cpu0, connections, unfinished);
    print_loop();
}

static void cmd_chat(double seconds, double rate, uint64_t size)
{
    begin(M_CHAT);
    make_filler(size, 0);
    F.size = size;
    F.sending = 1;
    F.sent = F.skipped = F.chat_received = 0;
    F.slot = 0;
    F.deadline = F.started + (int64_t)(seconds * NS);
    F.limit = F.deadline + (int64_t)(F.timeout * NS);
    F.last_delivery = F.started;
    /* the sends of the whole fleet, evenly spaced: connection i's k-th message is send number
     * k * N + i, at started + (k * N + i) * interval */
    F.interval_ns = rate > 0 && F.normal ? 1e9 / (rate * F.normal) : 0;
    if (!F.interval_ns)
        F.sending = 0;
}

static void chat_send(struct conn *c)
{
    if (c->out_len - c->out_off > OUT_LIMIT) {
        F.skipped++;
        return;
    }
    uint64_t t = (uint64_t)wall_ns();
    for (int i = CHAT_STAMP - 1; i >= 0; i--, t /= 10)
        F.filler[i] = (uint8_t)('0' + t % 10);
    send_frame(c, 0x81, F.filler, F.filler_len);
    F.sent++;
}

/* chat: the sends that are due (a late loop catches up: the rate is kept) */
static void chat_tick(int64_t now)
{
    while (F.sending) {
        int64_t at = F.started + (int64_t)(F.slot * F.interval_ns);
        if (at >= F.deadline) {
            F.sending = 0;
            break;
        }
        if (at > now)
            break;
        struct conn *c = &F.conns[F.slot % (uint64_t)F.normal];
        F.slot++;
        if (c->state == C_OPEN)
            chat_send(c);
    }
}

static void report_chat(void)
{
    int64_t end = F.last_delivery > F.deadline ? F.last_delivery : F.deadline;
    int connections = 0;
    for (int i = 0; i < F.normal; i++)
        connections += F.conns[i].state == C_OPEN;
    printf("{\"sent\": %" PRIu64 ", \"received\": %" PRIu64 ", \"seconds\": %.6f, "
           "\"latency\": ",
           F.sent, F.chat_received, (end - F.started) / 1e9);
    print_latencies();
    printf(", \"cpu\": %.6f, \"connections\": %d, \"frame_errors\": %" PRIu64
           ", \"skipped\": %" PRIu64,
           cpu_seconds() - F.cpu0, connections, F.errors, F.skipped);
    print_loop();
}

static double echo_seconds;

/* one line from stdin; returns 0 to quit */
static int run_command(char *line)
{
    char word[32] = "";
    double a = 0, b = 0;
    unsigned long long x = 0, y = 0, z = 0;
    if (sscanf(line, "%31s", word) != 1 || !strcmp(word, "quit"))
        return 0;
    if (!strcmp(word, "expect") && sscanf(line, "%*s %llu %llu", &x, &y) == 2) {
        cmd_expect(x, y);
    } else if (!strcmp(word, "echo") && sscanf(line, "%*s %lf %llu", &a, &y) == 2) {
        echo_seconds = a;
        cmd_echo(a, y);
    } else if (!strcmp(word, "upload") && sscanf(line, "%*s %lf %llu", &a, &y) == 2 &&
               y <= (1ULL << 30)) {
        cmd_upload(a, y);
    } else if (!strcmp(word, "chat") && sscanf(line, "%*s %lf %lf %llu", &a, &b, &z) == 3 &&
               z >= CHAT_STAMP && z <= (1ULL << 24)) {
        cmd_chat(a, b, z);
    } else {
        printf("{\"error\": \"unknown command or arguments: '%s'\"}\n", word);
        fflush(stdout);
    }
    return 1;
}

/* run the buffered commands until one is in progress; 0 means quit */
static int next_commands(void)
{
    while (F.mode == M_IDLE) {
        char *eol = memchr(F.line, '\n', F.line_len);
        if (!eol)
            return !F.stdin_eof; /* the end of input quits, as in fleet.py */
        *eol = 0;
        char copy[sizeof F.line];
        size_t n = (size_t)(eol - F.line);
        memcpy(copy, F.line, n + 1);
        memmove(F.line, eol + 1, F.line_len - n - 1);
        F.line_len -= n + 1;
        if (!run_command(copy))
            return 0;
    }
    return 1;
}

static void read_stdin(void)
{
    ssize_t got = read(0, F.line + F.line_len, sizeof F.line - 1 - F.line_len);
    if (got > 0) {
        F.line_len += (size_t)got;
    } else if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
        F.stdin_eof = 1;
        epoll_ctl(F.ep, EPOLL_CTL_DEL, 0, NULL); /* else it is readable for ever */
    }
    if (F.line_len == sizeof F.line - 1 && !memchr(F.line, '\n', F.line_len))
        F.line_len = 0; /* a line too long to be a command: dropped */
}

/* the command in progress has ended: report it; 1 if so */
static int check_done(int64_t now)
{
    switch (F.mode) {
    case M_EXPECT:
        if (!F.done && now < F.limit)
            return 0;
        report_expect();
        break;
    case M_ECHO:
        if (F.sending && now >= F.deadline)
            F.sending = 0;
        if (F.sending || (F.busy && now < F.limit))
            return 0;
        report_echo(echo_seconds);
        break;
    case M_UPLOAD:
        if (F.sending && now >= F.deadline) {
            F.sending = 0;
            for (int i = 0; i < F.normal; i++)
                if (F.conns[i].state == C_OPEN)
                    update_interest(&F.conns[i]);
        }
        if (F.sending || (!upload_finished() && now < F.limit))
            return 0;
        report_upload();
        break;
    case M_CHAT:
        chat_tick(now);
        if (F.sending)
            return 0;
        {
            int64_t last = F.last_delivery > F.deadline ? F.last_delivery : F.deadline;
            if (now < last + CHAT_QUIET_NS && now < F.limit)
                return 0;
        }
        report_chat();
        break;
    default:
        return 0;
    }
    fflush(stdout);
    F.mode = M_IDLE;
    return 1;
}

/* How long the loop sleeps before it asks for events again, woken at `woke` with `batch`
 * events (see COALESCE_NS): 0 but in expect and chat. */
static int64_t nap_ns(int64_t now, int64_t woke, int batch)
{
    if ((F.mode != M_EXPECT && F.mode != M_CHAT) || batch >= MAX_EVENTS / 8)
        return 0; /* nor after a large batch: the loop is busy, no wake-up to save */
    int64_t nap = woke + COALESCE_NS - now;
    if (F.mode == M_CHAT && F.sending) { /* a send that is due sooner shortens the nap */
        int64_t due = F.started + (int64_t)(F.slot * F.interval_ns) - now;
        if (due < nap)
            nap = due;
    }
    return nap > 0 ? nap : 0;
}

/* how long epoll_wait may sleep, in ms (-1: until an event) */
static int wait_ms(int64_t now)
{
    int64_t wake = -1;
    switch (F.mode) {
    case M_CONNECT:
        wake = F.connect_deadline;
        break;
    case M_EXPECT:
        wake = F.limit;
        break;
    case M_ECHO:
    case M_UPLOAD:
        wake = F.sending ? F.deadline : F.limit;
        break;
    case M_CHAT:
        if (F.sending)
            wake = F.started + (int64_t)(F.slot * F.interval_ns);
        else {
            int64_t last = F.last_delivery > F.deadline ? F.last_delivery : F.deadline;
            wake = last + CHAT_QUIET_NS < F.limit ? last + CHAT_QUIET_NS : F.limit;
        }
        break;
    default:
        return -1;
    }
    if (wake <= now)
        return 0;
    int64_t ms = (wake - now + 999999) / 1000000;
    return ms > 60000 ? 60000 : (int)ms;
}

/* ------------------------------------------------------------------ main */

static void usage(void)
{
    fprintf(stderr, "usage: cfleet --port P --connections N [--stuck K] [--timeout T]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    F.port = -1;
    F.normal = -1;
    F.timeout = 120;
    for (int i = 1; i < argc; i++) {
        char *name = argv[i], *value = strchr(name, '=');
        if (value)
            *value++ = 0;
        else if (i + 1 < argc)
            value = argv[++i];
        else
            usage();
        if (!strcmp(name, "--port"))
            F.port = atoi(value);
        else if (!strcmp(name, "--connections"))
            F.normal = atoi(value);
        else if (!strcmp(name, "--stuck"))
            F.stuck = atoi(value);
        else if (!strcmp(name, "--timeout"))
            F.timeout = atof(value);
        else {
            fprintf(stderr, "cfleet: unknown option %s (--deflate is fleet.py's only)\n", name);
            usage();
        }
    }
    if (F.port <= 0 || F.port > 65535 || F.normal < 0 || F.stuck < 0 || F.timeout <= 0)
        usage();
    signal(SIGPIPE, SIG_IGN); /* a closed peer is an error from send(), not a signal */
    prctl(PR_SET_TIMERSLACK, 1000UL); /* naps of 1 us precision, not the default 50 us */
    struct rlimit lim;
    if (!getrlimit(RLIMIT_NOFILE, &lim)) {
        lim.rlim_cur = lim.rlim_max;
        setrlimit(RLIMIT_NOFILE, &lim);
    }
    random_bytes(&F.rng, sizeof F.rng);
    F.rng |= 1;
    F.total = F.normal + F.stuck;
    F.conns = calloc((size_t)F.total + 1, sizeof *F.conns);
    F.ep = epoll_create1(EPOLL_CLOEXEC);
    if (!F.conns || F.ep < 0)
        die("setup: %s", strerror(errno));
    for (int i = 0; i < F.total; i++)
        F.conns[i].stuck = i >= F.normal; /* the stuck ones last, as fleet.py connects them */

    /* connect, CONNECTING_AT_ONCE at a time */
    struct epoll_event events[MAX_EVENTS];
    F.mode = M_CONNECT;
    F.connect_deadline = mono_ns() + (int64_t)CONNECT_LIMIT_S * NS;
    while (F.opened < F.total) {
        while (F.next < F.total && F.inflight < CONNECTING_AT_ONCE)
            start_connect(&F.conns[F.next++]);
        int n = epoll_wait(F.ep, events, MAX_EVENTS, wait_ms(mono_ns()));
        if (n < 0 && errno != EINTR)
            die("epoll_wait: %s", strerror(errno));
        for (int i = 0; i < n; i++)
            on_event(&F.conns[events[i].data.u32], events[i].events);
        if (mono_ns() > F.connect_deadline)
            die("%d of %d connections open after %d s", F.opened, F.total, CONNECT_LIMIT_S);
    }
    F.mode = M_IDLE;
    printf("ready\n");
    fflush(stdout);

    /* commands: stdin is in the same epoll set, so a command and the sockets share one loop */
    int64_t woke = 0; /* when epoll_wait last returned (see COALESCE_NS) */
    int batch = 0;    /* and how many events it brought */
    const uint32_t STDIN_TOKEN = UINT32_MAX;
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = STDIN_TOKEN};
    if (epoll_ctl(F.ep, EPOLL_CTL_ADD, 0, &ev) < 0)
        die("stdin must be a pipe or a terminal: %s", strerror(errno));
    for (;;) {
        int64_t now = mono_ns();
        check_done(now); /* reports the command in progress if it has ended */
        if (F.mode == M_IDLE) {
            if (!next_commands())
                break; /* quit, or the end of input */
            if (F.mode != M_IDLE)
                continue; /* a command began: it may be done at once (expect, nothing to wait) */
        }
        int64_t nap = nap_ns(now, woke, batch);
        if (nap) {
            struct timespec d = {.tv_sec = 0, .tv_nsec = (long)nap};
            nanosleep(&d, NULL);
            now = mono_ns();
        }
        int n = epoll_wait(F.ep, events, MAX_EVENTS, wait_ms(now));
        if (n < 0 && errno != EINTR)
            die("epoll_wait: %s", strerror(errno));
        F.waits++;
        woke = mono_ns();
        batch = n;
        for (int i = 0; i < n; i++) {
            if (events[i].data.u32 == STDIN_TOKEN)
                read_stdin();
            else
                on_event(&F.conns[events[i].data.u32], events[i].events);
        }
    }
    for (int i = 0; i < F.total; i++)
        if (F.conns[i].state != C_CLOSED && F.conns[i].state != C_IDLE)
            close(F.conns[i].fd);
    return 0;
}
