/* Interval timers: alarm and setitimer (ITIMER_REAL), CPU-time timers (ITIMER_PROF,
 * ITIMER_VIRTUAL, CLOCK_PROCESS_CPUTIME_ID, CLOCK_THREAD_CPUTIME_ID), POSIX timers (timer_create on CLOCK_MONOTONIC and
 * CLOCK_REALTIME, SIGEV_SIGNAL, SIGEV_THREAD_ID, SIGEV_NONE), their
 * signals interrupting pause, a pipe read and a computing loop, the default action killing a
 * process, fork (no timers in the child) and exec (ITIMER_REAL kept). Prints one line a check;
 * exits 1 at the first failure. Run with the argument "sleeper", it just sleeps (the exec
 * check). */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void fail(const char *what) {
  printf("FAIL %s (errno %d)\n", what, errno);
  exit(1);
}

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static volatile sig_atomic_t alarms, usr1s, usr1_code, usr1_overrun;
static volatile void *usr1_value;
static volatile pid_t usr1_tid;

static void on_alarm(int sig) {
  (void)sig;
  alarms++;
}

static void on_usr1(int sig, siginfo_t *si, void *uc) {
  (void)sig;
  (void)uc;
  usr1s++;
  usr1_code = si->si_code;
  usr1_value = si->si_value.sival_ptr;
  usr1_overrun = si->si_overrun;
  usr1_tid = (pid_t)syscall(SYS_gettid);
}

static void handle(int sig, void (*h)(int)) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = h;
  if (sigaction(sig, &sa, NULL) != 0) fail("sigaction");
}

static void itimer(long value_us, long interval_us) {
  struct itimerval v = {{interval_us / 1000000, interval_us % 1000000},
                        {value_us / 1000000, value_us % 1000000}};
  if (setitimer(ITIMER_REAL, &v, NULL) != 0) fail("setitimer");
}

static void nap_ms(long ms) {
  struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&t, &t) != 0 && errno == EINTR) {
  }
}

static void check_alarm_and_pause(void) {
  handle(SIGALRM, on_alarm);
  if (alarm(5) != 0) fail("alarm: none pending before");
  unsigned left = alarm(0);
  if (left != 5) fail("alarm: the previous alarm's seconds");
  double t0 = now_s();
  alarms = 0;
  itimer(200000, 0);
  if (pause() != -1 || errno != EINTR) fail("pause: EINTR");
  double took = now_s() - t0;
  if (alarms != 1 || took < 0.18 || took > 1.5) fail("pause: woken by SIGALRM after 200 ms");
  struct itimerval cur;
  if (getitimer(ITIMER_REAL, &cur) != 0 || cur.it_value.tv_sec || cur.it_value.tv_usec)
    fail("getitimer: spent");
  printf("alarm and pause: ok\n");
}

static void check_periodic_while_computing(void) {
  alarms = 0;
  itimer(50000, 50000);
  struct itimerval cur;
  if (getitimer(ITIMER_REAL, &cur) != 0 || cur.it_interval.tv_usec != 50000 ||
      cur.it_value.tv_sec != 0 || cur.it_value.tv_usec <= 0)
    fail("getitimer: armed");
  volatile unsigned long x = 0;
  double end = now_s() + 5;
  while (alarms < 5 && now_s() < end)
    for (int i = 0; i < 10000; i++) x += i;
  itimer(0, 0);
  if (alarms < 5) fail("periodic SIGALRM while computing");
  int before = alarms;
  nap_ms(150);
  if (alarms != before) fail("disarmed: no more signals");
  printf("periodic timer while computing: ok\n");
}

static void check_interrupted_read(void) {
  int p[2];
  if (pipe(p) != 0) fail("pipe");
  itimer(100000, 0);
  char c;
  ssize_t n = read(p[0], &c, 1); /* no SA_RESTART: the read ends */
  if (n != -1 || errno != EINTR) fail("pipe read: EINTR");
  close(p[0]);
  close(p[1]);
  printf("a blocking read interrupted: ok\n");
}

static void check_default_action_and_fork(void) {
  struct itimerval cur;
  itimer(300000, 0);
  pid_t child = fork();
  if (child == 0) {
    if (getitimer(ITIMER_REAL, &cur) != 0 || cur.it_value.tv_sec || cur.it_value.tv_usec)
      _exit(2); /* a fork child has no timers */
    signal(SIGALRM, SIG_DFL);
    itimer(100000, 0);
    for (;;) pause();
  }
  int status;
  if (waitpid(child, &status, 0) != child) fail("waitpid");
  if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGALRM) fail("child killed by SIGALRM");
  itimer(0, 0);
  printf("default action kills, fork child has none: ok\n");
}

static void check_exec_keeps_alarm(const char *self) {
  pid_t child = fork();
  if (child == 0) {
    signal(SIGALRM, SIG_DFL);
    itimer(200000, 0);
    execl(self, self, "sleeper", (char *)NULL);
    _exit(3);
  }
  int status;
  double t0 = now_s();
  if (waitpid(child, &status, 0) != child) fail("waitpid");
  if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGALRM || now_s() - t0 > 1.5)
    fail("ITIMER_REAL kept across exec");
  printf("exec keeps ITIMER_REAL: ok\n");
}

