/* A guest that reads every page of the window through which Quark's syscall stub reads
 * socket rings (qvisor/src/fastread.rs: 0xffff_c000_4000_0000, MAX_EXPOSED rings of 4 MiB),
 * though none of its sockets' rings are there: it reads zeros, and the VMM must commit no
 * memory for it. Prints how many pages it read and how many held anything but zeros, then
 * waits for the test to look at the VMM's memory. With "write N": writes every page of the
 * window of N transmit rings of 2 MiB (1 GiB further) instead, which the VMM holds as
 * anonymous memory: N rings' worth at most. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WINDOW 0xffffc00040000000UL
#define RINGS 64
#define RING (4UL << 20)
#define TX_WINDOW (WINDOW + (1UL << 30))
#define TX_RING (2UL << 20)

static int write_window(unsigned long rings) {
  unsigned long pages = 0, wrong = 0;
  for (unsigned long off = 0; off < rings * TX_RING; off += 4096) {
    *(volatile uint64_t *)(TX_WINDOW + off) = off + 1;
  }
  for (unsigned long off = 0; off < rings * TX_RING; off += 4096) {
    if (*(volatile const uint64_t *)(TX_WINDOW + off) != off + 1) {
      wrong++;
    }
    pages++;
  }
  printf("wrote %lu pages, %lu wrong\n", pages, wrong);
  fflush(stdout);
  sleep(5);
  return 0;
}

int main(int argc, char **argv) {
  if (argc > 2 && strcmp(argv[1], "write") == 0) {
    return write_window(strtoul(argv[2], NULL, 0));
  }
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
