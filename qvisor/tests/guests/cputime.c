/* CPU time: a process's clock counts what it computes, not what it sleeps; a reaped child's
 * time reaches the parent (getrusage RUSAGE_CHILDREN, wait4's rusage, times); clock_getres
 * answers; the clocks clock_getcpuclockid and pthread_getcpuclockid name (another process's,
 * a thread's) read what that process or thread computed. Prints one line a check; exits 1 at
 * the first failure. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/times.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void fail(const char *what, double got) {
  printf("FAIL %s (%.3f s)\n", what, got);
  exit(1);
}

static double clock_s(clockid_t c) {
  struct timespec t;
  clock_gettime(c, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

/* Computes for `secs` of wall time. */
static void spin(double secs) {
  double end = clock_s(CLOCK_MONOTONIC) + secs;
  volatile unsigned long x = 0;
  while (clock_s(CLOCK_MONOTONIC) < end)
    for (int i = 0; i < 100000; i++) x += i;
}

static double tv(struct timeval t) { return t.tv_sec + t.tv_usec / 1e6; }

static volatile int worker_stop;

static void *worker(void *arg) {
  (void)arg;
  spin(0.3);
  while (!worker_stop) usleep(1000);
  return NULL;
}

int main(void) {
  double p0 = clock_s(CLOCK_PROCESS_CPUTIME_ID), t0 = clock_s(CLOCK_THREAD_CPUTIME_ID);
  spin(0.3);
  struct timespec nap = {0, 400000000};
  nanosleep(&nap, NULL);
  double p = clock_s(CLOCK_PROCESS_CPUTIME_ID) - p0, t = clock_s(CLOCK_THREAD_CPUTIME_ID) - t0;
  /* 0.3 s of computing, not 0.7 s of wall time (a loaded host may give it less CPU). */
  if (p < 0.1 || p > 0.6) fail("process CPU time", p);
  if (t < 0.1 || t > 0.6) fail("thread CPU time", t);
  struct rusage self;
  getrusage(RUSAGE_SELF, &self);
  double u = tv(self.ru_utime) + tv(self.ru_stime);
  if (u < 0.1 || u > 1.0) fail("getrusage(RUSAGE_SELF)", u);
  struct timespec res;
  if (clock_getres(CLOCK_MONOTONIC, &res) || res.tv_sec || res.tv_nsec != 1) fail("clock_getres", 0);
  if (clock_getres(CLOCK_PROCESS_CPUTIME_ID, &res) || res.tv_sec || res.tv_nsec != 1)
    fail("clock_getres of CPU time", 0);
  if (clock_getres(CLOCK_MONOTONIC_COARSE, &res) || res.tv_sec || res.tv_nsec < 1000 ||
      res.tv_nsec > 10000000)
    fail("clock_getres of a coarse clock", res.tv_nsec / 1e9);
  printf("computing counts, sleeping does not: ok\n");

  pid_t child = fork();
  if (child == 0) {
    spin(0.3);
    _exit(0);
  }
  int status;
  struct rusage of_child;
  if (wait4(child, &status, 0, &of_child) != child) fail("wait4", 0);
  double c = tv(of_child.ru_utime) + tv(of_child.ru_stime);
  if (c < 0.1 || c > 0.6) fail("wait4's rusage", c);
  struct rusage children;
  getrusage(RUSAGE_CHILDREN, &children);
  double cc = tv(children.ru_utime) + tv(children.ru_stime);
  if (cc < 0.1 || cc > 0.6) fail("getrusage(RUSAGE_CHILDREN)", cc);
  struct tms tm;
  if (times(&tm) == (clock_t)-1) fail("times", 0);
  double ticks = sysconf(_SC_CLK_TCK);
  double mine = (tm.tms_utime + tm.tms_stime) / ticks, theirs = (tm.tms_cutime + tm.tms_cstime) / ticks;
  if (mine < 0.1 || mine > 1.0) fail("times: own", mine);
  if (theirs < 0.1 || theirs > 0.6) fail("times: children", theirs);
  printf("a reaped child's time is the parent's: ok\n");

  /* Another process's CPU clock, read while it lives (it computed 0.3 s, then waits). */
  int ready[2];
  if (pipe(ready)) fail("pipe", 0);
  child = fork();
  if (child == 0) {
    spin(0.3);
    if (write(ready[1], "r", 1) != 1) _exit(1);
    pause();
    _exit(0);
  }
  char r;
  if (read(ready[0], &r, 1) != 1) fail("child ready", 0);
  clockid_t cc_id;
  if (clock_getcpuclockid(child, &cc_id)) fail("clock_getcpuclockid(child)", 0);
  double ct = clock_s(cc_id);
  if (ct < 0.1 || ct > 0.6) fail("a child's CPU clock", ct);
  kill(child, SIGKILL);
  waitpid(child, &status, 0);
  clockid_t gone;
  if (clock_getcpuclockid(child, &gone) != ESRCH) fail("a reaped child's clock is ESRCH", 0);
  clockid_t own;
  if (clock_getcpuclockid(getpid(), &own)) fail("clock_getcpuclockid(self)", 0);
  double pc = clock_s(own), pp = clock_s(CLOCK_PROCESS_CPUTIME_ID);
  if (pc < 0.1 || pp - pc > 0.05 || pc - pp > 0.05) fail("own process clock by pid", pc);

  /* A thread's clock: it computed 0.3 s; this thread's own clock by id too. */
  pthread_t th;
  worker_stop = 0;
  if (pthread_create(&th, NULL, worker, NULL)) fail("pthread_create", 0);
  struct timespec nap2 = {0, 500000000};
  nanosleep(&nap2, NULL);
  clockid_t tc;
  if (pthread_getcpuclockid(th, &tc)) fail("pthread_getcpuclockid", 0);
  double wt = clock_s(tc);
  worker_stop = 1;
  pthread_join(th, NULL);
  if (wt < 0.1 || wt > 0.6) fail("a thread's CPU clock", wt);
  clockid_t me;
  if (pthread_getcpuclockid(pthread_self(), &me)) fail("pthread_getcpuclockid(self)", 0);
  double mt = clock_s(me), mt2 = clock_s(CLOCK_THREAD_CPUTIME_ID);
  if (mt2 - mt > 0.05 || mt - mt2 > 0.05) fail("own thread clock by id", mt);
  printf("clocks by process and thread id: ok\n");
  return 0;
}