static void check_posix_timers(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_usr1;
  sa.sa_flags = SA_SIGINFO;
  if (sigaction(SIGUSR1, &sa, NULL) != 0) fail("sigaction SIGUSR1");
  static int cookie;
  struct sigevent ev;
  memset(&ev, 0, sizeof ev);
  ev.sigev_notify = SIGEV_SIGNAL;
  ev.sigev_signo = SIGUSR1;
  ev.sigev_value.sival_ptr = &cookie;
  timer_t t;
  if (timer_create(CLOCK_MONOTONIC, &ev, &t) != 0) fail("timer_create");
  struct itimerspec spec = {{0, 20000000}, {0, 20000000}}, got;
  if (timer_settime(t, 0, &spec, NULL) != 0) fail("timer_settime");
  if (timer_gettime(t, &got) != 0 || got.it_interval.tv_nsec != 20000000 ||
      got.it_value.tv_sec != 0 || got.it_value.tv_nsec <= 0)
    fail("timer_gettime");
  usr1s = 0;
  double end = now_s() + 5;
  while (usr1s < 5 && now_s() < end) pause();
  if (usr1s < 5 || usr1_code != SI_TIMER || usr1_value != &cookie)
    fail("SIGEV_SIGNAL: SI_TIMER with the timer's value");
  if (timer_getoverrun(t) < 0) fail("timer_getoverrun");
  if (timer_delete(t) != 0) fail("timer_delete");
  int before = usr1s;
  nap_ms(100);
  if (usr1s != before) fail("deleted: no more signals");
  if (timer_gettime(t, &got) != -1 || errno != EINVAL) fail("a deleted timer is EINVAL");

  /* SIGEV_NONE: counts down, signals nothing. */
  ev.sigev_notify = SIGEV_NONE;
  if (timer_create(CLOCK_MONOTONIC, &ev, &t) != 0) fail("timer_create SIGEV_NONE");
  struct itimerspec once = {{0, 0}, {0, 50000000}};
  timer_settime(t, 0, &once, NULL);
  before = usr1s;
  nap_ms(100);
  if (usr1s != before) fail("SIGEV_NONE signals nothing");
  timer_delete(t);

  /* An absolute CLOCK_REALTIME time. */
  ev.sigev_notify = SIGEV_SIGNAL;
  if (timer_create(CLOCK_REALTIME, &ev, &t) != 0) fail("timer_create CLOCK_REALTIME");
  struct timespec rt;
  clock_gettime(CLOCK_REALTIME, &rt);
  rt.tv_nsec += 100000000;
  if (rt.tv_nsec >= 1000000000) {
    rt.tv_sec++;
    rt.tv_nsec -= 1000000000;
  }
  struct itimerspec abs_spec = {{0, 0}, rt};
  before = usr1s;
  double t0 = now_s();
  if (timer_settime(t, TIMER_ABSTIME, &abs_spec, NULL) != 0) fail("timer_settime ABSTIME");
  while (usr1s == before && now_s() < t0 + 5) pause();
  double took = now_s() - t0;
  if (usr1s == before || took < 0.08 || took > 1.5) fail("TIMER_ABSTIME on CLOCK_REALTIME");
  timer_delete(t);

  /* Expiries while the signal stays blocked and pending queue nothing more: they add to the
   * overrun of the one pending signal, which the handler and timer_getoverrun see. */
  sigset_t usr1, old_mask;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  sigprocmask(SIG_BLOCK, &usr1, &old_mask);
  if (timer_create(CLOCK_MONOTONIC, &ev, &t) != 0) fail("timer_create");
  struct itimerspec every10 = {{0, 10000000}, {0, 10000000}};
  timer_settime(t, 0, &every10, NULL);
  nap_ms(105);
  before = usr1s;
  sigprocmask(SIG_SETMASK, &old_mask, NULL); /* the one pending signal is delivered here */
  int overrun_seen = usr1_overrun, delivered = usr1s - before, getoverrun = timer_getoverrun(t);
  timer_delete(t);
  if (delivered != 1 || overrun_seen < 5 || getoverrun < 5) {
    printf("FAIL overrun: %d delivered, si_overrun %d, timer_getoverrun %d\n", delivered,
           overrun_seen, getoverrun);
    exit(1);
  }

  struct itimerspec bad = {{0, 0}, {0, 1000000000}};
  if (timer_create(CLOCK_MONOTONIC, &ev, &t) != 0) fail("timer_create");
  if (timer_settime(t, 0, &bad, NULL) != -1 || errno != EINVAL) fail("tv_nsec out of range");
  timer_delete(t);
  printf("posix timers: ok\n");
}

static volatile sig_atomic_t profs, vtalrms;
static void on_prof(int sig) {
  (void)sig;
  profs++;
}
static void on_vtalrm(int sig) {
  (void)sig;
  vtalrms++;
}

