/* A guest that reads every page of the window through which Quark's syscall stub reads
 * socket rings (qvisor/src/fastread.rs: 0xffff_c000_4000_0000, MAX_EXPOSED rings of 4 MiB),
 * though none of its sockets' rings are there: it reads zeros, and the VMM must commit no
 * memory for it. Prints how many pages it read and how many held anything but zeros, then
 * waits for the test to look at the VMM's memory. */
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

#define WINDOW 0xffffc00040000000UL
#define RINGS 64
#define RING (4UL << 20)

int main(void) {
  unsigned long pages = 0, nonzero = 0;
  for (unsigned long off = 0; off < RINGS * RING; off += 4096) {
    volatile const uint64_t *p = (const uint64_t *)(WINDOW + off);
    if (*p != 0) {
      nonzero++;
    }
    pages++;
  }
  printf("read %lu pages, %lu not zero\n", pages, nonzero);
  fflush(stdout);
  sleep(5);
  return 0;
}
