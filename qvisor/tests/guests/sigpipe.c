/* SIGPIPE for a writer nobody reads any more, on a TCP connection (over 127.0.0.1) and on a
 * pipe: the default action kills the writer; MSG_NOSIGNAL (send, sendto, sendmsg) spares it,
 * EPIPE; a handler runs once and the write fails with EPIPE; SIG_IGN gives EPIPE alone; a
 * blocked SIGPIPE stays pending. Prints one line a check; exits 1 at the first failure. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static void fail(const char *what, long r) {
  printf("FAIL %s (returned %ld, errno %d)\n", what, r, errno);
  exit(1);
}

/* A connected TCP socket whose sending side is shut: every write to it is a broken pipe. */
static int shut_tcp(void) {
  int l = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t al = sizeof a;
  if (l < 0 || bind(l, (void *)&a, sizeof a) != 0 || listen(l, 1) != 0 ||
      getsockname(l, (void *)&a, &al) != 0) {
    fail("listening", -1);
  }
  int c = socket(AF_INET, SOCK_STREAM, 0);
  if (c < 0 || connect(c, (void *)&a, sizeof a) != 0) {
    fail("connecting", -1);
  }
  int s = accept(l, NULL, NULL);
  if (s < 0 || shutdown(c, SHUT_WR) != 0) {
    fail("accepting and shutting", -1);
  }
  close(l);
  return c;
}

/* A pipe whose reading end is closed. */
static int shut_pipe(void) {
  int p[2];
  if (pipe(p) != 0) {
    fail("pipe", -1);
  }
  close(p[0]);
  return p[1];
}

static volatile sig_atomic_t pipes;

static void on_pipe(int sig) {
  (void)sig;
  pipes++;
}

static void set_action(void (*handler)(int)) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = handler;
  sigaction(SIGPIPE, &sa, NULL);
}

/* The default action: a child writes and dies of SIGPIPE. */
static void killed_by_default(int (*make)(void), const char *what) {
  pid_t pid = fork();
  if (pid == 0) {
    set_action(SIG_DFL);
    int fd = make();
    write(fd, "x", 1);
    _exit(0);
  }
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFSIGNALED(status) ||
      WTERMSIG(status) != SIGPIPE) {
    fail(what, status);
  }
}

int main(void) {
  setvbuf(stdout, NULL, _IONBF, 0);
  killed_by_default(shut_tcp, "a TCP writer was not killed by SIGPIPE");
  killed_by_default(shut_pipe, "a pipe writer was not killed by SIGPIPE");
  printf("default action kills: ok\n");

  /* MSG_NOSIGNAL: EPIPE and nothing else (the default action would kill us). */
  int c = shut_tcp();
  struct iovec v = {"x", 1};
  struct msghdr mh = {.msg_iov = &v, .msg_iovlen = 1};
  long r = send(c, "x", 1, MSG_NOSIGNAL);
  if (r != -1 || errno != EPIPE) {
    fail("send with MSG_NOSIGNAL", r);
  }
  r = sendto(c, "x", 1, MSG_NOSIGNAL, NULL, 0);
  if (r != -1 || errno != EPIPE) {
    fail("sendto with MSG_NOSIGNAL", r);
  }
  r = sendmsg(c, &mh, MSG_NOSIGNAL);
  if (r != -1 || errno != EPIPE) {
    fail("sendmsg with MSG_NOSIGNAL", r);
  }
  printf("MSG_NOSIGNAL: ok\n");

  /* A handler: it runs once a write, and the write is EPIPE. */
  set_action(on_pipe);
  int p = shut_pipe();
  r = write(c, "x", 1);
  if (r != -1 || errno != EPIPE || pipes != 1) {
    fail("a TCP write with a SIGPIPE handler", r);
  }
  r = send(c, "x", 1, 0);
  if (r != -1 || errno != EPIPE || pipes != 2) {
    fail("a TCP send with a SIGPIPE handler", r);
  }
  r = write(p, "x", 1);
  if (r != -1 || errno != EPIPE || pipes != 3) {
    fail("a pipe write with a SIGPIPE handler", r);
  }
  printf("handler: ok\n");

  /* Ignored: EPIPE alone. */
  set_action(SIG_IGN);
  r = write(c, "x", 1);
  if (r != -1 || errno != EPIPE || pipes != 3) {
    fail("a TCP write with SIGPIPE ignored", r);
  }
  r = write(p, "x", 1);
  if (r != -1 || errno != EPIPE || pipes != 3) {
    fail("a pipe write with SIGPIPE ignored", r);
  }
  printf("ignored: ok\n");

  /* Blocked: EPIPE, and SIGPIPE pending until unblocked. */
  set_action(on_pipe);
  sigset_t set, pending;
  sigemptyset(&set);
  sigaddset(&set, SIGPIPE);
  sigprocmask(SIG_BLOCK, &set, NULL);
  r = write(c, "x", 1);
  sigpending(&pending);
  if (r != -1 || errno != EPIPE || pipes != 3 || !sigismember(&pending, SIGPIPE)) {
    fail("a TCP write with SIGPIPE blocked", r);
  }
  sigprocmask(SIG_UNBLOCK, &set, NULL);
  if (pipes != 4) {
    fail("the pending SIGPIPE did not run when unblocked", pipes);
  }
  printf("blocked: ok\n");
  return 0;
}