static double cpu_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

/* Computes until `*counter` reaches `n` or `secs` of CPU time pass. */
static void compute_until(volatile sig_atomic_t *counter, int n, double secs) {
  volatile unsigned long x = 0;
  double end = cpu_s() + secs;
  while (*counter < n && cpu_s() < end)
    for (int i = 0; i < 10000; i++) x += i;
}

static void check_cpu_timers(void) {
  handle(SIGPROF, on_prof);
  handle(SIGVTALRM, on_vtalrm);
  /* ITIMER_PROF every 20 ms of CPU time, while computing. */
  struct itimerval prof = {{0, 20000}, {0, 20000}}, off = {{0, 0}, {0, 0}}, cur;
  if (setitimer(ITIMER_PROF, &prof, NULL) != 0) fail("setitimer ITIMER_PROF");
  if (getitimer(ITIMER_PROF, &cur) != 0 || cur.it_interval.tv_usec != 20000) fail("getitimer PROF");
  double c0 = cpu_s();
  compute_until(&profs, 4, 3.0);
  setitimer(ITIMER_PROF, &off, NULL);
  if (profs < 4 || cpu_s() - c0 < 0.06) fail("SIGPROF every 20 ms of CPU time");
  /* ITIMER_VIRTUAL: sleeping spends no CPU time, so it does not fire; computing does. */
  struct itimerval virt = {{0, 0}, {0, 50000}};
  if (setitimer(ITIMER_VIRTUAL, &virt, NULL) != 0) fail("setitimer ITIMER_VIRTUAL");
  nap_ms(200);
  if (vtalrms != 0) fail("ITIMER_VIRTUAL fired while sleeping");
  compute_until(&vtalrms, 1, 3.0);
  if (vtalrms != 1) fail("ITIMER_VIRTUAL after 50 ms of CPU time");
  /* A POSIX timer on the process's CPU clock. */
  struct sigevent ev;
  memset(&ev, 0, sizeof ev);
  ev.sigev_notify = SIGEV_SIGNAL;
  ev.sigev_signo = SIGPROF;
  timer_t t;
  if (timer_create(CLOCK_PROCESS_CPUTIME_ID, &ev, &t) != 0) fail("timer_create CPU clock");
  struct itimerspec once = {{0, 0}, {0, 30000000}};
  profs = 0;
  timer_settime(t, 0, &once, NULL);
  compute_until(&profs, 1, 3.0);
  if (profs != 1) fail("CLOCK_PROCESS_CPUTIME_ID timer after 30 ms of CPU time");
  timer_delete(t);
  /* The calling thread's CPU clock: sleeping does not count, computing does. */
  if (timer_create(CLOCK_THREAD_CPUTIME_ID, &ev, &t) != 0) fail("timer_create thread clock");
  profs = 0;
  timer_settime(t, 0, &once, NULL);
  nap_ms(100);
  if (profs != 0) fail("a thread CPU-clock timer fired while the thread slept");
  compute_until(&profs, 1, 3.0);
  if (profs != 1) fail("CLOCK_THREAD_CPUTIME_ID timer after 30 ms of CPU time");
  timer_delete(t);
  printf("cpu-time timers: ok\n");
}

static pid_t worker_tid;
static volatile int worker_done;

static void *worker(void *arg) {
  (void)arg;
  worker_tid = (pid_t)syscall(SYS_gettid);
  while (!worker_done) nap_ms(5);
  return NULL;
}

static void check_thread_directed(void) {
  pthread_t th;
  worker_done = 0;
  worker_tid = 0;
  if (pthread_create(&th, NULL, worker, NULL) != 0) fail("pthread_create");
  while (!worker_tid) nap_ms(1);
  struct sigevent ev;
  memset(&ev, 0, sizeof ev);
  ev.sigev_notify = SIGEV_THREAD_ID;
  ev.sigev_signo = SIGUSR1;
  ev._sigev_un._tid = worker_tid;
  timer_t t;
  if (timer_create(CLOCK_MONOTONIC, &ev, &t) != 0) fail("timer_create SIGEV_THREAD_ID");
  struct itimerspec once = {{0, 0}, {0, 30000000}};
  int before = usr1s;
  timer_settime(t, 0, &once, NULL);
  double end = now_s() + 5;
  while (usr1s == before && now_s() < end) nap_ms(5);
  worker_done = 1;
  pthread_join(th, NULL);
  if (usr1s == before || usr1_tid != worker_tid) fail("SIGEV_THREAD_ID: the chosen thread");
  timer_delete(t);
  printf("thread-directed timer: ok\n");
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "sleeper") == 0) {
    sleep(3);
    return 0;
  }
  setvbuf(stdout, NULL, _IONBF, 0);
  check_alarm_and_pause();
  check_periodic_while_computing();
  check_interrupted_read();
  check_default_action_and_fork();
  check_exec_keeps_alarm(argv[0]);
  check_posix_timers();
  check_thread_directed();
  check_cpu_timers();
  return 0;
}
