/* AF_UNIX datagram and seqpacket socket pairs keep message boundaries; stream pairs do not. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <errno.h>
#include <stddef.h>
#include <unistd.h>

static void fail(const char *what) {
  printf("FAIL %s\n", what);
  exit(1);
}

static void check(int type, const char *name) {
  int sv[2];
  if (socketpair(AF_UNIX, type, 0, sv)) fail("socketpair");
  char big[100];
  memset(big, 'b', sizeof big);
  if (send(sv[0], "hello", 5, 0) != 5) fail("send 1");
  if (send(sv[0], "", 0, 0) != 0) fail("send empty");
  if (send(sv[0], big, sizeof big, 0) != 100) fail("send 3");
  if (send(sv[0], "tail", 4, 0) != 4) fail("send 4");
  int pending = 0;
  if (type == SOCK_DGRAM && (ioctl(sv[1], FIONREAD, &pending) || pending != 5))
    fail("FIONREAD is the next message");
  if (type == SOCK_SEQPACKET && (ioctl(sv[1], FIONREAD, &pending) || pending != 109))
    fail("FIONREAD is every byte queued");
  char buf[64];
  if (recv(sv[1], buf, sizeof buf, 0) != 5 || memcmp(buf, "hello", 5)) fail("message 1");
  if (recv(sv[1], buf, sizeof buf, MSG_DONTWAIT) != 0) fail("the empty message");
  struct iovec iov = {buf, sizeof buf};
  struct msghdr msg = {0};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (recvmsg(sv[1], &msg, 0) != 64) fail("message 3 cut to the buffer");
  if (!(msg.msg_flags & MSG_TRUNC)) fail("MSG_TRUNC not set");
  if (recv(sv[1], buf, sizeof buf, 0) != 4 || memcmp(buf, "tail", 4))
    fail("the rest of a cut message leaked into the next");
  /* A datagram as large as Linux's default send buffer allows still goes whole. */
  static char large[60000];
  if (send(sv[0], large, sizeof large, 0) != sizeof large) fail("a 60,000-byte datagram");
  if (recv(sv[1], large, sizeof large, 0) != sizeof large) fail("receiving it whole");
  /* writev sends its iovecs as one message; readv takes one. */
  struct iovec two[2] = {{"ab", 2}, {"cd", 2}};
  if (writev(sv[0], two, 2) != 4) fail("writev");
  char x[2], y[8];
  struct iovec into[2] = {{x, 2}, {y, 8}};
  if (readv(sv[1], into, 2) != 4 || memcmp(x, "ab", 2) || memcmp(y, "cd", 2)) fail("readv");
  /* The other direction is its own queue, and read/write are send/recv. */
  if (write(sv[1], "back", 4) != 4 || read(sv[0], buf, 2) != 2 || memcmp(buf, "ba", 2)) fail("back");
  if (recv(sv[0], buf, sizeof buf, MSG_DONTWAIT) != -1) fail("a read took a whole message");
  /* A message larger than the pair can hold. */
  static char huge[1 << 20];
  if (send(sv[0], huge, sizeof huge, 0) != -1) fail("an oversized message was accepted");
  close(sv[0]);
  /* A seqpacket peer's close is EOF (a datagram receiver keeps waiting on Linux). */
  if (type == SOCK_SEQPACKET && recv(sv[1], buf, sizeof buf, 0) != 0) fail("EOF after close");
  close(sv[1]);
  printf("%s: boundaries kept\n", name);
}

/* A named seqpacket listener (abstract name): its connections keep boundaries, and a stream
 * socket connecting to it is refused (ECONNREFUSED, as Linux refuses any other type). */
static void named_seqpacket(void) {
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  memcpy(a.sun_path + 1, "quark-seqpacket-test", 20);
  socklen_t len = offsetof(struct sockaddr_un, sun_path) + 21;
  int l = socket(AF_UNIX, SOCK_SEQPACKET, 0);
  if (l < 0 || bind(l, (struct sockaddr *)&a, len) || listen(l, 4)) fail("seqpacket listener");
  int stream = socket(AF_UNIX, SOCK_STREAM, 0);
  if (connect(stream, (struct sockaddr *)&a, len) != -1 || errno != ECONNREFUSED)
    fail("a stream socket connecting to a seqpacket listener");
  int c = socket(AF_UNIX, SOCK_SEQPACKET, 0);
  if (connect(c, (struct sockaddr *)&a, len)) fail("seqpacket connect");
  int s = accept(l, NULL, NULL);
  if (s < 0) fail("seqpacket accept");
  if (send(c, "one", 3, 0) != 3 || send(c, "two", 3, 0) != 3) fail("seqpacket send");
  char buf[16];
  if (recv(s, buf, sizeof buf, 0) != 3 || memcmp(buf, "one", 3)) fail("seqpacket message 1");
  if (recv(s, buf, sizeof buf, 0) != 3 || memcmp(buf, "two", 3)) fail("seqpacket message 2");
  close(c);
  if (recv(s, buf, sizeof buf, 0) != 0) fail("seqpacket EOF");
  printf("named seqpacket: boundaries kept\n");
}

int main(void) {
  check(SOCK_DGRAM, "dgram");
  check(SOCK_SEQPACKET, "seqpacket");
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) fail("stream pair");
  char buf[16] = {0};
  send(sv[0], "ab", 2, 0);
  send(sv[0], "cd", 2, 0);
  if (recv(sv[1], buf, sizeof buf, 0) != 4 || memcmp(buf, "abcd", 4)) fail("a stream merges");
  printf("stream: bytes merged\n");
  named_seqpacket();
  return 0;
}
