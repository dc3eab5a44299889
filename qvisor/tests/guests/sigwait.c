/* Blocked signals and sigtimedwait, as container inits (tini, dumb-init) use them: a blocked
 * signal waits whatever its action (SIGTERM without a handler does not kill; SIGCHLD,
 * ignored by default, is not dropped) and sigtimedwait takes it with its siginfo; it times
 * out with EAGAIN; a child's exit wakes a parent waiting for SIGCHLD; a handled signal
 * outside the set interrupts it (EINTR); a pending signal whose action is to terminate kills
 * once unblocked; a set size other than 8 is EINVAL. Prints one line; exits 1 at the first
 * failure. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void fail(const char *what, long r) {
  printf("FAIL %s (returned %ld, errno %d)\n", what, r, errno);
  exit(1);
}

static volatile sig_atomic_t alarms;

static void on_alarm(int sig) {
  (void)sig;
  alarms++;
}

int main(void) {
  setvbuf(stdout, NULL, _IONBF, 0);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGCHLD);
  sigaddset(&set, SIGUSR1);
  sigprocmask(SIG_BLOCK, &set, NULL);
  siginfo_t si;
  struct timespec short_wait = {0, 50000000L};

  /* SIGTERM without a handler, blocked: it waits, and sigtimedwait takes it. */
  kill(getpid(), SIGTERM);
  long r = sigtimedwait(&set, &si, &short_wait);
  if (r != SIGTERM || si.si_signo != SIGTERM || si.si_code != SI_USER || si.si_pid != getpid()) {
    fail("a blocked SIGTERM taken by sigtimedwait", r);
  }

  /* Nothing pending: EAGAIN after the timeout. */
  struct timeval t0, t1;
  gettimeofday(&t0, NULL);
  r = sigtimedwait(&set, &si, &short_wait);
  gettimeofday(&t1, NULL);
  long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_usec - t0.tv_usec) / 1000;
  if (r != -1 || errno != EAGAIN || ms < 45) {
    fail("a timeout", ms);
  }

  /* A child's exit: SIGCHLD (ignored by default, but blocked) wakes the wait. */
  pid_t child = fork();
  if (child == 0) {
    nanosleep(&short_wait, NULL);
    _exit(5);
  }
  r = sigwaitinfo(&set, &si);
  if (r != SIGCHLD || si.si_pid != child || si.si_code != CLD_EXITED || si.si_status != 5) {
    fail("SIGCHLD from a child's exit", r);
  }
  int status;
  if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 5) {
    fail("reaping the child", status);
  }

  /* A handled signal outside the set interrupts the wait. */
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_alarm;
  sigaction(SIGALRM, &sa, NULL);
  struct itimerval it = {{0, 0}, {0, 30000}};
  setitimer(ITIMER_REAL, &it, NULL);
  struct timespec long_wait = {5, 0};
  r = sigtimedwait(&set, &si, &long_wait);
  if (r != -1 || errno != EINTR || alarms != 1) {
    fail("a handled signal interrupting the wait", r);
  }

  /* A set size other than a sigset's 8 bytes. */
  r = syscall(SYS_rt_sigtimedwait, &set, NULL, &short_wait, 4);
  if (r != -1 || errno != EINVAL) {
    fail("a 4-byte set", r);
  }

  /* Pending while blocked, then unblocked with the default action: it kills. */
  child = fork();
  if (child == 0) {
    kill(getpid(), SIGUSR1);
    nanosleep(&short_wait, NULL); /* still alive: blocked */
    sigprocmask(SIG_UNBLOCK, &set, NULL);
    nanosleep(&short_wait, NULL);
    _exit(0);
  }
  if (waitpid(child, &status, 0) != child || !WIFSIGNALED(status) || WTERMSIG(status) != SIGUSR1) {
    fail("a pending SIGUSR1 unblocked", status);
  }
  /* That child's SIGCHLD is still pending here: take it, so nothing is left. */
  r = sigtimedwait(&set, &si, &short_wait);
  if (r != SIGCHLD) {
    fail("the second child's SIGCHLD", r);
  }
  printf("sigwait: ok\n");
  return 0;
}
