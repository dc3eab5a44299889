/* Socket options as Linux has them: TCP_NODELAY and SO_KEEPALIVE set before connect or listen
 * hold on the connected socket and on what a listener accepts; SO_TYPE, SO_PROTOCOL,
 * SO_DOMAIN, SO_ACCEPTCONN say what a socket is; SO_RCVBUF/SO_SNDBUF are sizes; a short or bad
 * option buffer is EINVAL/EFAULT, a read-only option ENOPROTOOPT, and getsockopt cuts the value
 * to the length asked for; SO_RCVTIMEO ends a recv and an accept with EAGAIN, SO_SNDTIMEO a
 * send into a full connection (alone, and from a second thread). Over 127.0.0.1. Prints
 * "sockopts: ok"; exits 1 at the first failure with what failed. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void fail(const char *what, long got) {
  printf("FAIL %s (got %ld, errno %d)\n", what, got, errno);
  exit(1);
}

static int get(int s, int level, int name) {
  int v = -1;
  socklen_t len = sizeof v;
  if (getsockopt(s, level, name, &v, &len) != 0 || len != sizeof v) {
    fail("getsockopt", name);
  }
  return v;
}

static void set(int s, int level, int name, int v) {
  if (setsockopt(s, level, name, &v, sizeof v) != 0) {
    fail("setsockopt", name);
  }
}

static void want(const char *what, long got, long wanted) {
  if (got != wanted) {
    printf("FAIL %s: %ld, wanted %ld\n", what, got, wanted);
    exit(1);
  }
}

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static void set_timeout(int s, int name, long usec) {
  struct timeval tv = {.tv_sec = usec / 1000000, .tv_usec = usec % 1000000};
  if (setsockopt(s, SOL_SOCKET, name, &tv, sizeof tv) != 0) {
    fail("setting a timeout", name);
  }
}

/* A call that waits ends after about 200 ms with EAGAIN. */
static void times_out(const char *what, long got, double since) {
  double took = now() - since;
  if (got != -1 || errno != EAGAIN || took < 0.15 || took > 5) {
    printf("FAIL %s: %ld errno %d after %.3f s\n", what, got, errno, took);
    exit(1);
  }
}

/* recv, accept and send with timeouts on fresh sockets. */
static void *timeouts(void *unused) {
  (void)unused;
  int l = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof a;
  if (bind(l, (void *)&a, sizeof a) || listen(l, 4) || getsockname(l, (void *)&a, &al)) {
    fail("listening", -1);
  }
  set_timeout(l, SO_RCVTIMEO, 200000);
  double t0 = now();
  times_out("accept with SO_RCVTIMEO", accept(l, NULL, NULL), t0);
  int c = socket(AF_INET, SOCK_STREAM, 0);
  if (connect(c, (void *)&a, sizeof a) != 0) {
    fail("connecting", -1);
  }
  int s = accept(l, NULL, NULL);
  set_timeout(c, SO_RCVTIMEO, 200000);
  struct timeval tv;
  socklen_t len = sizeof tv;
  if (getsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, &len) || len != sizeof tv ||
      tv.tv_sec != 0 || tv.tv_usec != 200000) {
    fail("reading SO_RCVTIMEO back", tv.tv_usec);
  }
  char b[1];
  t0 = now();
  times_out("recv with SO_RCVTIMEO", recv(c, b, 1, 0), t0);
  t0 = now();
  times_out("read with SO_RCVTIMEO", read(c, b, 1), t0);
  /* Data before the timeout is read at once. */
  write(s, "x", 1);
  if (recv(c, b, 1, 0) != 1) {
    fail("recv of data", -1);
  }
  set_timeout(s, SO_SNDTIMEO, 200000);
  static char chunk[1 << 16];
  long total = 0, n;
  t0 = now();
  while ((n = send(s, chunk, sizeof chunk, 0)) > 0) {
    total += n;
    if (total > 256L << 20) {
      fail("a connection nobody reads took it all", total);
    }
    t0 = now();
  }
  times_out("send with SO_SNDTIMEO into a full connection", n, t0);
  close(s);
  close(c);
  close(l);
  return NULL;
}

