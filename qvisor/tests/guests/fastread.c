/* Socket reads that Quark's syscall stub serves from the ring (qvisor/src/fastread.rs) keep
 * Linux's semantics. Over 127.0.0.1, a forked writer sends a 24 MiB pattern; the reader
 * reads it (read and recv) with lengths from 1 byte to 200 KiB (pieces that wrap the
 * ring), and between
 * them: reads into bad buffers (NULL, the kernel half, the stub's mailbox page, a PROT_NONE
 * page, one running out of the user half) fail with EFAULT and take nothing; a forked child reads a stretch of the stream in the
 * middle (its descriptor table is another's); the descriptor goes non-blocking and a drained
 * socket says EAGAIN; dup2 puts another connection on the descriptor, whose reads then
 * come from it, and back; a closed descriptor number reused for a new connection reads the
 * new one; the end of the stream reads 0. With the argument "many": six streams of 2 MiB
 * read in turn, more than a small container may read in the stub at once (the rest are read
 * through qkernel). With "writes": the same for writes the stub copies into the transmit
 * ring (see writes() below); with "alone": alarm(2) interrupting a lone process's socket
 * calls. Passes natively too. Prints one line; exits 1 at the first
 * failure. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#define TOTAL (24L << 20)
#define CHILD_PART (1L << 20)

static void fail(const char *what, long r) {
  printf("FAIL %s (returned %ld, errno %d)\n", what, r, errno);
  exit(1);
}

static unsigned char pattern(long i) { return (unsigned char)(i * 7 + (i >> 13)); }

static long received;
static unsigned char buf[200 << 10];
/* The lengths reads and writes cycle through: 1 byte to 200 KiB, pieces that wrap a ring. */
static const long lengths[] = {65536, 1, 100, 4096, 200 << 10, 7, 65536, 12345, 131072, 3};

/* Reads up to `len` bytes and checks them against the pattern at the stream's position;
 * every third read is a recv (recvfrom without flags or address), which the stub serves too. */
static long take(int s, long len) {
  static unsigned long calls;
  long n = calls++ % 3 == 2 ? recv(s, buf, len, 0) : read(s, buf, len);
  if (n < 0) {
    fail("a read", n);
  }
  for (long i = 0; i < n; i++) {
    if (buf[i] != pattern(received + i)) {
      fail("a byte out of place", received + i);
    }
  }
  received += n;
  return n;
}


static int listener(struct sockaddr_in *at) {
  int l = socket(AF_INET, SOCK_STREAM, 0);
  at->sin_family = AF_INET;
  at->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  at->sin_port = 0;
  socklen_t len = sizeof *at;
  if (l < 0 || bind(l, (struct sockaddr *)at, sizeof *at) || listen(l, 8) ||
      getsockname(l, (struct sockaddr *)at, &len)) {
    fail("a listener", -1);
  }
  return l;
}

/* A new connection to the listener `l` at `at`: returns the near end, the far in `*far`. */
static int connected(int l, struct sockaddr_in *at, int *far) {
  int c = socket(AF_INET, SOCK_STREAM, 0);
  if (c < 0 || connect(c, (struct sockaddr *)at, sizeof *at)) {
    fail("a connect", -1);
  }
  *far = accept(l, NULL, NULL);
  if (*far < 0) {
    fail("an accept", *far);
  }
  return c;
}

/* A connection whose far end (a child) writes `text` and closes; returns the near end. */
static int sender_of(int l, struct sockaddr_in *at, const char *text) {
  int a;
  int c = connected(l, at, &a);
  pid_t p = fork();
  if (p == 0) {
    close(c);
    if (write(a, text, strlen(text)) != (long)strlen(text)) {
      _exit(1);
    }
    _exit(0);
  }
  close(a);
  return c;
}

static void expect_text(int s, const char *text) {
  char got[64] = {0};
  long want = strlen(text), n = 0;
  while (n < want) {
    long r = read(s, got + n, sizeof got - 1 - n);
    if (r <= 0) {
      fail(text, r);
    }
    n += r;
  }
  if (strcmp(got, text) != 0) {
    fail(text, n);
  }
}

