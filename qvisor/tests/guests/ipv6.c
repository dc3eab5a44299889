/* AF_INET6 sockets in an IPv4 network, as an IPv4-only pod has them: a dual-stack listener on
 * [::] takes IPv4 clients (named ::ffff:a.b.c.d), an AF_INET6 client reaches an IPv4 server
 * by its mapped address, a v6-only listener binds beside an IPv4 one on the same port (nginx's
 * `listen 80; listen [::]:80;`) and never becomes ready, and other IPv6 addresses are
 * unreachable. Prints one line a check; exits 1 at the first failure. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void fail(const char *what) {
  printf("FAIL %s (errno %d)\n", what, errno);
  exit(1);
}

static struct sockaddr_in6 v6(const char *text, int port) {
  struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons(port)};
  if (inet_pton(AF_INET6, text, &a.sin6_addr) != 1) fail("inet_pton");
  return a;
}

static int listener6(int port, int v6only) {
  int s = socket(AF_INET6, SOCK_STREAM, 0), one = 1;
  if (s < 0) fail("socket(AF_INET6)");
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only)) fail("IPV6_V6ONLY");
  struct sockaddr_in6 any = v6("::", port);
  if (bind(s, (struct sockaddr *)&any, sizeof any) || listen(s, 8)) fail("bind/listen [::]");
  return s;
}

int main(void) {
  /* Dual stack: an IPv4 client reaches [::]:7601. */
  int l = listener6(7601, 0);
  int c = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in to4 = {.sin_family = AF_INET, .sin_port = htons(7601)};
  to4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(c, (struct sockaddr *)&to4, sizeof to4)) fail("IPv4 connect to [::]");
  struct sockaddr_in6 peer;
  socklen_t len = sizeof peer;
  int a = accept(l, (struct sockaddr *)&peer, &len);
  char text[64];
  inet_ntop(AF_INET6, &peer.sin6_addr, text, sizeof text);
  if (a < 0 || len != sizeof peer || peer.sin6_family != AF_INET6 || strcmp(text, "::ffff:127.0.0.1"))
    fail("accepted peer name");
  struct sockaddr_in6 own;
  len = sizeof own;
  getsockname(l, (struct sockaddr *)&own, &len);
  inet_ntop(AF_INET6, &own.sin6_addr, text, sizeof text);
  if (own.sin6_family != AF_INET6 || ntohs(own.sin6_port) != 7601 || strcmp(text, "::"))
    fail("listener name");
  if (write(c, "hi", 2) != 2 || read(a, text, 2) != 2 || memcmp(text, "hi", 2)) fail("data");
  printf("dual-stack listener takes IPv4 clients: ok\n");

  /* An AF_INET6 client reaches an IPv4 server by its mapped address. */
  int s6 = socket(AF_INET6, SOCK_STREAM, 0);
  struct sockaddr_in6 mapped = v6("::ffff:127.0.0.1", 7601);
  if (connect(s6, (struct sockaddr *)&mapped, sizeof mapped)) fail("connect ::ffff:127.0.0.1");
  len = sizeof peer;
  getpeername(s6, (struct sockaddr *)&peer, &len);
  inet_ntop(AF_INET6, &peer.sin6_addr, text, sizeof text);
  if (strcmp(text, "::ffff:127.0.0.1")) fail("getpeername");
  printf("IPv4-mapped client: ok\n");

  /* nginx's pair: an IPv4 listener and a v6-only one on the same port. */
  int l4 = socket(AF_INET, SOCK_STREAM, 0), yes = 1;
  setsockopt(l4, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
  struct sockaddr_in any4 = {.sin_family = AF_INET, .sin_port = htons(7602)};
  if (bind(l4, (struct sockaddr *)&any4, sizeof any4) || listen(l4, 8)) fail("IPv4 listener");
  int only = listener6(7602, 1);
  int v = 0;
  len = sizeof v;
  if (getsockopt(only, IPPROTO_IPV6, IPV6_V6ONLY, &v, &len) || v != 1) fail("getsockopt V6ONLY");
  int c2 = socket(AF_INET, SOCK_STREAM, 0);
  to4.sin_port = htons(7602);
  if (connect(c2, (struct sockaddr *)&to4, sizeof to4)) fail("connect 7602");
  struct pollfd p[2] = {{only, POLLIN, 0}, {l4, POLLIN, 0}};
  if (poll(p, 2, 2000) != 1 || p[0].revents || !(p[1].revents & POLLIN)) fail("poll");
  int a4 = accept(l4, NULL, NULL);
  if (a4 < 0) fail("the IPv4 listener accepts");
  printf("v6-only listener beside an IPv4 one: ok\n");

  /* A real IPv6 address is unreachable here. */
  int u = socket(AF_INET6, SOCK_STREAM, 0);
  struct sockaddr_in6 doc = v6("2001:db8::1", 80);
  /* ENETUNREACH without an IPv6 route, as in such a pod; a host with IPv6 may say
   * EHOSTUNREACH. */
  if (connect(u, (struct sockaddr *)&doc, sizeof doc) != -1 ||
      (errno != ENETUNREACH && errno != EHOSTUNREACH))
    fail("2001:db8::1");
  /* A v6-only datagram socket cannot send to an IPv4(-mapped) address. */
  int d = socket(AF_INET6, SOCK_DGRAM, 0), on = 1;
  if (setsockopt(d, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof on)) fail("V6ONLY on UDP");
  struct sockaddr_in6 m4 = v6("::ffff:127.0.0.1", 7603);
  if (sendto(d, "x", 1, 0, (struct sockaddr *)&m4, sizeof m4) != -1 || errno != ENETUNREACH)
    fail("v6-only sendto an IPv4-mapped address");
  printf("other IPv6 addresses: unreachable\n");
  return 0;
}
