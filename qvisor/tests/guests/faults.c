/* Misbehaves as argv[1] says: null (write to address 0), kernel (write to a kernel address),
 * ud2 (invalid instruction), hlt (privileged instruction), jump (execute unmapped memory),
 * spin (loop forever without a syscall), deep (use 6 MiB of stack, then exit 0), overflow
 * (recurse past the 8 MiB stack). */
#include <string.h>

/* Each level keeps 64 KiB on the stack and touches all of it. */
static long down(int levels) {
  volatile char frame[64 << 10];
  for (unsigned i = 0; i < sizeof frame; i += 4096) frame[i] = (char)levels;
  return levels == 0 ? frame[0] : frame[4096] + down(levels - 1);
}

int main(int argc, char **argv) {
  if (argc < 2) return 2;
  if (!strcmp(argv[1], "null")) *(volatile int *)0 = 1;
  if (!strcmp(argv[1], "kernel")) *(volatile long *)0xffff800000001000ul = 1;
  if (!strcmp(argv[1], "ud2")) __asm__ volatile("ud2");
  if (!strcmp(argv[1], "hlt")) __asm__ volatile("hlt");
  if (!strcmp(argv[1], "jump")) ((void (*)(void))0x123456789000ul)();
  if (!strcmp(argv[1], "spin")) for (volatile long i = 0;; i++) {}
  if (!strcmp(argv[1], "deep")) return down(96) == 96 * 97 / 2 ? 0 : 1;
  if (!strcmp(argv[1], "overflow")) return (int)down(1 << 20);
  return 0;
}
