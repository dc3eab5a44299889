/* TCP through the container's network: tcp client IP PORT | tcp server PORT | tcp pollserver PORT
 * (pollserver waits with poll(2) before accept and before read) | tcp send IP PORT MIB (streams
 * MIB mebibytes and prints the rate) | tcp nbconnect IP PORT (non-blocking connect: prints the
 * connect errno, what poll saw and SO_ERROR) | tcp loop IP PORT (a listener and a client in this
 * one process talk over IP, which is 127.0.0.1 or the container's own address) | tcp pipeto IP PORT
 * (stdin to the connection) | tcp pipefrom IP PORT (the connection to stdout), in 64 KiB chunks |
 * tcp hog IP PORT (opens sockets and starts connections until refused, then holds them until killed, 120 s at most). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/select.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static int fail(const char *what) { perror(what); return 1; }

int main(int argc, char **argv) {
  char buf[256];
  struct sockaddr_in a = {.sin_family = AF_INET};
  if (argc == 4 && !strcmp(argv[1], "client")) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0) return fail("socket");
    a.sin_port = htons(atoi(argv[3]));
    a.sin_addr.s_addr = inet_addr(argv[2]);
    if (connect(s, (struct sockaddr *)&a, sizeof a)) return fail("connect");
    const char *msg = "ping from the guest";
    if (write(s, msg, strlen(msg)) != (ssize_t)strlen(msg)) return fail("write");
    shutdown(s, SHUT_WR);
    ssize_t n, got = 0;
    while ((n = read(s, buf + got, sizeof buf - 1 - got)) > 0) got += n;
    buf[got] = 0;
    printf("reply: %s\n", buf);
    return close(s);
  }
  if (argc == 4 && !strcmp(argv[1], "nbconnect")) {
    int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    a.sin_port = htons(atoi(argv[3]));
    a.sin_addr.s_addr = inet_addr(argv[2]);
    int r = connect(s, (struct sockaddr *)&a, sizeof a);
    int e = r ? errno : 0;
    struct pollfd p = {.fd = s, .events = POLLOUT};
    int n = poll(&p, 1, 5000);
    int err = -1;
    socklen_t len = sizeof err;
    getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &len);
    printf("connect %s, poll %d%s%s, SO_ERROR %s\n", e == EINPROGRESS ? "EINPROGRESS" : strerror(e), n,
           (p.revents & POLLOUT) ? " POLLOUT" : "", (p.revents & (POLLERR | POLLHUP)) ? " POLLERR/HUP" : "",
           err ? strerror(err) : "0");
    return 0;
  }
  if (argc == 4 && !strcmp(argv[1], "loop")) {
    int l = socket(AF_INET, SOCK_STREAM, 0);
    a.sin_port = htons(atoi(argv[3]));
    a.sin_addr.s_addr = inet_addr(argv[2]);
    if (bind(l, (struct sockaddr *)&a, sizeof a)) return fail("bind");
    if (listen(l, 4)) return fail("listen");
    int c = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (connect(c, (struct sockaddr *)&a, sizeof a) && errno != EINPROGRESS) return fail("connect");
    struct pollfd p = {.fd = c, .events = POLLOUT};
    if (poll(&p, 1, 5000) != 1) return fail("poll connect");
    int s = accept(l, NULL, NULL);
    if (s < 0) return fail("accept");
    struct sockaddr_in me, peer;
    socklen_t len = sizeof me;
    getsockname(c, (struct sockaddr *)&me, &len);
    len = sizeof peer;
    getpeername(s, (struct sockaddr *)&peer, &len);
    const char *msg = "over the guest's own stack";
    if (write(c, msg, strlen(msg)) != (ssize_t)strlen(msg)) return fail("write");
    struct pollfd r = {.fd = s, .events = POLLIN};
    poll(&r, 1, 5000);
    int pending = -1, on = 1;
    ioctl(s, FIONREAD, &pending);
    ssize_t n = read(s, buf, sizeof buf - 1);
    if (n <= 0) return fail("read");
    buf[n] = 0;
    printf("%s from %s (client bound %s)\n", buf, inet_ntoa(peer.sin_addr),
           me.sin_addr.s_addr == peer.sin_addr.s_addr ? "the same" : "differently");
    /* FIONBIO makes the server's socket non-blocking: nothing more to read is EAGAIN. */
    ioctl(s, FIONBIO, &on);
    printf("FIONREAD %d, then FIONBIO read: %s\n", pending, read(s, buf, 1) < 0 && errno == EAGAIN ? "EAGAIN" : "?");
    /* A stream names no sender: recvfrom and recvmsg give an address length of 0, as Linux. */
    if (write(c, "ab", 2) != 2) return fail("write");
    poll(&r, 1, 5000);
    struct sockaddr_in from = {0};
    socklen_t fromlen = sizeof from;
    n = recvfrom(s, buf, 1, 0, (struct sockaddr *)&from, &fromlen);
    struct iovec v = {.iov_base = buf + 1, .iov_len = 1};
    struct msghdr mh = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = &v, .msg_iovlen = 1};
    poll(&r, 1, 5000);
    ssize_t m = recvmsg(s, &mh, 0);
    printf("recvfrom %zd byte, address length %u; recvmsg %zd byte, name length %u\n", n,
           (unsigned)fromlen, m, (unsigned)mh.msg_namelen);
    return 0;
  }
  if (argc == 4 && (!strcmp(argv[1], "pipeto") || !strcmp(argv[1], "pipefrom"))) {
    int to = !strcmp(argv[1], "pipeto");
    int s = socket(AF_INET, SOCK_STREAM, 0);
    a.sin_port = htons(atoi(argv[3]));
    a.sin_addr.s_addr = inet_addr(argv[2]);
    if (connect(s, (struct sockaddr *)&a, sizeof a)) return fail("connect");
    static char chunk[1 << 16];
    int in = to ? 0 : s, out = to ? s : 1;
    ssize_t n;
    while ((n = read(in, chunk, sizeof chunk)) > 0)
      for (ssize_t done = 0, w; done < n; done += w)
        if ((w = write(out, chunk + done, n - done)) <= 0) return fail("write");
    if (n < 0) return fail("read");
    if (to) {
      shutdown(s, SHUT_WR);
      while (read(s, chunk, sizeof chunk) > 0) {}
    }
    return 0;
  }
  if (argc == 4 && !strcmp(argv[1], "hog")) {
    a.sin_port = htons(atoi(argv[3]));
    a.sin_addr.s_addr = inet_addr(argv[2]);
    int opened = 0, connecting = 0;
    for (;;) {
      int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
      if (s < 0) {
        printf("opened %d sockets (%d connecting), then: %s\n", opened, connecting, strerror(errno));
        break;
      }
      opened++;
      if (connect(s, (struct sockaddr *)&a, sizeof a) == 0 || errno == EINPROGRESS) connecting++;
    }
    fflush(stdout);
    sleep(120);
    return 0;
  }
  if (argc == 5 && !strcmp(argv[1], "send")) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    a.sin_port = htons(atoi(argv[3]));
    a.sin_addr.s_addr = inet_addr(argv[2]);
    if (connect(s, (struct sockaddr *)&a, sizeof a)) return fail("connect");
    static char chunk[1 << 16];
    memset(chunk, 'q', sizeof chunk);
    long total = atol(argv[4]) << 20, sent = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (sent < total) {
      ssize_t n = write(s, chunk, sizeof chunk);
      if (n <= 0) return fail("write");
      sent += n;
    }
    shutdown(s, SHUT_WR);
    while (read(s, chunk, sizeof chunk) > 0) {}
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("sent %ld bytes in %.3f s: %.2f Gbit/s\n", sent, secs, sent * 8 / secs / 1e9);
    return 0;
  }
  if (argc == 3 && (!strcmp(argv[1], "server") || !strcmp(argv[1], "pollserver"))) {
    int use_poll = !strcmp(argv[1], "pollserver");
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    a.sin_port = htons(atoi(argv[2]));
    if (bind(l, (struct sockaddr *)&a, sizeof a)) return fail("bind");
    if (listen(l, 16)) return fail("listen");
    if (use_poll) {
      struct pollfd p = {.fd = l, .events = POLLIN};
      printf("idle poll: %d\n", poll(&p, 1, 100));
    }
    printf("listening\n");
    fflush(stdout);
    if (use_poll) {
      struct pollfd p = {.fd = l, .events = POLLIN};
      int n = poll(&p, 1, 10000);
      printf("poll before accept: %d %s\n", n, (p.revents & POLLIN) ? "POLLIN" : "-");
      fd_set rd;
      FD_ZERO(&rd);
      FD_SET(l, &rd);
      struct timeval tv = {.tv_sec = 0};
      int k = select(l + 1, &rd, NULL, NULL, &tv);
      printf("select agrees: %d %s\n", k, FD_ISSET(l, &rd) ? "readable" : "-");
    }
    struct sockaddr_in peer;
    socklen_t len = sizeof peer;
    int c = accept(l, (struct sockaddr *)&peer, &len);
    if (c < 0) return fail("accept");
    if (use_poll) {
      /* Writable at once (connected), readable only once the client's data arrives. */
      struct pollfd w = {.fd = c, .events = POLLOUT};
      int wn = poll(&w, 1, 0);
      printf("writable: %d%s\n", wn, (w.revents & POLLOUT) ? " POLLOUT" : "");
      struct pollfd p = {.fd = c, .events = POLLIN};
      int k = poll(&p, 1, 10000);
      printf("poll before read: %d%s\n", k, (p.revents & POLLIN) ? " POLLIN" : "");
      fflush(stdout);
    }
    ssize_t n = read(c, buf, sizeof buf - 1);
    if (n < 0) return fail("read");
    buf[n] = 0;
    char out[300];
    int k = snprintf(out, sizeof out, "pong to %s:%s", inet_ntoa(peer.sin_addr), buf);
    write(c, out, k);
    close(c);
    return close(l);
  }
  return 2;
}
