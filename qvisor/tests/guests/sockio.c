/* Socket reads and writes with bad buffers lose nothing. Reads: read, recv and readv into
 * an unmapped address, into the kernel half, into the syscall stub's page (Quark's, shared by
 * every process: present and user-visible, but never the app's to write) fail with EFAULT; a
 * buffer that runs into an unmapped page takes what fits before it or fails with EFAULT
 * (Linux does either, by where its segments end); readv and recvmsg scatter over their
 * buffers in order; every byte sent still arrives, once and in order. Writes: write, send,
 * writev and sendmsg from an unmapped address or the kernel half fail with EFAULT and send
 * nothing; one that runs into an unmapped page sends what came before it or fails with
 * EFAULT; writev and sendmsg gather in order. One process, two sockets over 127.0.0.1. Then
 * a pipe and a socket pair: a read into a bad buffer leaves their bytes in them. Prints one
 * line a part; exits 1 at the first failure. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define TOTAL (256 << 10)

static void fail(const char *what, long r) {
  printf("FAIL %s (returned %ld, errno %d)\n", what, r, errno);
  exit(1);
}

static unsigned char pattern(long i) { return (unsigned char)(i * 7 + (i >> 11)); }

static long received;

/* Checks `n` bytes just read against the stream's pattern. */
static void got(const unsigned char *buf, long n) {
  for (long i = 0; i < n; i++) {
    if (buf[i] != pattern(received + i)) {
      fail("a byte out of place", received + i);
    }
  }
  received += n;
}

/* A read into `bad` must fail with EFAULT and take nothing. */
static void refused(int s, void *bad, const char *what) {
  long before = received;
  long r = read(s, bad, 4096);
  if (r != -1 || errno != EFAULT) {
    fail(what, r);
  }
  r = recv(s, bad, 4096, 0);
  if (r != -1 || errno != EFAULT) {
    fail(what, r);
  }
  struct iovec v = {bad, 4096};
  r = readv(s, &v, 1);
  if (r != -1 || errno != EFAULT) {
    fail(what, r);
  }
  if (received != before) {
    fail("a refused read took bytes", received - before);
  }
}

/* Writes from `bad` must fail with EFAULT and send nothing (checked by what arrives). */
static void refuse_writes(int c, void *bad, const char *what) {
  long r = write(c, bad, 4096);
  if (r != -1 || errno != EFAULT) {
    fail(what, r);
  }
  r = send(c, bad, 4096, 0);
  if (r != -1 || errno != EFAULT) {
    fail(what, r);
  }
  struct iovec v = {bad, 4096};
  r = writev(c, &v, 1);
  if (r != -1 || errno != EFAULT) {
    fail(what, r);
  }
  struct msghdr mh = {.msg_iov = &v, .msg_iovlen = 1};
  r = sendmsg(c, &mh, 0);
  if (r != -1 || errno != EFAULT) {
    fail(what, r);
  }
}

