/* sendfile, copy_file_range and fallocate as Linux has them: a 3 MiB file sent whole over a
 * TCP connection (127.0.0.1) to a reader in another process (the sender waits on a full
 * socket), through a pipe with and without an offset pointer (the file position moves only
 * without one), to a non-blocking socket nobody reads (EAGAIN once full), to a connection
 * nobody reads any more (EPIPE with SIGPIPE ignored); the errors (a socket as input, a
 * write-only input, a negative offset, an O_APPEND output); copy_file_range between two files
 * and within one (overlap: EINVAL); fallocate growing a file or not, punching a hole that a
 * shared mapping then reads as zeros, zeroing a range, and its errors. Prints "sendfile: ok";
 * exits 1 at the first failure with what failed. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define BIG (3 << 20)

static void fail(const char *what, long r) {
  printf("FAIL %s (returned %ld, errno %d)\n", what, r, errno);
  exit(1);
}

static void expect(const char *what, long r, long want, int err) {
  if (r != want || (want < 0 && errno != err)) {
    printf("FAIL %s: returned %ld errno %d, wanted %ld errno %d\n", what, r, errno, want, err);
    exit(1);
  }
}

static unsigned char pattern(long i) { return (unsigned char)(i * 7 + (i >> 12)); }

/* A file of `len` pattern bytes at `path`, open read-write. */
static int pattern_file(const char *path, long len) {
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) {
    fail("creating a file", fd);
  }
  static unsigned char buf[1 << 16];
  for (long at = 0; at < len;) {
    long n = len - at < (long)sizeof buf ? len - at : (long)sizeof buf;
    for (long i = 0; i < n; i++) {
      buf[i] = pattern(at + i);
    }
    if (write(fd, buf, n) != n) {
      fail("writing a file", -1);
    }
    at += n;
  }
  return fd;
}

static void connected_pair(int *client, int *server) {
  int l = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof a;
  if (l < 0 || bind(l, (void *)&a, sizeof a) != 0 || listen(l, 1) != 0 ||
      getsockname(l, (void *)&a, &al) != 0) {
    fail("listening", -1);
  }
  *client = socket(AF_INET, SOCK_STREAM, 0);
  if (*client < 0 || connect(*client, (void *)&a, sizeof a) != 0) {
    fail("connecting", -1);
  }
  *server = accept(l, NULL, NULL);
  if (*server < 0) {
    fail("accepting", *server);
  }
  close(l);
}

/* The whole file over TCP to a reader in a child, which checks every byte. */
static void whole_file_over_tcp(int fd) {
  int c, s;
  connected_pair(&c, &s);
  pid_t child = fork();
  if (child == 0) {
    close(s);
    static unsigned char buf[1 << 16];
    long got = 0;
    for (;;) {
      long n = read(c, buf, sizeof buf);
      if (n < 0) {
        fail("the reader's read", n);
      }
      if (n == 0) {
        break;
      }
      for (long i = 0; i < n; i++) {
        if (buf[i] != pattern(got + i)) {
          printf("FAIL byte %ld is %d\n", got + i, buf[i]);
          _exit(1);
        }
      }
      got += n;
    }
    _exit(got == BIG ? 0 : 2);
  }
  close(c);
  if (lseek(fd, 0, SEEK_SET) != 0) {
    fail("rewinding", -1);
  }
  long sent = 0;
  while (sent < BIG) {
    long n = sendfile(s, fd, NULL, BIG - sent);
    if (n <= 0) {
      fail("sendfile to a socket", n);
    }
    sent += n;
  }
  expect("the file position after sending it all", lseek(fd, 0, SEEK_CUR), BIG, 0);
  expect("sendfile at the end of the file", sendfile(s, fd, NULL, 100), 0, 0);
  close(s);
  int status;
  if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    fail("the reader got other bytes", status);
  }
}