/* Six streams at once, each from a writer of its own, read 64 KiB at a time in turn. */
static int many(void) {
  enum { STREAMS = 6, EACH = 2 << 20 };
  struct sockaddr_in at;
  int l = listener(&at);
  int s[STREAMS];
  long pos[STREAMS] = {0};
  for (int k = 0; k < STREAMS; k++) {
    int a;
    s[k] = connected(l, &at, &a);
    if (fork() == 0) {
      static unsigned char out[1 << 16];
      for (long sent = 0; sent < EACH;) {
        for (long i = 0; i < (long)sizeof out; i++) {
          out[i] = pattern(k * 7919 + sent + i);
        }
        long w = write(a, out, sizeof out);
        if (w <= 0) {
          _exit(1);
        }
        sent += w;
      }
      _exit(0);
    }
    close(a);
  }
  for (int done = 0; done < STREAMS;) {
    done = 0;
    for (int k = 0; k < STREAMS; k++) {
      if (pos[k] == EACH) {
        done++;
        continue;
      }
      long n = read(s[k], buf, 65536);
      if (n <= 0) {
        fail("a read of one of many", n);
      }
      for (long i = 0; i < n; i++) {
        if (buf[i] != pattern(k * 7919 + pos[k] + i)) {
          fail("a byte of one of many out of place", pos[k] + i);
        }
      }
      pos[k] += n;
    }
  }
  printf("many: %d streams of %d bytes intact\n", STREAMS, EACH);
  return 0;
}

static long sent;

/* Writes `len` bytes of the pattern at the stream's position, all of them (a blocking
 * socket, while another process reads); every third write is a send (sendto without flags
 * or address), which the stub serves too. */
static void give(int s, long len) {
  static unsigned long calls;
  for (long i = 0; i < len; i++) {
    buf[i] = pattern(sent + i);
  }
  long n = calls++ % 3 == 2 ? send(s, buf, len, 0) : write(s, buf, len);
  if (n != len) {
    fail("a blocking write", n);
  }
  sent += len;
}

/* Reads into (or writes from) buffers no call may use fail with EFAULT and move nothing
 * (what moved would show in the stream): NULL, the kernel half, the stub's mailbox, a
 * PROT_NONE page, a buffer running out of the user half. */
static void bad_buffers(int s, int writing) {
  void *none = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  void *bad[] = {NULL, (void *)0xffff800000000000UL, (void *)0xffffffff80001800UL, none,
                 (void *)0x7fffffffff00UL};
  for (unsigned i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    long r = writing ? write(s, bad[i], 4096) : read(s, bad[i], 4096);
    if (r != -1 || errno != EFAULT) {
      fail(writing ? "a write from a bad buffer" : "a read into a bad buffer", (long)i);
    }
  }
  munmap(none, 4096);
}

/* A forked child reads (or writes) the next CHILD_PART bytes of the stream, with a
 * descriptor table of its own. */
static void in_a_child(int s, int writing) {
  long *at = writing ? &sent : &received;
  pid_t p = fork();
  if (p == 0) {
    long end = *at + CHILD_PART;
    while (*at < end) {
      long n = end - *at < 65536 ? end - *at : 65536;
      if (writing) {
        give(s, n);
      } else {
        take(s, n);
      }
    }
    _exit(0);
  }
  int status;
  if (waitpid(p, &status, 0) != p || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    fail(writing ? "the child's writes" : "the child's reads", status);
  }
  *at += CHILD_PART;
}

/* Reads `want` bytes of `c` from `s` in 8 KiB reads (too short to be read in the stub, so
 * only writes are) and checks them; returns how many came. */