int main(void) {
  setvbuf(stdout, NULL, _IONBF, 0);
  int l = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof a;
  if (l < 0 || bind(l, (void *)&a, sizeof a) != 0 || listen(l, 1) != 0 ||
      getsockname(l, (void *)&a, &al) != 0) {
    fail("listening", -1);
  }
  int c = socket(AF_INET, SOCK_STREAM, 0);
  if (c < 0 || connect(c, (void *)&a, sizeof a) != 0) {
    fail("connecting", -1);
  }
  int s = accept(l, NULL, NULL);
  if (s < 0) {
    fail("accepting", s);
  }
  static unsigned char out[TOTAL];
  for (long i = 0; i < TOTAL; i++) {
    out[i] = pattern(i);
  }
  /* Small enough to sit in the socket buffers whole: no second thread is needed. */
  for (long sent = 0; sent < TOTAL;) {
    long w = write(c, out + sent, TOTAL - sent);
    if (w <= 0) {
      fail("sending", w);
    }
    sent += w;
  }
  unsigned char *first = malloc(4096);
  long r = read(s, first, 1000);
  if (r <= 0) {
    fail("the first read", r);
  }
  got(first, r);

  refused(s, NULL, "a read into NULL");
  refused(s, (void *)0xffff800000000000UL, "a read into the kernel half");
  refused(s, (void *)0xffffffff80000000UL, "a read into the stub's page");

  /* A buffer whose second page is never mapped (reserved PROT_NONE): 100 bytes fit before
   * it. */
  unsigned char *two = mmap(NULL, 8192, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (two == MAP_FAILED || mmap(two, 4096, PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != two) {
    fail("mapping", -1);
  }
  unsigned char *edge = two + 4096 - 100;
  r = read(s, edge, 4096);
  if (r > 0 && r <= 100) {
    got(edge, r);
  } else if (!(r == -1 && errno == EFAULT)) {
    fail("a read running into an unmapped page", r);
  }

  /* readv and recvmsg scatter one receive over their buffers in order (an empty one too). */
  for (int i = 0; i < 2; i++) {
    static unsigned char a1[10], a3[5000];
    struct iovec vs[3] = {{a1, sizeof a1}, {NULL, 0}, {a3, sizeof a3}};
    struct msghdr mh = {.msg_iov = vs, .msg_iovlen = 3};
    r = i == 0 ? readv(s, vs, 3) : recvmsg(s, &mh, 0);
    if (r <= 0) {
      fail(i == 0 ? "readv over three buffers" : "recvmsg over three buffers", r);
    }
    got(a1, r < 10 ? r : 10);
    if (r > 10) {
      got(a3, r - 10);
    }
  }

  /* Every byte still comes, in order. */
  static unsigned char in[64 << 10];
  while (received < TOTAL) {
    r = read(s, in, sizeof in);
    if (r <= 0) {
      fail("reading the rest", r);
    }
    got(in, r);
  }
  printf("reads: bad buffers refused, %ld bytes intact\n", received);

  /* The other way: c -> s, checked as it arrives. */
  received = 0;
  long sent = 0;
  refuse_writes(c, NULL, "a write from NULL");
  refuse_writes(c, (void *)0xffff800000000000UL, "a write from the kernel half");
  /* 100 bytes of the pattern just before the unmapped page. */
  for (long i = 0; i < 100; i++) {
    edge[i] = pattern(sent + i);
  }
  r = write(c, edge, 4096);
  if (r > 0 && r <= 100) {
    sent += r;
  } else if (!(r == -1 && errno == EFAULT)) {
    fail("a write running into an unmapped page", r);
  }
  /* writev and sendmsg gather in order, an empty buffer between. */
  for (int i = 0; i < 2; i++) {
    static unsigned char b1[10], b3[3000];
    for (long k = 0; k < 10; k++) {
      b1[k] = pattern(sent + k);
    }
    for (long k = 0; k < 3000; k++) {
      b3[k] = pattern(sent + 10 + k);
    }
    struct iovec vs[3] = {{b1, sizeof b1}, {NULL, 0}, {b3, sizeof b3}};
    struct msghdr mh = {.msg_iov = vs, .msg_iovlen = 3};
    r = i == 0 ? writev(c, vs, 3) : sendmsg(c, &mh, 0);
    if (r != 3010) {
      fail(i == 0 ? "writev over three buffers" : "sendmsg over three buffers", r);
    }
    sent += r;
  }
  for (long k = 0; k < 20000; k++) {
    out[k] = pattern(sent + k);
  }
  for (long done = 0; done < 20000;) {
    r = write(c, out + done, 20000 - done);
    if (r <= 0) {
      fail("sending the rest", r);
    }
    done += r;
  }
  sent += 20000;
  while (received < sent) {
    r = read(s, in, sizeof in);
    if (r <= 0) {
      fail("reading what was written", r);
    }
    got(in, r);
  }
  /* The count depends on whether the edge's 100 bytes went (Linux: EFAULT, Quark: sent). */
  printf("writes: bad buffers refused, %ld bytes intact\n", received - (sent - 26020));

  /* A pipe and a stream socket pair: a read into a bad buffer leaves the bytes there. */
  for (int i = 0; i < 2; i++) {
    int pp[2];
    if ((i == 0 ? pipe(pp) : socketpair(AF_UNIX, SOCK_STREAM, 0, pp)) != 0 ||
        write(pp[1], "kept bytes", 10) != 10) {
      fail("making a pipe", -1);
    }
    void *volatile nowhere = NULL; /* NULL, hidden from the compiler's checks */
    r = read(pp[0], nowhere, 10);
    if (r != -1 || errno != EFAULT) {
      fail(i == 0 ? "a pipe read into NULL" : "a socket pair read into NULL", r);
    }
    char back[10];
    r = read(pp[0], back, sizeof back);
    if (r != 10 || memcmp(back, "kept bytes", 10) != 0) {
      fail(i == 0 ? "the pipe lost its bytes" : "the socket pair lost its bytes", r);
    }
  }
  printf("pipes: bad buffers refused, bytes kept\n");
  return 0;
}
