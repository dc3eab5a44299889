/* A guest that makes pipes until it is refused, in 8 processes (each up to its descriptor
 * limit): the container's pipe buffers are capped (ENFILE), so the VMM's heap stays bounded.
 * Prints how many pipes it got and the errno that stopped it. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

int main(void) {
  int up[2];
  if (pipe(up)) return 1;
  pid_t kids[8];
  for (int i = 0; i < 8; i++) {
    if ((kids[i] = fork()) == 0) {
      int n = 0, fds[2];
      while (pipe(fds) == 0) n++;
      int err = errno;
      /* Report, then hold the pipes until the parent has counted everyone. */
      int report[2] = {n, err};
      if (write(up[1], report, sizeof report) != sizeof report) _exit(2);
      pause();
    }
  }
  int total = 0, enfile = 0;
  for (int i = 0; i < 8; i++) {
    int report[2];
    if (read(up[0], report, sizeof report) != sizeof report) return 1;
    total += report[0];
    enfile += report[1] == ENFILE;
  }
  printf("pipes %d refused_enfile %d\n", total, enfile);
  for (int i = 0; i < 8; i++) {
    kill(kids[i], SIGKILL);
    waitpid(kids[i], NULL, 0);
  }
  return 0;
}
