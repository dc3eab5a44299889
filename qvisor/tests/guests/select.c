/* select(2) and pselect6(2) on guest sockets over loopback, in one process: a listener becomes
 * readable when a connection arrives; a drained socket is not readable (a blocking read after
 * select must not wait); a timeout returns 0 after the time and clears the sets; the sets the
 * app passed are what the wait uses (a try that finds nothing must not clear them first).
 * Prints "ok" or the first failure. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

#define CHECK(cond, ...) do { if (!(cond)) { printf(__VA_ARGS__); printf("\n"); return 1; } } while (0)

/* select on `fds` for reading with `ms` (negative: no timeout, through pselect); returns the
 * count and leaves in `set` what is ready. */
static int wait_read(int *fds, int n, int ms, fd_set *set, double *took) {
  FD_ZERO(set);
  int max = 0;
  for (int i = 0; i < n; i++) {
    FD_SET(fds[i], set);
    if (fds[i] > max) max = fds[i];
  }
  double t0 = now_ms();
  int r;
  if (ms < 0) {
    r = pselect(max + 1, set, NULL, NULL, NULL, NULL);
  } else {
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    r = select(max + 1, set, NULL, NULL, &tv);
  }
  *took = now_ms() - t0;
  return r;
}

int main(void) {
  int l = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(7301)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  CHECK(bind(l, (struct sockaddr *)&a, sizeof a) == 0, "bind failed");
  CHECK(listen(l, 4) == 0, "listen failed");
  fd_set set;
  double took;

  /* Nothing to accept yet: the timeout passes, the set comes back empty. */
  int r = wait_read(&l, 1, 150, &set, &took);
  CHECK(r == 0 && !FD_ISSET(l, &set), "idle listener: select=%d", r);
  CHECK(took >= 120, "idle listener: returned after %.0f ms, not the 150 ms timeout", took);

  int c = socket(AF_INET, SOCK_STREAM, 0);
  CHECK(connect(c, (struct sockaddr *)&a, sizeof a) == 0, "connect failed");
  r = wait_read(&l, 1, 2000, &set, &took);
  CHECK(r == 1 && FD_ISSET(l, &set), "a connection waits: select=%d after %.0f ms", r, took);
  CHECK(took < 1000, "a connection waits: select took %.0f ms", took);
  int s = accept(l, NULL, NULL);
  CHECK(s >= 0, "accept failed");

  int both[2] = {l, s};
  r = wait_read(both, 2, 150, &set, &took);
  CHECK(r == 0, "nothing sent yet: select=%d (listener %d, socket %d)", r, FD_ISSET(l, &set),
        FD_ISSET(s, &set));

  CHECK(write(c, "x", 1) == 1, "write failed");
  r = wait_read(both, 2, 2000, &set, &took);
  CHECK(r == 1 && FD_ISSET(s, &set) && !FD_ISSET(l, &set), "data waits: select=%d", r);
  CHECK(took < 1000, "data waits: select took %.0f ms", took);
  char b;
  CHECK(read(s, &b, 1) == 1 && b == 'x', "read failed");

  /* Drained: not readable any more, though the stack has not looked since. */
  r = wait_read(&s, 1, 150, &set, &took);
  CHECK(r == 0 && !FD_ISSET(s, &set), "drained socket reported readable: select=%d", r);

  /* No timeout: waits until the data comes, and says which socket has it. */
  CHECK(write(c, "y", 1) == 1, "write failed");
  r = wait_read(both, 2, -1, &set, &took);
  CHECK(r == 1 && FD_ISSET(s, &set), "pselect without timeout: %d", r);
  CHECK(read(s, &b, 1) == 1 && b == 'y', "second read failed");

  /* Data that comes while select waits (from a child): the wait ends then, on the sets the
   * app passed. */
  pid_t child = fork();
  if (child == 0) {
    usleep(200 * 1000);
    _exit(write(c, "z", 1) == 1 ? 0 : 1);
  }
  r = wait_read(both, 2, 3000, &set, &took);
  CHECK(r == 1 && FD_ISSET(s, &set), "data during the wait: select=%d after %.0f ms", r, took);
  CHECK(took < 2000, "data during the wait: select took %.0f ms", took);
  CHECK(read(s, &b, 1) == 1 && b == 'z', "third read failed");
  int status;
  CHECK(waitpid(child, &status, 0) == child && status == 0, "the writer failed");

  /* End of stream is readable. */
  close(c);
  r = wait_read(&s, 1, 2000, &set, &took);
  CHECK(r == 1 && FD_ISSET(s, &set) && read(s, &b, 1) == 0, "end of stream: select=%d", r);
  printf("ok\n");
  return 0;
}
