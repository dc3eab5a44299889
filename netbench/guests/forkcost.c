/* Cost of fork + _exit + waitpid for a process with MIB mebibytes of touched private memory,
 * the cost copy-on-write saves on Linux (qvisor's fork copies every page): forkcost MIB FORKS.
 * Prints the median in microseconds. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int by_value(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

int main(int argc, char **argv) {
  long mib = argc > 1 ? atol(argv[1]) : 1, forks = argc > 2 ? atol(argv[2]) : 20;
  if (forks < 1 || forks > 1000) return 2;
  char *p = malloc(mib << 20);
  if (p == NULL) return 1;
  memset(p, 1, mib << 20);
  double *took = calloc(forks, sizeof *took);
  for (long i = 0; i < forks; i++) {
    double t0 = now_us();
    pid_t child = fork();
    if (child == 0) _exit(p[i] == 1 ? 0 : 3);
    int status;
    if (child < 0 || waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status))
      return 1;
    took[i] = now_us() - t0;
  }
  qsort(took, forks, sizeof *took, by_value);
  printf("fork_us %.1f\n", took[forks / 2]);
  return 0;
}