static void through_a_pipe(int fd) {
  int p[2];
  if (pipe(p) != 0) {
    fail("pipe", -1);
  }
  unsigned char buf[300];
  lseek(fd, 1000, SEEK_SET);
  expect("sendfile at the position", sendfile(p[1], fd, NULL, 100), 100, 0);
  expect("the position moved", lseek(fd, 0, SEEK_CUR), 1100, 0);
  off_t off = 5000;
  expect("sendfile at an offset", sendfile(p[1], fd, &off, 200), 200, 0);
  expect("the offset moved", off, 5200, 0);
  expect("the position did not", lseek(fd, 0, SEEK_CUR), 1100, 0);
  expect("reading the pipe", read(p[0], buf, sizeof buf), 300, 0);
  for (int i = 0; i < 300; i++) {
    if (buf[i] != pattern(i < 100 ? 1000 + i : 5000 + i - 100)) {
      fail("the pipe's bytes", i);
    }
  }
  expect("sendfile of nothing", sendfile(p[1], fd, NULL, 0), 0, 0);
  off = -1;
  expect("a negative offset", sendfile(p[1], fd, &off, 10), -1, EINVAL);
  expect("a bad offset pointer", sendfile(p[1], fd, (off_t *)8, 10), -1, EFAULT);
  expect("a pipe as input", sendfile(p[1], p[0], NULL, 10), -1, EINVAL);
  expect("a closed output", sendfile(999, fd, NULL, 10), -1, EBADF);
  int wo = open("/tmp/sendfile-src", O_WRONLY);
  expect("a write-only input", sendfile(p[1], wo, NULL, 10), -1, EBADF);
  close(wo);
  int app = open("/tmp/sendfile-app", O_WRONLY | O_CREAT | O_APPEND, 0644);
  expect("an O_APPEND file as output", sendfile(app, fd, NULL, 10), -1, EINVAL);
  close(app);
  close(p[0]);
  close(p[1]);
}

static void sockets_that_do_not_take_it(int fd) {
  int c, s;
  connected_pair(&c, &s);
  expect("a socket as input", sendfile(c, s, NULL, 10), -1, EINVAL);
  fcntl(s, F_SETFL, O_NONBLOCK);
  off_t off = 0;
  long total = 0, n;
  while ((n = sendfile(s, fd, &off, BIG)) >= 0) {
    total += n;
    if (n == 0) {
      off = 0; /* the file again: the socket takes more than one */
    }
    if (total > 64L << 20) {
      fail("a socket nobody reads took it all", total);
    }
  }
  expect("sendfile to a full non-blocking socket", n, -1, EAGAIN);
  expect("the offset counts what was sent", off, total % BIG, 0);
  close(c);
  close(s);

  connected_pair(&c, &s);
  shutdown(c, SHUT_WR);
  signal(SIGPIPE, SIG_IGN);
  off = 0;
  expect("sendfile to a connection shut for writing", sendfile(c, fd, &off, 10), -1, EPIPE);
  signal(SIGPIPE, SIG_DFL);
  close(c);
  close(s);
}

static void copy_ranges(int src) {
  int dst = open("/tmp/sendfile-dst", O_RDWR | O_CREAT | O_TRUNC, 0644);
  loff_t in = 100, out = 10;
  expect("copy_file_range at offsets", copy_file_range(src, &in, dst, &out, 70000, 0), 70000, 0);
  expect("the input offset moved", in, 70100, 0);
  expect("the output offset moved", out, 70010, 0);
  unsigned char buf[16];
  expect("reading the copy", pread(dst, buf, 16, 10 + 65536), 16, 0);
  for (int i = 0; i < 16; i++) {
    if (buf[i] != pattern(100 + 65536 + i)) {
      fail("the copied bytes", i);
    }
  }
  lseek(src, 7, SEEK_SET);
  lseek(dst, 0, SEEK_SET);
  expect("copy_file_range at the positions", copy_file_range(src, NULL, dst, NULL, 5, 0), 5, 0);
  expect("the input position moved", lseek(src, 0, SEEK_CUR), 12, 0);
  expect("the output position moved", lseek(dst, 0, SEEK_CUR), 5, 0);
  in = 0;
  out = 100;
  expect("overlapping ranges of one file", copy_file_range(dst, &in, dst, &out, 200, 0), -1,
         EINVAL);
  out = 300;
  expect("ranges of one file apart", copy_file_range(dst, &in, dst, &out, 200, 0), 200, 0);
  expect("flags", copy_file_range(src, NULL, dst, NULL, 5, 1), -1, EINVAL);
  int p[2];
  pipe(p);
  expect("a pipe", copy_file_range(src, NULL, p[1], NULL, 5, 0), -1, EINVAL);
  int app = open("/tmp/sendfile-app", O_WRONLY | O_APPEND);
  expect("an O_APPEND output", copy_file_range(src, NULL, app, NULL, 5, 0), -1, EBADF);
  in = BIG - 3;
  expect("copy_file_range near the end", copy_file_range(src, &in, dst, NULL, 100, 0), 3, 0);
  close(app);
  close(p[0]);
  close(p[1]);
  close(dst);
}

