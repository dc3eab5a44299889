/* memhog: maps and touches 1 MiB at a time until the kernel refuses, prints how much it got,
 * then holds it until killed (120 s at most). */
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
int main(void) {
  long mib = 0;
  for (;;) {
    char *p = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) break;
    memset(p, 0x5a, 1 << 20);
    mib++;
  }
  printf("got %ld MiB\n", mib);
  fflush(stdout);
  sleep(120);
  return 0;
}