int main(void) {
  int l = socket(AF_INET, SOCK_STREAM, 0);
  want("a fresh socket's TCP_NODELAY", get(l, IPPROTO_TCP, TCP_NODELAY), 0);
  want("SO_TYPE", get(l, SOL_SOCKET, SO_TYPE), SOCK_STREAM);
  want("SO_PROTOCOL", get(l, SOL_SOCKET, SO_PROTOCOL), IPPROTO_TCP);
  want("SO_DOMAIN", get(l, SOL_SOCKET, SO_DOMAIN), AF_INET);
  want("SO_ACCEPTCONN before listen", get(l, SOL_SOCKET, SO_ACCEPTCONN), 0);
  if (get(l, SOL_SOCKET, SO_RCVBUF) <= 0 || get(l, SOL_SOCKET, SO_SNDBUF) <= 0) {
    fail("buffer sizes", 0);
  }
  set(l, SOL_SOCKET, SO_REUSEADDR, 1);
  want("SO_REUSEADDR", get(l, SOL_SOCKET, SO_REUSEADDR) != 0, 1);
  set(l, IPPROTO_TCP, TCP_NODELAY, 1);
  set(l, SOL_SOCKET, SO_KEEPALIVE, 1);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof a;
  if (bind(l, (void *)&a, sizeof a) || listen(l, 4) || getsockname(l, (void *)&a, &al)) {
    fail("listening", -1);
  }
  want("SO_ACCEPTCONN after listen", get(l, SOL_SOCKET, SO_ACCEPTCONN), 1);
  want("the listener's TCP_NODELAY", get(l, IPPROTO_TCP, TCP_NODELAY) != 0, 1);

  int c = socket(AF_INET, SOCK_STREAM, 0);
  set(c, IPPROTO_TCP, TCP_NODELAY, 1);
  if (connect(c, (void *)&a, sizeof a) != 0) {
    fail("connecting", -1);
  }
  want("TCP_NODELAY set before connect", get(c, IPPROTO_TCP, TCP_NODELAY) != 0, 1);
  want("SO_KEEPALIVE never set", get(c, SOL_SOCKET, SO_KEEPALIVE), 0);
  set(c, SOL_SOCKET, SO_KEEPALIVE, 1);
  want("SO_KEEPALIVE set when connected", get(c, SOL_SOCKET, SO_KEEPALIVE) != 0, 1);
  set(c, IPPROTO_TCP, TCP_NODELAY, 0);
  want("TCP_NODELAY cleared", get(c, IPPROTO_TCP, TCP_NODELAY), 0);
  int s = accept(l, NULL, NULL);
  if (s < 0) {
    fail("accepting", s);
  }
  want("TCP_NODELAY inherited from the listener", get(s, IPPROTO_TCP, TCP_NODELAY) != 0, 1);
  want("SO_KEEPALIVE inherited from the listener", get(s, SOL_SOCKET, SO_KEEPALIVE) != 0, 1);
  want("an accepted socket's SO_ACCEPTCONN", get(s, SOL_SOCKET, SO_ACCEPTCONN), 0);
  /* The connection works with either setting. */
  char b = 'x';
  if (write(c, &b, 1) != 1 || read(s, &b, 1) != 1 || write(s, &b, 1) != 1 ||
      read(c, &b, 1) != 1) {
    fail("a round trip", -1);
  }

  short half = 1;
  errno = 0;
  want("a 2-byte int", setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &half, sizeof half), -1);
  want("EINVAL", errno, EINVAL);
  errno = 0;
  want("a bad option pointer", setsockopt(c, IPPROTO_TCP, TCP_NODELAY, (void *)8, 4), -1);
  want("EFAULT", errno, EFAULT);
  int one = 1;
  errno = 0;
  want("setting SO_TYPE", setsockopt(c, SOL_SOCKET, SO_TYPE, &one, sizeof one), -1);
  want("ENOPROTOOPT", errno, ENOPROTOOPT);
  unsigned char two[4] = {0xaa, 0xaa, 0xaa, 0xaa};
  socklen_t len = 2;
  if (getsockopt(c, SOL_SOCKET, SO_TYPE, two, &len) != 0) {
    fail("getsockopt of 2 bytes", -1);
  }
  want("the length it wrote", len, 2);
  want("its bytes", (long)two[0] | (long)two[1] << 8 | (long)two[2] << 16 | (long)two[3] << 24,
       0xaaaa0001L);

  struct timeval bad = {.tv_sec = 0, .tv_usec = 1000000};
  errno = 0;
  want("a timeval of a million microseconds",
       setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &bad, sizeof bad), -1);
  want("EDOM", errno, EDOM);
  errno = 0;
  want("a short timeval", setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &bad, 8), -1);
  want("EINVAL", errno, EINVAL);
  timeouts(NULL);
  pthread_t t;
  pthread_create(&t, NULL, timeouts, NULL);
  pthread_join(t, NULL);

  int u = socket(AF_INET, SOCK_DGRAM, 0);
  want("a UDP socket's SO_TYPE", get(u, SOL_SOCKET, SO_TYPE), SOCK_DGRAM);
  want("a UDP socket's SO_PROTOCOL", get(u, SOL_SOCKET, SO_PROTOCOL), IPPROTO_UDP);
  set(u, SOL_SOCKET, SO_REUSEADDR, 1);
  close(u);
  close(s);
  close(c);
  close(l);
  printf("sockopts: ok\n");
  return 0;
}