static long size_of(int fd) {
  struct stat st;
  fstat(fd, &st);
  return st.st_size;
}

static void allocate(void) {
  int fd = pattern_file("/tmp/sendfile-alloc", 3 * 4096);
  expect("fallocate beyond the end", fallocate(fd, 0, 8192, 16384), 0, 0);
  expect("it grew the file", size_of(fd), 8192 + 16384, 0);
  expect("fallocate keeping the size", fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, 1 << 20), 0, 0);
  expect("the size was kept", size_of(fd), 8192 + 16384, 0);
  unsigned char *map = mmap(NULL, 3 * 4096, PROT_READ, MAP_SHARED, fd, 0);
  if (map == MAP_FAILED) {
    fail("mapping the file", -1);
  }
  expect("punching a hole",
         fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4096 + 100, 5000), 0, 0);
  unsigned char buf[6000];
  expect("reading over the hole", pread(fd, buf, sizeof buf, 4096), sizeof buf, 0);
  for (int i = 0; i < (int)sizeof buf; i++) {
    int hole = i >= 100 && i < 5100;
    if (buf[i] != (hole ? 0 : pattern(4096 + i))) {
      fail("the bytes around the hole", i);
    }
    if (map[4096 + i] != buf[i]) {
      fail("the shared mapping over the hole", i);
    }
  }
  expect("the hole kept the size", size_of(fd), 8192 + 16384, 0);
  expect("a hole without keeping the size", fallocate(fd, FALLOC_FL_PUNCH_HOLE, 0, 10), -1,
         EOPNOTSUPP);
  long z = fallocate(fd, FALLOC_FL_ZERO_RANGE, 10, 20);
  if (z == 0) {
    expect("reading the zeroed range", pread(fd, buf, 40, 0), 40, 0);
    for (int i = 0; i < 40; i++) {
      if (buf[i] != (i >= 10 && i < 30 ? 0 : pattern(i)) || map[i] != buf[i]) {
        fail("the zeroed range", i);
      }
    }
  } else if (errno != EOPNOTSUPP) { /* a file system that cannot says so */
    fail("zeroing a range", z);
  }
  /* Shifting data is a file system's choice (qkernel: EOPNOTSUPP, its shared pages would not
   * follow); where it is done, the file is a page shorter. */
  long before = size_of(fd);
  long c = fallocate(fd, FALLOC_FL_COLLAPSE_RANGE, 0, 4096);
  if (c == 0 ? size_of(fd) != before - 4096 : errno != EOPNOTSUPP) {
    fail("collapsing a range", c);
  }
  expect("a length of zero", fallocate(fd, 0, 0, 0), -1, EINVAL);
  expect("a negative offset", fallocate(fd, 0, -1, 10), -1, EINVAL);
  int ro = open("/tmp/sendfile-alloc", O_RDONLY);
  expect("a read-only descriptor", fallocate(ro, 0, 0, 10), -1, EBADF);
  int p[2];
  pipe(p);
  expect("a pipe", fallocate(p[1], 0, 0, 10), -1, ESPIPE);
  munmap(map, 3 * 4096);
  close(ro);
  close(p[0]);
  close(p[1]);
  close(fd);
}

int main(void) {
  int fd = pattern_file("/tmp/sendfile-src", BIG);
  whole_file_over_tcp(fd);
  through_a_pipe(fd);
  sockets_that_do_not_take_it(fd);
  copy_ranges(fd);
  allocate();
  close(fd);
  printf("sendfile: ok\n");
  return 0;
}
