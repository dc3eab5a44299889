/* Prints its arguments, allocates, and exits with the status given as argv[1]. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv) {
  for (int i = 0; i < argc; i++) printf("argv[%d]=%s\n", i, argv[i]);
  char *p = malloc(8 << 20);
  memset(p, 0x5a, 8 << 20);
  printf("heap ok %d\n", p[(8 << 20) - 1] == 0x5a);
  return argc > 1 ? atoi(argv[1]) : 0;
}