static long drain_bytes(int s, long want, unsigned char c) {
  static unsigned char in[8192];
  long got = 0;
  while (got < want) {
    long n = read(s, in, sizeof in < (unsigned long)(want - got) ? sizeof in : want - got);
    if (n <= 0) {
      break;
    }
    for (long i = 0; i < n; i++) {
      if (in[i] != c) {
        fail("a byte written to the quiet socket", got + i);
      }
    }
    got += n;
  }
  return got;
}

static volatile int alarms;
static void on_alarm(int sig) {
  (void)sig;
  alarms++;
}

/* SIGALRM runs on_alarm, which does not restart interrupted calls (no SA_RESTART). */
static void catch_alarms(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_alarm;
  sigaction(SIGALRM, &sa, NULL);
}

static volatile int sigpipes;
static void on_sigpipe(int sig) {
  (void)sig;
  sigpipes++;
}

/* Writes: a forked reader checks a 24 MiB pattern the parent writes (write and send) in
 * pieces of 1 byte to 200 KiB (pieces that wrap the ring); between them: writes from bad
 * buffers fail with EFAULT and add nothing to the stream; a forked child writes a stretch;
 * dup2 puts another connection on the descriptor, whose peer gets the next write, and back;
 * a closed descriptor number reused by a new connection writes to it; a non-blocking socket
 * nobody reads takes writes until EAGAIN (a last one in part) and then its peer reads
 * exactly what they reported; after shutdown(SHUT_WR) a write fails with EPIPE and raises
 * SIGPIPE, and the peer sees the end of the stream; a blocking write nobody reads, cut
 * short by a signal, returns the part that went in. Every blocking write is whole. */
