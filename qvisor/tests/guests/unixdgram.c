/* Named AF_UNIX datagram sockets: bound to a path or an abstract name, reached by sendto or
 * through connect, the sender's name delivered, one datagram a receive, waits and limits as
 * on Linux. What syslog's /dev/log and many daemons' control sockets are. Prints one line a
 * check; exits 1 at the first failure. argv[1]: a directory for the socket names. */
#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static void fail(const char *what) {
  printf("FAIL %s (errno %d)\n", what, errno);
  exit(1);
}

static socklen_t address(struct sockaddr_un *a, const char *dir, const char *name) {
  memset(a, 0, sizeof *a);
  a->sun_family = AF_UNIX;
  if (dir == NULL) { /* abstract: a leading NUL */
    memcpy(a->sun_path + 1, name, strlen(name));
    return offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name);
  }
  snprintf(a->sun_path, sizeof a->sun_path, "%s/%s", dir, name);
  return sizeof *a;
}

static int bound(const char *dir, const char *name) {
  int s = socket(AF_UNIX, SOCK_DGRAM, 0);
  struct sockaddr_un a;
  socklen_t len = address(&a, dir, name);
  if (s < 0 || bind(s, (struct sockaddr *)&a, len)) fail("bind");
  return s;
}

int main(int argc, char **argv) {
  if (argc < 2) fail("usage");
  const char *dir = argv[1];
  int server = bound(dir, "server.sock"), client = bound(dir, "client.sock");
  struct sockaddr_un to, from;
  socklen_t to_len = address(&to, dir, "server.sock");
  char buf[256];

  /* sendto a path; the receiver learns the sender's path. */
  if (sendto(client, "hello", 5, 0, (struct sockaddr *)&to, to_len) != 5) fail("sendto");
  socklen_t from_len = sizeof from;
  if (recvfrom(server, buf, sizeof buf, 0, (struct sockaddr *)&from, &from_len) != 5 ||
      memcmp(buf, "hello", 5))
    fail("recvfrom");
  char want[sizeof from.sun_path];
  snprintf(want, sizeof want, "%s/client.sock", dir);
  if (from_len != offsetof(struct sockaddr_un, sun_path) + strlen(want) + 1 ||
      strcmp(from.sun_path, want))
    fail("the sender's name");
  /* An unbound sender has no name: Linux gives an address length of 0. */
  int anonymous = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (sendto(anonymous, "anon", 4, 0, (struct sockaddr *)&to, to_len) != 4) fail("unbound sendto");
  from_len = sizeof from;
  if (recvfrom(server, buf, sizeof buf, 0, (struct sockaddr *)&from, &from_len) != 4 ||
      from_len != 0)
    fail("an unnamed sender");
  printf("sendto and recvfrom with names: ok\n");

  /* connect: send, write and writev go to the peer; getpeername names it. */
  int connected = socket(AF_UNIX, SOCK_DGRAM, 0);
  if (connect(connected, (struct sockaddr *)&to, to_len)) fail("connect");
  struct sockaddr_un peer;
  socklen_t peer_len = sizeof peer;
  if (getpeername(connected, (struct sockaddr *)&peer, &peer_len) || strcmp(peer.sun_path, to.sun_path))
    fail("getpeername");
  struct sockaddr_un own;
  socklen_t own_len = sizeof own;
  if (getsockname(server, (struct sockaddr *)&own, &own_len) || strcmp(own.sun_path, to.sun_path))
    fail("getsockname");
  if (send(connected, "one", 3, 0) != 3 || write(connected, "two", 3) != 3) fail("send, write");
  struct iovec parts[2] = {{"thr", 3}, {"ee", 2}};
  if (writev(connected, parts, 2) != 5) fail("writev");
  int pending = 0;
  if (ioctl(server, FIONREAD, &pending) || pending != 3) fail("FIONREAD is the next datagram");
  if (read(server, buf, sizeof buf) != 3 || memcmp(buf, "one", 3)) fail("datagram 1");
  if (recv(server, buf, sizeof buf, 0) != 3 || memcmp(buf, "two", 3)) fail("datagram 2");
  char a[2], b[8];
  struct iovec into[2] = {{a, 2}, {b, sizeof b}};
  if (readv(server, into, 2) != 5 || memcmp(a, "th", 2) || memcmp(b, "ree", 3)) fail("readv");
  printf("connect, write, writev and readv: ok\n");

  /* One datagram a receive, cut to the buffer. */
  char big[100];
  memset(big, 'x', sizeof big);
  if (send(connected, big, sizeof big, 0) != 100) fail("send 100");
  struct iovec small = {buf, 64};
  struct msghdr msg = {.msg_iov = &small, .msg_iovlen = 1};
  if (recvmsg(server, &msg, 0) != 64 || !(msg.msg_flags & MSG_TRUNC)) fail("MSG_TRUNC");
  if (send(connected, big, sizeof big, 0) != 100) fail("send 100 again");
  if (recv(server, buf, 10, MSG_TRUNC) != 100) fail("recv MSG_TRUNC gives the whole length");
  if (recv(server, buf, sizeof buf, MSG_DONTWAIT) != -1 || errno != EAGAIN) fail("EAGAIN when empty");
  printf("boundaries and truncation: ok\n");

  /* A receive waits for a datagram another process sends later; poll says readable. */
  pid_t child = fork();
  if (child == 0) {
    usleep(100000);
    int s = socket(AF_UNIX, SOCK_DGRAM, 0);
    _exit(sendto(s, "late", 4, 0, (struct sockaddr *)&to, to_len) == 4 ? 0 : 2);
  }
  struct pollfd p = {server, POLLIN, 0};
  if (poll(&p, 1, 5000) != 1 || !(p.revents & POLLIN)) fail("poll");
  if (recv(server, buf, sizeof buf, 0) != 4 || memcmp(buf, "late", 4)) fail("the late datagram");
  int status;
  if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status)) fail("child");
  printf("waits and poll: ok\n");

  /* Errors: no such name, a socket connected elsewhere, listen, a full queue. */
  struct sockaddr_un nowhere;
  socklen_t nowhere_len = address(&nowhere, dir, "nobody.sock");
  if (sendto(client, "x", 1, 0, (struct sockaddr *)&nowhere, nowhere_len) != -1 || errno != ENOENT)
    fail("ENOENT");
  if (send(anonymous, "x", 1, 0) != -1 || errno != ENOTCONN) fail("ENOTCONN");
  if (listen(server, 1) != -1 || errno != EOPNOTSUPP) fail("listen");
  struct sockaddr_un client_addr;
  socklen_t client_len = address(&client_addr, dir, "client.sock");
  if (connect(server, (struct sockaddr *)&client_addr, client_len)) fail("connect the server");
  if (sendto(anonymous, "x", 1, 0, (struct sockaddr *)&to, to_len) != -1 || errno != EPERM)
    fail("EPERM from a stranger");
  if (sendto(client, "ok", 2, 0, (struct sockaddr *)&to, to_len) != 2) fail("its peer may send");
  if (recv(server, buf, sizeof buf, 0) != 2) fail("the peer's datagram");
  int sent = 0;
  while (sent < 100000 && sendto(client, big, sizeof big, MSG_DONTWAIT, (struct sockaddr *)&to, to_len) == 100)
    sent++;
  if (sent == 100000 || errno != EAGAIN) fail("a full queue is EAGAIN");
  if (recv(server, buf, sizeof buf, 0) != 100) fail("drain one");
  printf("errors: ok\n");

  /* An abstract name. */
  int abstract = bound(NULL, "quark-dgram-test");
  struct sockaddr_un abs_to;
  socklen_t abs_len = address(&abs_to, NULL, "quark-dgram-test");
  if (sendto(anonymous, "abs", 3, 0, (struct sockaddr *)&abs_to, abs_len) != 3) fail("abstract sendto");
  if (recv(abstract, buf, sizeof buf, 0) != 3 || memcmp(buf, "abs", 3)) fail("abstract recv");
  printf("abstract names: ok\n");
  return 0;
}
