/* The signal masks of ppoll, pselect6, epoll_pwait and epoll_pwait2: for the length of the
 * call the thread's mask is the one given, atomically, and the old one comes back after it.
 * For each call:
 *   - a signal the caller blocks, unblocked by the call's mask, interrupts the wait (EINTR,
 *     the handler ran inside the call) and is blocked again afterwards;
 *   - the same signal already pending when the call starts ends it at once;
 *   - a signal the call's mask blocks does not interrupt it (the wait times out) and runs
 *     its handler right after the call, when the caller's mask lets it through;
 *   - a mask of the wrong size is EINVAL and a bad mask pointer EFAULT.
 * With the argument "threaded" a second thread (blocking every signal) waits meanwhile, so
 * the calls wait parked beside it instead of alone. Prints one line a call; exits 1 at the
 * first failure. */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t usr1s, alarms;

static void on_usr1(int sig) {
  (void)sig;
  usr1s++;
}

static void fail(const char *call, const char *what, long r) {
  printf("FAIL %s: %s (returned %ld, errno %d)\n", call, what, r, errno);
  exit(1);
}

static int blocked(int sig) {
  sigset_t now;
  sigprocmask(SIG_SETMASK, NULL, &now);
  return sigismember(&now, sig);
}

/* An ITIMER_REAL shot in `ms`: its SIGALRM, never blocked by the caller here, comes during
 * the wait; its handler raises SIGUSR1 when the test wants a blocked signal to arrive then. */
static void arm(int ms) {
  struct itimerval it = {{0, 0}, {ms / 1000, (ms % 1000) * 1000}};
  if (setitimer(ITIMER_REAL, &it, NULL) != 0) {
    fail("setitimer", "arming", -1);
  }
}

static volatile sig_atomic_t raise_usr1_on_alarm;

static void on_alarm_raising(int sig) {
  (void)sig;
  alarms++;
  if (raise_usr1_on_alarm) {
    kill(getpid(), SIGUSR1);
  }
}

enum call { PPOLL, PSELECT, EPOLL_PWAIT, EPOLL_PWAIT2 };
static const char *names[] = {"ppoll", "pselect6", "epoll_pwait", "epoll_pwait2"};

static int pipe_rd, epfd;

/* One wait of `which` on an empty pipe for `ms`, with `mask` (NULL: none) of `size` bytes. */
static long wait_with(enum call which, int ms, const sigset_t *mask, size_t size) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  switch (which) {
  case PPOLL: {
    struct pollfd p = {pipe_rd, POLLIN, 0};
    return syscall(SYS_ppoll, &p, 1, &ts, mask, size);
  }
  case PSELECT: {
    fd_set set;
    FD_ZERO(&set);
    FD_SET(pipe_rd, &set);
    struct {
      const sigset_t *ss;
      size_t len;
    } arg = {mask, size};
    return syscall(SYS_pselect6, pipe_rd + 1, &set, NULL, NULL, &ts, &arg);
  }
  case EPOLL_PWAIT: {
    struct epoll_event ev;
    return syscall(SYS_epoll_pwait, epfd, &ev, 1, ms, mask, size);
  }
  case EPOLL_PWAIT2: {
    struct epoll_event ev;
    return syscall(SYS_epoll_pwait2, epfd, &ev, 1, &ts, mask, size);
  }
  }
  return -1;
}

static void check(enum call which) {
  const char *name = names[which];
  sigset_t usr1, none, with_alarm;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  sigemptyset(&none);
  sigemptyset(&with_alarm);
  sigaddset(&with_alarm, SIGALRM);
  sigprocmask(SIG_SETMASK, &usr1, NULL);

  /* A blocked signal that the call's mask lets through interrupts it. */
  usr1s = 0;
  raise_usr1_on_alarm = 1;
  arm(30);
  long r = wait_with(which, 2000, &none, 8);
  if (r != -1 || errno != EINTR) {
    fail(name, "the signal its mask unblocks did not interrupt it", r);
  }
  /* The alarm's handler raised SIGUSR1 while the call's mask let it through: it ran. */
  if (usr1s != 1) {
    fail(name, "SIGUSR1's handler did not run in the call", usr1s);
  }
  if (!blocked(SIGUSR1)) {
    fail(name, "the caller's mask did not come back", 0);
  }

  /* Pending before the call: it ends at once. */
  usr1s = 0;
  raise_usr1_on_alarm = 0;
  kill(getpid(), SIGUSR1);
  if (usr1s != 0) {
    fail(name, "a blocked signal ran", usr1s);
  }
  r = wait_with(which, 2000, &none, 8);
  if (r != -1 || errno != EINTR || usr1s != 1) {
    fail(name, "a pending signal its mask unblocks did not end it at once", r);
  }
  if (!blocked(SIGUSR1)) {
    fail(name, "the caller's mask did not come back after a pending signal", 0);
  }

  /* The call's mask blocks SIGALRM: the wait runs its course; the handler runs after. */
  sigprocmask(SIG_SETMASK, &none, NULL);
  alarms = 0;
  arm(20);
  r = wait_with(which, 120, &with_alarm, 8);
  if (r != 0) {
    fail(name, "a signal its mask blocks ended the wait", r);
  }
  if (alarms != 1) {
    fail(name, "the signal its mask held back did not run after the call", alarms);
  }

  /* Bad masks. */
  r = wait_with(which, 0, &none, 4);
  if (r != -1 || errno != EINVAL) {
    fail(name, "a 4-byte mask was not EINVAL", r);
  }
  r = wait_with(which, 0, (const sigset_t *)8, 8);
  if (r != -1 || errno != EFAULT) {
    fail(name, "a bad mask pointer was not EFAULT", r);
  }
  /* No mask: the thread's own applies, as for poll. */
  r = wait_with(which, 10, NULL, 8);
  if (r != 0) {
    fail(name, "without a mask it did not time out", r);
  }
  printf("%s: ok\n", name);
}

static int idle_pipe[2];

/* The second thread: waits on a pipe nobody writes until the process exits. */
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
    sigset_t all, old;
    sigfillset(&all);
    pthread_t t;
    pthread_sigmask(SIG_SETMASK, &all, &old);
    if (pipe(idle_pipe) != 0 || pthread_create(&t, NULL, idle, NULL) != 0) {
      fail("pthread_create", "starting the second thread", -1);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_usr1;
  sigaction(SIGUSR1, &sa, NULL);
  sa.sa_handler = on_alarm_raising;
  sigaction(SIGALRM, &sa, NULL);
  int p[2];
  if (pipe(p) != 0) {
    fail("pipe", "creating", -1);
  }
  pipe_rd = p[0];
  epfd = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.fd = pipe_rd};
  if (epfd < 0 || epoll_ctl(epfd, EPOLL_CTL_ADD, pipe_rd, &ev) != 0) {
    fail("epoll", "setting up", -1);
  }
  for (int which = PPOLL; which <= EPOLL_PWAIT2; which++) {
    check(which);
  }
  return 0;
}
