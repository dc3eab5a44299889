// The vDSO's time calls: found through AT_SYSINFO_EHDR by the C library, agreeing with the
// syscalls they stand for, never going back, interrupted by signals and faulting like any
// other code. Usage: vdso on|off [spin N]. Prints "vdso ok" when every check passed.
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define CHECK(cond, ...)                                  \
  do {                                                    \
    if (!(cond)) {                                        \
      printf("FAIL line %d: ", __LINE__);                 \
      printf(__VA_ARGS__);                                \
      printf("\n");                                       \
      exit(1);                                            \
    }                                                     \
  } while (0)

static long long ns(struct timespec t) { return t.tv_sec * 1000000000LL + t.tv_nsec; }

static long long sys_clock(clockid_t c) {
  struct timespec t;
  CHECK(syscall(SYS_clock_gettime, c, &t) == 0, "syscall clock %d", c);
  return ns(t);
}

static long long lib_clock(clockid_t c) {
  struct timespec t;
  CHECK(clock_gettime(c, &t) == 0, "clock_gettime %d", c);
  CHECK(t.tv_nsec >= 0 && t.tv_nsec < 1000000000, "tv_nsec %ld", t.tv_nsec);
  return ns(t);
}

static volatile int alarms;
static void on_alarm(int sig) {
  (void)sig;
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);  // reentrant: the interrupted call may be one too
  alarms++;
}

static sigjmp_buf recover;
static void on_segv(int sig) {
  (void)sig;
  siglongjmp(recover, 1);
}

