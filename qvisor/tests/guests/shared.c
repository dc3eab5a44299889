/* Shared anonymous memory across fork: what forking servers (nginx's shared zones, postgres's
 * buffers) keep their common state in. Prints one line a check; exits 1 at the first failure. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static void fail(const char *what) {
  printf("FAIL %s\n", what);
  exit(1);
}

static void reap(pid_t child) {
  int status = 0;
  if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status))
    fail("child");
}

int main(void) {
  char *shared = mmap(NULL, 2 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  char *private = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (shared == MAP_FAILED || private == MAP_FAILED) fail("mmap");
  long *counter = (long *)(shared + 64);
  strcpy(shared, "from the parent");
  pid_t child = fork();
  if (child < 0) fail("fork");
  if (child == 0) {
    if (strcmp(shared, "from the parent")) _exit(2);
    strcpy(shared + 4096, "from the child");
    strcpy(private, "private");
    for (int i = 0; i < 100000; i++) __atomic_fetch_add(counter, 1, __ATOMIC_SEQ_CST);
    /* A grandchild shares it too. */
    pid_t grandchild = fork();
    if (grandchild == 0) {
      strcpy(shared + 4096 + 100, "from the grandchild");
      _exit(0);
    }
    waitpid(grandchild, NULL, 0);
    munmap(shared, 2 * 4096); /* the child's unmapping leaves the parent's mapping alone */
    _exit(0);
  }
  for (int i = 0; i < 100000; i++) __atomic_fetch_add(counter, 1, __ATOMIC_SEQ_CST);
  reap(child);
  if (strcmp(shared + 4096, "from the child")) fail("the child's write is not seen");
  if (strcmp(shared + 4096 + 100, "from the grandchild")) fail("the grandchild's write");
  if (*counter != 200000) fail("increments from both processes were lost");
  if (private[0] != 0) fail("private memory was shared");
  printf("shared across fork: ok\n");

  /* /dev/zero mapped shared is shared anonymous memory. */
  int zero = open("/dev/zero", O_RDWR);
  char *z = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, zero, 0);
  if (z == MAP_FAILED) fail("mmap /dev/zero");
  if ((child = fork()) == 0) {
    strcpy(z, "through /dev/zero");
    _exit(0);
  }
  reap(child);
  if (strcmp(z, "through /dev/zero")) fail("/dev/zero shared mapping");
  printf("/dev/zero shared: ok\n");

  /* MADV_DONTNEED drops a view of shared memory, not its contents. */
  madvise(shared, 4096, MADV_DONTNEED);
  if (strcmp(shared, "from the parent")) fail("MADV_DONTNEED cleared shared memory");
  printf("madvise keeps shared contents: ok\n");

  /* Unmapped and mapped again: fresh zeroed memory, never the old shared pages. */
  munmap(shared, 2 * 4096);
  char *again = mmap(NULL, 2 * 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (again == MAP_FAILED || again[0] != 0 || again[4096] != 0) fail("a new mapping is not zeroed");
  printf("remapping: ok\n");
  return 0;
}
