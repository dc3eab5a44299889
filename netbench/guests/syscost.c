/* Cost of a syscall (libc's getpid(), a `mov $39, %eax; syscall` pair: patchable when libc is
 * a shared library), of a clock read (clock_gettime: the vDSO's where there is one) and of
 * first-touching anonymous pages: syscost CALLS PAGES */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e9 + t.tv_nsec;
}

int main(int argc, char **argv) {
  long calls = argc > 1 ? atol(argv[1]) : 1000, pages = argc > 2 ? atol(argv[2]) : 1000;
  double t0 = now_ns();
  for (long i = 0; i < calls; i++) getpid();
  double t1 = now_ns();
  char *p = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return 1;
  double t2 = now_ns();
  for (long i = 0; i < pages; i++) p[i * 4096] = 1;
  double t3 = now_ns();
  struct timespec ts;
  double t4 = now_ns();
  for (long i = 0; i < calls; i++) clock_gettime(CLOCK_MONOTONIC, &ts);
  double t5 = now_ns();
  printf("getpid_ns %.1f\ntouch_ns %.1f\nclock_ns %.1f\n", (t1 - t0) / calls, (t3 - t2) / pages,
         (t5 - t4) / calls);
  return 0;
}
