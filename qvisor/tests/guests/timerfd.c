/* timerfd: creating (bad clocks and flags refused), arming relative and absolute (on
 * CLOCK_REALTIME), one-shot and periodic, reading the count (EAGAIN while none, a blocking
 * read waits for the next expiry), gettime, poll and epoll waking at the expiry, a read with a
 * short buffer, a write and settime on another descriptor refused. With the argument
 * "threaded" a second thread waits meanwhile, so waits park beside it instead of waiting
 * alone. Prints one line; exits 1 at the first failure. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

static void fail(const char *what, long r) {
  printf("FAIL %s (returned %ld, errno %d)\n", what, r, errno);
  exit(1);
}

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static void arm(int fd, int flags, long first_ns, long interval_ns) {
  struct itimerspec it = {{interval_ns / 1000000000L, interval_ns % 1000000000L},
                          {first_ns / 1000000000L, first_ns % 1000000000L}};
  if (timerfd_settime(fd, flags, &it, NULL) != 0) {
    fail("timerfd_settime", -1);
  }
}

static uint64_t take(int fd) {
  uint64_t n = 0;
  long r = read(fd, &n, sizeof n);
  if (r != 8) {
    fail("reading the count", r);
  }
  return n;
}

static int idle_pipe[2];

static void *idle(void *arg) {
  (void)arg;
  char c;
  while (read(idle_pipe[0], &c, 1) != 0) {
  }
  return NULL;
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IONBF, 0);
  if (argc > 1 && strcmp(argv[1], "threaded") == 0) {
    pthread_t t;
    if (pipe(idle_pipe) != 0 || pthread_create(&t, NULL, idle, NULL) != 0) {
      fail("starting the second thread", -1);
    }
  }
  /* Refused: an unknown clock, unknown flags; settime on a pipe. */
  long r = timerfd_create(99, 0);
  if (r != -1 || errno != EINVAL) {
    fail("an unknown clock", r);
  }
  r = timerfd_create(CLOCK_MONOTONIC, 0x1);
  if (r != -1 || errno != EINVAL) {
    fail("unknown flags", r);
  }
  int p[2];
  struct itimerspec zero = {{0, 0}, {0, 0}}, cur;
  if (pipe(p) != 0) {
    fail("pipe", -1);
  }
  r = timerfd_settime(p[0], 0, &zero, NULL);
  if (r != -1 || errno != EINVAL) {
    fail("settime on a pipe", r);
  }

  int fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (fd < 0) {
    fail("timerfd_create", fd);
  }
  uint64_t n;
  r = read(fd, &n, sizeof n);
  if (r != -1 || errno != EAGAIN) {
    fail("a read of a disarmed timer", r);
  }
  r = read(fd, &n, 4);
  if (r != -1 || errno != EINVAL) {
    fail("a read into 4 bytes", r);
  }
  r = write(fd, &n, sizeof n);
  if (r != -1 || errno != EINVAL) {
    fail("a write", r);
  }
  if (timerfd_gettime(fd, &cur) != 0 || cur.it_value.tv_sec || cur.it_value.tv_nsec) {
    fail("gettime of a disarmed timer", -1);
  }

  /* One shot in 50 ms: poll wakes then, one expiry, then nothing. */
  double t0 = now_ms();
  arm(fd, 0, 50000000L, 0);
  if (timerfd_gettime(fd, &cur) != 0 || cur.it_value.tv_sec != 0 ||
      cur.it_value.tv_nsec > 50000000L || cur.it_value.tv_nsec == 0) {
    fail("gettime of an armed timer", -1);
  }
  struct pollfd pf = {fd, POLLIN, 0};
  r = poll(&pf, 1, 2000);
  double took = now_ms() - t0;
  if (r != 1 || !(pf.revents & POLLIN) || took < 49 || took > 1000) {
    fail("poll on a one-shot timer", (long)took);
  }
  if (take(fd) != 1) {
    fail("one expiry", -1);
  }
  r = read(fd, &n, sizeof n);
  if (r != -1 || errno != EAGAIN) {
    fail("a spent one-shot timer", r);
  }

  /* Periodic, 10 ms: about five expiries in 55 ms, counted while nobody looked. */
  arm(fd, 0, 10000000L, 10000000L);
  struct timespec nap = {0, 55000000L};
  nanosleep(&nap, NULL);
  n = take(fd);
  if (n < 4 || n > 7) {
    fail("expiries counted while asleep", (long)n);
  }
  if (timerfd_gettime(fd, &cur) != 0 || cur.it_interval.tv_nsec != 10000000L) {
    fail("gettime's interval", -1);
  }

  /* A blocking read waits for the next expiry. */
  fcntl(fd, F_SETFL, 0);
  arm(fd, 0, 30000000L, 0);
  t0 = now_ms();
  n = take(fd);
  took = now_ms() - t0;
  if (n != 1 || took < 29 || took > 1000) {
    fail("a blocking read", (long)took);
  }

  /* epoll, and an absolute time on CLOCK_REALTIME. */
  int rt = timerfd_create(CLOCK_REALTIME, 0);
  int ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 7};
  if (rt < 0 || ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, rt, &ev) != 0) {
    fail("setting up epoll", -1);
  }
  struct timespec wall;
  clock_gettime(CLOCK_REALTIME, &wall);
  long at = wall.tv_nsec + 40000000L;
  struct itimerspec abs = {{0, 0}, {wall.tv_sec + at / 1000000000L, at % 1000000000L}};
  t0 = now_ms();
  if (timerfd_settime(rt, TFD_TIMER_ABSTIME, &abs, NULL) != 0) {
    fail("an absolute time", -1);
  }
  struct epoll_event got;
  r = epoll_wait(ep, &got, 1, 2000);
  took = now_ms() - t0;
  if (r != 1 || got.data.u64 != 7 || took < 35 || took > 1000) {
    fail("epoll on an absolute timer", (long)took);
  }
  if (take(rt) != 1) {
    fail("the absolute timer's expiry", -1);
  }
  /* Disarmed again, epoll times out. */
  r = epoll_wait(ep, &got, 1, 20);
  if (r != 0) {
    fail("epoll on a spent timer", r);
  }
  printf("timerfd: ok\n");
  return 0;
}
