/* signalfd as container inits (catatonit) and event loops use it: blocked signals read as
 * signalfd_siginfo records (several in one read, with sender, status, code), EAGAIN when none
 * is pending on a non-blocking one, a blocking read woken by another process's kill, readiness
 * in poll, select and epoll (a child's exit wakes an epoll_wait), a new mask for an existing
 * descriptor, a second thread blocked in a read taking a process-directed signal, a timer's
 * signal, and the errors. Prints "signalfd: ok"; exits 1 at the first failure. */
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
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void fail(const char *what, long got) {
  printf("FAIL %s (got %ld, errno %d)\n", what, got, errno);
  exit(1);
}

static void want(const char *what, long got, long wanted) {
  if (got != wanted) {
    printf("FAIL %s: %ld, wanted %ld\n", what, got, wanted);
    exit(1);
  }
}

static int readable(int fd, int ms) {
  struct pollfd p = {.fd = fd, .events = POLLIN};
  return poll(&p, 1, ms) == 1 && (p.revents & POLLIN);
}

static void *blocked_reader(void *arg) {
  int fd = *(int *)arg;
  struct signalfd_siginfo si;
  long n = read(fd, &si, sizeof si);
  return (void *)(n == sizeof si ? (long)si.ssi_signo : -1);
}

int main(void) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGUSR1);
  sigaddset(&set, SIGUSR2);
  sigaddset(&set, SIGCHLD);
  sigaddset(&set, SIGALRM);
  sigprocmask(SIG_BLOCK, &set, NULL);

  int fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
  if (fd < 0) {
    fail("signalfd", fd);
  }
  struct signalfd_siginfo si[4];
  errno = 0;
  want("a read with none pending", read(fd, si, sizeof si), -1);
  want("EAGAIN", errno, EAGAIN);
  want("not readable", readable(fd, 0), 0);
  errno = 0;
  want("a buffer under one record", read(fd, si, 100), -1);
  want("EINVAL", errno, EINVAL);

  kill(getpid(), SIGUSR2);
  kill(getpid(), SIGUSR1);
  want("readable in poll", readable(fd, 0), 1);
  fd_set rd;
  FD_ZERO(&rd);
  FD_SET(fd, &rd);
  struct timeval zero = {0, 0};
  want("readable in select", select(fd + 1, &rd, NULL, NULL, &zero), 1);
  want("two records in one read", read(fd, si, sizeof si), 2 * sizeof si[0]);
  want("the lower first", si[0].ssi_signo, SIGUSR1);
  want("then the other", si[1].ssi_signo, SIGUSR2);
  want("the sender", si[0].ssi_pid, getpid());
  want("SI_USER", si[0].ssi_code, SI_USER);
  want("taken", readable(fd, 0), 0);

  /* A child's exit wakes an epoll_wait on the descriptor. */
  int ep = epoll_create1(0);
  struct epoll_event ev = {.events = EPOLLIN, .data.u32 = 77};
  epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
  pid_t child = fork();
  if (child == 0) {
    usleep(50000);
    _exit(7);
  }
  struct epoll_event got;
  want("epoll_wait woken by SIGCHLD", epoll_wait(ep, &got, 1, 5000), 1);
  want("its data", got.data.u32, 77);
  want("reading SIGCHLD", read(fd, si, sizeof si), sizeof si[0]);
  want("SIGCHLD", si[0].ssi_signo, SIGCHLD);
  want("from the child", si[0].ssi_pid, child);
  want("CLD_EXITED", si[0].ssi_code, CLD_EXITED);
  want("its status", si[0].ssi_status, 7);
  int status;
  want("reaped", waitpid(child, &status, 0), child);

  /* A blocking read waits for another process's kill. */
  int blocking = signalfd(-1, &set, 0);
  pid_t parent = getpid();
  child = fork();
  if (child == 0) {
    usleep(100000);
    kill(parent, SIGUSR1);
    _exit(0);
  }
  want("a blocking read", read(blocking, si, sizeof si[0]), sizeof si[0]);
  want("SIGUSR1 from the child", si[0].ssi_signo, SIGUSR1);
  want("its sender", si[0].ssi_pid, child);
  waitpid(child, &status, 0);
  while (read(fd, si, sizeof si) > 0) {
  } /* the SIGCHLD of that child */

  /* A new mask for the same descriptor. */
  sigset_t only2;
  sigemptyset(&only2);
  sigaddset(&only2, SIGUSR2);
  want("a new mask", signalfd(fd, &only2, 0), fd);
  raise(SIGUSR1);
  want("a signal outside the mask", readable(fd, 0), 0);
  sigset_t one;
  sigemptyset(&one);
  sigaddset(&one, SIGUSR1);
  struct timespec none = {0, 0};
  want("still pending for sigtimedwait", sigtimedwait(&one, NULL, &none), SIGUSR1);
  signalfd(fd, &set, 0);

  /* A thread blocked in a read takes a signal sent to the process. */
  pthread_t t;
  pthread_create(&t, NULL, blocked_reader, &blocking);
  usleep(50000);
  kill(getpid(), SIGUSR2);
  void *res;
  pthread_join(t, &res);
  want("the thread read SIGUSR2", (long)res, SIGUSR2);

  /* A timer's signal. */
  timer_t timer;
  struct sigevent sev = {.sigev_notify = SIGEV_SIGNAL, .sigev_signo = SIGALRM};
  if (timer_create(CLOCK_MONOTONIC, &sev, &timer) != 0) {
    fail("timer_create", -1);
  }
  struct itimerspec its = {.it_value = {0, 30000000}};
  timer_settime(timer, 0, &its, NULL);
  want("readable at the expiry", readable(fd, 5000), 1);
  want("reading SIGALRM", read(fd, si, sizeof si), sizeof si[0]);
  want("SIGALRM", si[0].ssi_signo, SIGALRM);
  want("SI_TIMER", si[0].ssi_code, SI_TIMER);

  errno = 0;
  want("a mask size of 4", syscall(289, -1, &set, 4, 0), -1);
  want("EINVAL", errno, EINVAL);
  errno = 0;
  want("a descriptor that is no signalfd", signalfd(ep, &set, 0), -1);
  want("EINVAL", errno, EINVAL);
  errno = 0;
  want("a bad mask", signalfd(-1, (sigset_t *)8, 0), -1);
  want("EFAULT", errno, EFAULT);
  errno = 0;
  want("unknown flags", signalfd(-1, &set, 1), -1);
  want("EINVAL", errno, EINVAL);
  printf("signalfd: ok\n");
  return 0;
}
