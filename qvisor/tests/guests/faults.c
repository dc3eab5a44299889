/* Misbehaves as argv[1] says: null (write to address 0), kernel (write to a kernel address),
 * ud2 (invalid instruction), hlt (privileged instruction), jump (execute unmapped memory),
 * spin (loop forever without a syscall). */
#include <string.h>
int main(int argc, char **argv) {
  if (argc < 2) return 2;
  if (!strcmp(argv[1], "null")) *(volatile int *)0 = 1;
  if (!strcmp(argv[1], "kernel")) *(volatile long *)0xffff800000001000ul = 1;
  if (!strcmp(argv[1], "ud2")) __asm__ volatile("ud2");
  if (!strcmp(argv[1], "hlt")) __asm__ volatile("hlt");
  if (!strcmp(argv[1], "jump")) ((void (*)(void))0x123456789000ul)();
  if (!strcmp(argv[1], "spin")) for (volatile long i = 0;; i++) {}
  return 0;
}