static int writes(void) {
  struct sockaddr_in at;
  int l = listener(&at);
  int a;
  int s = connected(l, &at, &a);
  pid_t reader = fork();
  if (reader == 0) {
    close(s);
    static unsigned char in[8192];
    long got = 0, n;
    while ((n = read(a, in, sizeof in)) > 0) {
      for (long i = 0; i < n; i++) {
        if (in[i] != pattern(got + i)) {
          printf("FAIL the reader: byte %ld out of place\n", got + i);
          _exit(2);
        }
      }
      got += n;
    }
    _exit(got == TOTAL ? 0 : 3);
  }
  close(a);
  signal(SIGPIPE, on_sigpipe);

  long step = 0;
  while (sent < (2L << 20)) {
    give(s, lengths[step++ % 10]);
  }
  bad_buffers(s, 1);
  in_a_child(s, 1);
  while (sent < (8L << 20)) {
    give(s, lengths[step++ % 10]);
  }

  /* Another connection on the descriptor, then the stream again. */
  int saved = dup(s);
  int other_far;
  int other = connected(l, &at, &other_far);
  if (dup2(other, s) != s || write(s, "second", 6) != 6) {
    fail("a write to the other connection", -1);
  }
  expect_text(other_far, "second");
  close(other);
  close(other_far);
  if (dup2(saved, s) != s) {
    fail("dup2 back", -1);
  }
  close(saved);
  while (sent < (12L << 20)) {
    give(s, lengths[step++ % 10]);
  }

  /* Non-blocking and nobody reading: writes until EAGAIN, then the peer reads them all. */
  int far;
  int quiet = connected(l, &at, &far);
  fcntl(quiet, F_SETFL, fcntl(quiet, F_GETFL) | O_NONBLOCK);
  static unsigned char chunk[40000];
  memset(chunk, 'q', sizeof chunk);
  long wrote = 0;
  for (int tries = 0;; tries++) {
    long n = write(quiet, chunk, sizeof chunk);
    if (n < 0) {
      if (errno != EAGAIN || wrote == 0) {
        fail("a write to a full non-blocking socket", n);
      }
      break;
    }
    if (tries > 100000) {
      fail("a non-blocking socket that never fills", wrote);
    }
    wrote += n;
  }
  if (drain_bytes(far, wrote, 'q') != wrote) {
    fail("what the non-blocking writes reported", wrote);
  }
  /* Room again: the next write goes whole, then the write side shuts. */
  fcntl(quiet, F_SETFL, fcntl(quiet, F_GETFL) & ~O_NONBLOCK);
  if (write(quiet, chunk, sizeof chunk) != (long)sizeof chunk ||
      drain_bytes(far, sizeof chunk, 'q') != (long)sizeof chunk) {
    fail("a write after the socket drained", -1);
  }
  if (shutdown(quiet, SHUT_WR)) {
    fail("shutdown", -1);
  }
  /* A pause first, so that Quark's host thread sleeps and the write traps (the reader is
   * alive: a socket call is tried without waiting there, then its handler runs). */
  usleep(5000);
  long r = write(quiet, chunk, sizeof chunk);
  if (r != -1 || errno != EPIPE || sigpipes != 1) {
    fail("a write after SHUT_WR", r);
  }
  if (read(far, chunk, sizeof chunk) != 0) {
    fail("the end after SHUT_WR", -1);
  }
  close(far);
  close(quiet);

  /* A blocking write into a connection nobody reads, cut short by a signal whose handler
   * does not restart calls: it returns what went in, not EINTR. */
  int stuck_far;
  int stuck = connected(l, &at, &stuck_far);
  catch_alarms();
  struct itimerval soon = {{0, 0}, {0, 200000}};
  setitimer(ITIMER_REAL, &soon, NULL);
  /* Mapped here, not static: a 16 MiB bss would count in "many"'s small container's forks. */
  const long big_len = 16L << 20;
  unsigned char *big =
      mmap(NULL, big_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (big == MAP_FAILED) {
    fail("mmap", -1);
  }
  long part = write(stuck, big, big_len);
  if (part <= 0 || part >= big_len || alarms != 1) {
    fail("a blocking write cut short by a signal", part);
  }
  munmap(big, big_len);
  close(stuck_far);
  close(stuck);

  /* A closed descriptor's number, reused by a new connection, writes to that one. */
  while (sent < (16L << 20)) {
    give(s, lengths[step++ % 10]);
  }
  int keep = dup(s);
  close(s);
  int fourth = socket(AF_INET, SOCK_STREAM, 0);
  if (fourth != s || connect(fourth, (struct sockaddr *)&at, sizeof at)) {
    fail("the number reused", fourth);
  }
  int fourth_far = accept(l, NULL, NULL);
  if (write(fourth, "fourth", 6) != 6) {
    fail("a write to the reused number", -1);
  }
  expect_text(fourth_far, "fourth");
  close(fourth_far);
  if (dup2(keep, s) != s) {
    fail("dup2 of the stream", -1);
  }
  close(keep);

  while (sent < TOTAL) {
    give(s, TOTAL - sent < lengths[step % 10] ? TOTAL - sent : lengths[step % 10]);
    step++;
  }
  close(s);
  int status;
  if (waitpid(reader, &status, 0) != reader || !WIFEXITED(status) || WEXITSTATUS(status)) {
    fail("the reader", status);
  }
  printf("fast writes: %ld bytes intact\n", sent);
  return 0;
}

/* One process alone: a blocking read of a socket with nothing to read, and a blocking write
 * into a connection nobody reads, each cut short by alarm(2) with a handler that does not
 * restart calls: the read fails with EINTR, the write returns the part that went in. */
static int alone(void) {
  struct sockaddr_in at;
  int l = listener(&at);
  int far;
  int c = connected(l, &at, &far);
  catch_alarms();
  alarm(1);
  long r = read(c, buf, sizeof buf);
  if (r != -1 || errno != EINTR || alarms != 1) {
    fail("a read cut short by alarm", r);
  }
  const long big_len = 16L << 20;
  unsigned char *big =
      mmap(NULL, big_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  alarm(1);
  r = write(c, big, big_len);
  if (r <= 0 || r >= big_len || alarms != 2) {
    fail("a write cut short by alarm", r);
  }
  close(far);
  printf("alone: interrupted as on Linux\n");
  return 0;
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "many") == 0) {
    return many();
  }
  if (argc > 1 && strcmp(argv[1], "alone") == 0) {
    return alone();
  }
  if (argc > 1 && strcmp(argv[1], "writes") == 0) {
    return writes();
  }
  struct sockaddr_in at;
  int l = listener(&at);
  int a;
  int s = connected(l, &at, &a);
  pid_t writer = fork();
  if (writer == 0) {
    close(s);
    static unsigned char out[1 << 16];
    for (long sent = 0; sent < TOTAL;) {
      long n = TOTAL - sent < (long)sizeof out ? TOTAL - sent : (long)sizeof out;
      for (long i = 0; i < n; i++) {
        out[i] = pattern(sent + i);
      }
      long w = write(a, out, n);
      if (w <= 0) {
        _exit(1);
      }
      sent += w;
    }
    close(a);
    _exit(0);
  }
  close(a);

  long step = 0;
  while (received < (2L << 20)) {
    take(s, lengths[step++ % 10]);
  }
  bad_buffers(s, 0);
  in_a_child(s, 0);
  while (received < (8L << 20)) {
    take(s, lengths[step++ % 10]);
  }

  /* Another connection on the descriptor, then the stream again. */
  int saved = dup(s);
  int other = sender_of(l, &at, "second");
  if (dup2(other, s) != s) {
    fail("dup2", -1);
  }
  expect_text(s, "second");
  if (read(s, buf, 10) != 0) {
    fail("the end of the other connection", -1);
  }
  close(other);
  if (dup2(saved, s) != s) {
    fail("dup2 back", -1);
  }
  close(saved);
  while (received < (12L << 20)) {
    take(s, lengths[step++ % 10]);
  }

  /* Non-blocking: a drained socket says EAGAIN, then reads what comes. */
  int far;
  int quiet = connected(l, &at, &far);
  static unsigned char chunk[32 << 10];
  memset(chunk, 'q', sizeof chunk);
  for (int round = 0; round < 3; round++) {
    if (write(far, chunk, sizeof chunk) != (long)sizeof chunk) {
      fail("a write to the quiet socket", -1);
    }
    long got = 0;
    while (got < (long)sizeof chunk) {
      struct pollfd in = {quiet, POLLIN, 0};
      if (round > 0 && poll(&in, 1, 5000) != 1) {
        fail("a poll of the quiet socket", -1);
      }
      long n = read(quiet, buf, sizeof buf);
      if (n <= 0) {
        fail("a read of the quiet socket", n);
      }
      for (long i = 0; i < n; i++) {
        if (buf[i] != 'q') {
          fail("a byte of the quiet socket", got + i);
        }
      }
      got += n;
    }
    if (round == 0) {
      fcntl(quiet, F_SETFL, fcntl(quiet, F_GETFL) | O_NONBLOCK);
    }
    if (round > 0) {
      long n = read(quiet, buf, sizeof buf);
      if (n != -1 || errno != EAGAIN) {
        fail("a read of a drained non-blocking socket", n);
      }
    }
  }
  close(far);
  close(quiet);

  /* A closed descriptor's number, reused by a new connection, reads that one. */
  while (received < (16L << 20)) {
    take(s, lengths[step++ % 10]);
  }
  int keep = dup(s);
  close(s);
  int fourth = sender_of(l, &at, "fourth");
  if (fourth != s) {
    fail("the number reused", fourth);
  }
  expect_text(fourth, "fourth");
  if (dup2(keep, s) != s) {
    fail("dup2 of the stream", -1);
  }
  close(keep);

  while (received < TOTAL) {
    take(s, lengths[step++ % 10]);
  }
  long end = read(s, buf, sizeof buf);
  if (end != 0) {
    fail("the end of the stream", end);
  }
  int status;
  if (waitpid(writer, &status, 0) != writer || !WIFEXITED(status) || WEXITSTATUS(status)) {
    fail("the writer", status);
  }
  printf("fast reads: %ld bytes intact\n", received);
  return 0;
}