int main(int argc, char **argv) {
  if (argc < 2) return 2;
  int on = !strcmp(argv[1], "on");
  if (argc == 4 && !strcmp(argv[2], "spin")) {
    // Time reads and nothing else: the host counts the exits they cost.
    long n = atol(argv[3]);
    struct timespec t;
    for (long i = 0; i < n; i++) clock_gettime(CLOCK_MONOTONIC, &t);
    printf("spun %ld\n", n);
    return 0;
  }

  CHECK((getauxval(AT_SYSINFO_EHDR) != 0) == on, "AT_SYSINFO_EHDR %lx", getauxval(AT_SYSINFO_EHDR));

  // Each library read lies between the syscalls around it, on both clocks.
  clockid_t clocks[] = {CLOCK_MONOTONIC, CLOCK_REALTIME, CLOCK_BOOTTIME};
  for (int c = 0; c < 3; c++) {
    for (int i = 0; i < 1000; i++) {
      long long a = sys_clock(clocks[c]), v = lib_clock(clocks[c]), b = sys_clock(clocks[c]);
      CHECK(a <= v && v <= b, "clock %d: %lld, %lld, %lld", clocks[c], a, v, b);
    }
  }
  // Coarse clocks may lag by their resolution, never lead.
  long long coarse = lib_clock(CLOCK_MONOTONIC_COARSE), fine = sys_clock(CLOCK_MONOTONIC);
  CHECK(coarse <= fine && fine - coarse < 10000000, "coarse %lld fine %lld", coarse, fine);
  // A million reads never go back (across many of the host's updates of the curve); fewer
  // when each is a syscall.
  long long last = lib_clock(CLOCK_MONOTONIC);
  for (int i = 0; i < (on ? 1000000 : 20000); i++) {
    long long now = lib_clock(CLOCK_MONOTONIC);
    CHECK(now >= last, "went back: %lld after %lld", now, last);
    last = now;
  }

  struct timeval tv;
  struct timezone tz = {7, 7};
  long long a = sys_clock(CLOCK_REALTIME);
  CHECK(gettimeofday(&tv, &tz) == 0, "gettimeofday");
  long long b = sys_clock(CLOCK_REALTIME);
  long long us = tv.tv_sec * 1000000LL + tv.tv_usec;
  CHECK(a / 1000 <= us && us <= b / 1000, "gettimeofday %lld between %lld and %lld", us, a, b);
#ifdef __GLIBC__
  // glibc hands the timezone to the kernel (or the vDSO), which writes UTC; musl ignores it.
  CHECK(tz.tz_minuteswest == 0 && tz.tz_dsttime == 0, "timezone %d %d", tz.tz_minuteswest, tz.tz_dsttime);
#endif
  time_t t1, t0 = sys_clock(CLOCK_REALTIME) / 1000000000, t2 = time(&t1);
  CHECK(t1 == t2 && t2 >= t0 && t2 <= t0 + 1, "time %ld %ld %ld", (long)t0, (long)t1, (long)t2);

  struct timespec res, sres;
  clockid_t res_clocks[] = {CLOCK_MONOTONIC, CLOCK_REALTIME, CLOCK_MONOTONIC_COARSE, CLOCK_PROCESS_CPUTIME_ID};
  for (int c = 0; c < 4; c++) {
    CHECK(clock_getres(res_clocks[c], &res) == 0, "clock_getres %d", res_clocks[c]);
    CHECK(syscall(SYS_clock_getres, res_clocks[c], &sres) == 0, "sys clock_getres");
    CHECK(res.tv_sec == sres.tv_sec && res.tv_nsec == sres.tv_nsec, "clock %d res %ld vs %ld",
          res_clocks[c], res.tv_nsec, sres.tv_nsec);
  }
  CHECK(clock_getres(12345, &res) == -1 && errno == EINVAL, "unknown clock");

  // A CPU-time clock is not the page's: it still answers, and counts what this computes.
  long long cpu0 = lib_clock(CLOCK_PROCESS_CPUTIME_ID);
  volatile unsigned long spin = 0;
  for (long i = 0; i < 50000000; i++) spin += i;
  long long cpu1 = lib_clock(CLOCK_PROCESS_CPUTIME_ID);
  CHECK(cpu1 - cpu0 > 1000000, "cpu time %lld -> %lld", cpu0, cpu1);
  unsigned cpu = 99, node = 99;
  CHECK(syscall(SYS_getcpu, &cpu, &node, NULL) == 0, "getcpu");
  CHECK(sched_getcpu() == (int)cpu, "getcpu %d, the syscall %u", sched_getcpu(), cpu);

  // Signals arrive while the program is inside the time calls, and it carries on.
  signal(SIGALRM, on_alarm);
  struct itimerval it = {{0, 2000}, {0, 2000}};
  CHECK(setitimer(ITIMER_REAL, &it, NULL) == 0, "setitimer");
  long long end = lib_clock(CLOCK_MONOTONIC) + 300000000;
  long reads = 0;
  while (lib_clock(CLOCK_MONOTONIC) < end) reads++;
  struct itimerval stop = {{0, 0}, {0, 0}};
  setitimer(ITIMER_REAL, &stop, NULL);
  CHECK(alarms >= 20, "%d alarms in 300 ms of time reads", alarms);

  // A bad pointer faults inside the vDSO as it would in the app's own code: SIGSEGV to the
  // program's handler. Without a vDSO the syscall says EFAULT.
  signal(SIGSEGV, on_segv);
  if (sigsetjmp(recover, 1) == 0) {
    int r = clock_gettime(CLOCK_MONOTONIC, (struct timespec *)16);
    CHECK(!on && r == -1 && errno == EFAULT, "a bad pointer gave %d (errno %d)", r, errno);
  } else {
    CHECK(on, "SIGSEGV without a vDSO");
  }

  if (on) {
    // The vDSO is the platform's, read-only: a read(2) into it is EFAULT, a store SIGSEGV.
    void *image = (void *)getauxval(AT_SYSINFO_EHDR);
    int p[2];
    CHECK(pipe(p) == 0 && write(p[1], "xy", 2) == 2, "pipe");
    errno = 0;
    CHECK(read(p[0], image, 2) == -1 && errno == EFAULT, "read into the vDSO: errno %d", errno);
    close(p[0]);
    close(p[1]);
    if (sigsetjmp(recover, 1) == 0) {
      *(volatile char *)image = 0;
      CHECK(0, "a store into the vDSO went through");
    }
    CHECK(memcmp(image, "\177ELF", 4) == 0, "the vDSO's image changed");
  }

  FILE *maps = fopen("/proc/self/maps", "r");
  CHECK(maps, "maps");
  char line[512];
  int vdso = 0, vvar = 0;
  while (fgets(line, sizeof line, maps)) {
    vdso |= strstr(line, "[vdso]") != NULL && strstr(line, "r-xp") != NULL;
    vvar |= strstr(line, "[vvar]") != NULL;
  }
  CHECK(vdso == on && vvar == on, "maps: vdso %d vvar %d", vdso, vvar);
  printf("vdso ok (%d alarms during %ld reads)\n", alarms, reads);
  return 0;
}
