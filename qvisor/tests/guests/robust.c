/* Robust mutexes (set_robust_list): a lock whose owner dies is handed to the next locker with
 * EOWNERDEAD instead of hanging it. The owner a thread that exits, a process that exits, and a
 * process killed while another process waits for its lock in shared memory. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void fail(const char *what) {
  printf("FAIL %s\n", what);
  exit(1);
}

static void robust_init(pthread_mutex_t *mu, int pshared) {
  pthread_mutexattr_t a;
  pthread_mutexattr_init(&a);
  pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
  if (pshared) pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
  if (pthread_mutex_init(mu, &a)) fail("mutex init");
}

/* Takes a lock its dead owner left: EOWNERDEAD, then usable again once made consistent. */
static void take_over(pthread_mutex_t *mu, const char *what) {
  if (pthread_mutex_lock(mu) != EOWNERDEAD) fail(what);
  if (pthread_mutex_consistent(mu) || pthread_mutex_unlock(mu)) fail("consistent/unlock");
  if (pthread_mutex_lock(mu) || pthread_mutex_unlock(mu)) fail("lock after recovery");
}

static pthread_mutex_t thread_mu;
static const char *exe;
static void *lock_and_exit(void *arg) {
  (void)arg;
  pthread_mutex_lock(&thread_mu);
  return NULL; /* ends holding it */
}

int main(int argc, char **argv) {
  /* Run again by the exec test: stays a moment, then ends. */
  if (argc > 1) {
    struct timespec t = {0, 200000000};
    nanosleep(&t, NULL);
    return 0;
  }
  exe = argv[0];
  robust_init(&thread_mu, 0);
  pthread_t t;
  pthread_create(&t, NULL, lock_and_exit, NULL);
  pthread_join(t, NULL);
  take_over(&thread_mu, "a thread's lock after it exited");
  printf("thread died holding it: EOWNERDEAD\n");

  pthread_mutex_t *mu = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mu == MAP_FAILED) fail("mmap");
  robust_init(mu, 1);
  pid_t child = fork();
  if (child == 0) {
    pthread_mutex_lock(mu);
    _exit(0);
  }
  waitpid(child, NULL, 0);
  take_over(mu, "a process's lock after it exited");
  printf("process exited holding it: EOWNERDEAD\n");

  int ready[2];
  if (pipe(ready)) fail("pipe");
  pid_t owner = fork();
  if (owner == 0) {
    pthread_mutex_lock(mu);
    if (write(ready[1], "x", 1) != 1) _exit(2);
    for (;;) pause();
  }
  char c;
  if (read(ready[0], &c, 1) != 1) fail("owner never locked");
  pid_t killer = fork();
  if (killer == 0) {
    struct timespec t = {0, 100000000};
    nanosleep(&t, NULL);
    kill(owner, SIGKILL);
    _exit(0);
  }
  take_over(mu, "waiting for a lock whose owner was killed");
  waitpid(owner, NULL, 0);
  waitpid(killer, NULL, 0);
  printf("owner killed while another process waited: EOWNERDEAD\n");

  /* An owner that execs (Linux releases the robust list at exec), while this one waits. */
  if (pipe(ready)) fail("pipe");
  pid_t execer = fork();
  if (execer == 0) {
    pthread_mutex_lock(mu);
    if (write(ready[1], "x", 1) != 1) _exit(2);
    struct timespec t = {0, 100000000};
    nanosleep(&t, NULL);
    execl(exe, exe, "sleep", (char *)NULL);
    _exit(3);
  }
  if (read(ready[0], &c, 1) != 1) fail("the execing owner never locked");
  take_over(mu, "a lock whose owner exec'd");
  waitpid(execer, NULL, 0);
  printf("owner exec'd holding it: EOWNERDEAD\n");
  return 0;
}
