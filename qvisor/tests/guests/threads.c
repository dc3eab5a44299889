/* Threads in the guest: glibc's pthreads on qkernel's clone(CLONE_THREAD) and futex.
 * Each check prints "ok <name>" or "FAIL <name>: why" and the program exits 1 on any failure.
 * With an argument it runs one scenario that ends the process instead ("exit-group"). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int failures;

#define CHECK(name, cond, ...)                                                                  \
    do {                                                                                        \
        if (cond) {                                                                             \
            printf("ok %s\n", name);                                                            \
        } else {                                                                                \
            printf("FAIL %s: ", name);                                                          \
            printf(__VA_ARGS__);                                                                \
            printf("\n");                                                                       \
            failures++;                                                                         \
        }                                                                                       \
        fflush(stdout);                                                                         \
    } while (0)

static long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static pid_t gettid_(void) { return (pid_t)syscall(SYS_gettid); }

/* A mutex-protected counter, bumped by many threads at once. */
static pthread_mutex_t counter_lock = PTHREAD_MUTEX_INITIALIZER;
static long counter;
#define BUMPS 20000

static void *bump(void *arg) {
    (void)arg;
    for (int i = 0; i < BUMPS; i++) {
        pthread_mutex_lock(&counter_lock);
        long v = counter;
        if (i % 1000 == 0)
            sched_yield(); /* hand over while holding the lock: others must wait on the futex */
        counter = v + 1;
        pthread_mutex_unlock(&counter_lock);
    }
    return (void *)(long)gettid_();
}

static void check_mutex(void) {
    enum { N = 8 };
    pthread_t t[N];
    long tids[N];
    for (int i = 0; i < N; i++)
        pthread_create(&t[i], NULL, bump, NULL);
    int distinct = 1;
    for (int i = 0; i < N; i++) {
        void *r;
        pthread_join(t[i], &r);
        tids[i] = (long)r;
        if (tids[i] == getpid())
            distinct = 0;
        for (int j = 0; j < i; j++)
            if (tids[j] == tids[i])
                distinct = 0;
    }
    CHECK("mutex", counter == (long)N * BUMPS, "counter %ld, want %ld", counter, (long)N * BUMPS);
    CHECK("tids", distinct, "thread ids are not distinct or equal the pid");
}

/* A bounded queue between a producer and a consumer, on condition variables. */
static pthread_mutex_t q_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t q_not_empty = PTHREAD_COND_INITIALIZER;
static pthread_cond_t q_not_full = PTHREAD_COND_INITIALIZER;
static int q[4], q_len, q_head;
#define ITEMS 5000

static void *producer(void *arg) {
    (void)arg;
    for (int i = 1; i <= ITEMS; i++) {
        pthread_mutex_lock(&q_lock);
        while (q_len == 4)
            pthread_cond_wait(&q_not_full, &q_lock);
        q[(q_head + q_len) % 4] = i;
        q_len++;
        pthread_cond_signal(&q_not_empty);
        pthread_mutex_unlock(&q_lock);
    }
    return NULL;
}

static void check_condvar(void) {
    pthread_t p;
    pthread_create(&p, NULL, producer, NULL);
    long sum = 0;
    int in_order = 1, last = 0;
    for (int n = 0; n < ITEMS; n++) {
        pthread_mutex_lock(&q_lock);
        while (q_len == 0)
            pthread_cond_wait(&q_not_empty, &q_lock);
        int v = q[q_head];
        q_head = (q_head + 1) % 4;
        q_len--;
        pthread_cond_signal(&q_not_full);
        pthread_mutex_unlock(&q_lock);
        in_order &= v == last + 1;
        last = v;
        sum += v;
    }
    pthread_join(p, NULL);
    CHECK("condvar", in_order && sum == (long)ITEMS * (ITEMS + 1) / 2, "sum %ld in order %d", sum,
          in_order);
}

/* Thread-local storage: every thread has its own copy (its own fs base). */
static __thread int tls_value = 7;

static void *tls_thread(void *arg) {
    tls_value = (int)(long)arg;
    usleep(20000); /* the others set theirs meanwhile */
    return (void *)(long)(tls_value == (int)(long)arg);
}

static void check_tls(void) {
    pthread_t t[4];
    for (long i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, tls_thread, (void *)(100 + i));
    int all = 1;
    for (int i = 0; i < 4; i++) {
        void *r;
        pthread_join(t[i], &r);
        all &= r != NULL;
    }
    CHECK("tls", all && tls_value == 7, "own copies kept: %d, main's %d", all, tls_value);
}

/* Two threads spinning on each other's flag: only preemption lets both make progress. */
static volatile int ping, pong;

static void *spinner(void *arg) {
    (void)arg;
    for (int i = 0; i < 20; i++) {
        while (ping == pong)
            ;
        pong = ping;
    }
    return NULL;
}

static void check_preemption(void) {
    pthread_t t;
    long start = now_ms();
    pthread_create(&t, NULL, spinner, NULL);
    for (int i = 0; i < 20; i++) {
        ping++;
        while (pong != ping)
            ;
    }
    pthread_join(t, NULL);
    CHECK("preemption", 1, "");
    printf("preemption took %ld ms\n", now_ms() - start);
}

/* A sleeping thread does not hold up a working one, and a timed wait times out. */
static void *sleeper(void *arg) {
    (void)arg;
    usleep(100000);
    return (void *)now_ms();
}

static void check_sleep_and_timeout(void) {
    pthread_t t;
    long start = now_ms();
    pthread_create(&t, NULL, sleeper, NULL);
    volatile long spins = 0;
    while (now_ms() - start < 30)
        spins++; /* works while the other sleeps */
    long worked = now_ms() - start;
    void *woke;
    pthread_join(t, &woke);
    long slept = (long)woke - start;
    CHECK("sleep", worked < 90 && slept >= 100 && slept < 2000, "worked %ld ms, slept %ld ms",
          worked, slept);

    pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t c = PTHREAD_COND_INITIALIZER;
    struct timespec deadline;
    /* Measured from before the deadline is taken: a delay between the two (a loaded machine)
     * only makes the wait look longer, never shorter. */
    start = now_ms();
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_nsec += 50 * 1000000;
    if (deadline.tv_nsec >= 1000000000) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&m);
    int r = pthread_cond_timedwait(&c, &m, &deadline);
    long waited = now_ms() - start;
    pthread_mutex_unlock(&m);
    CHECK("timedwait", r == ETIMEDOUT && waited >= 45 && waited < 2000, "r=%d after %ld ms", r,
          waited);
}

/* pthread_kill: the handler runs on the target thread. */
static volatile pid_t handled_on;
static volatile int handler_ran;

static void on_usr1(int sig) {
    (void)sig;
    handled_on = gettid_();
    handler_ran = 1;
}

static volatile pid_t waiter_tid;

static void *signal_target(void *arg) {
    (void)arg;
    waiter_tid = gettid_();
    while (!handler_ran)
        usleep(1000);
    return NULL;
}

static void check_thread_signal(void) {
    signal(SIGUSR1, on_usr1);
    pthread_t t;
    pthread_create(&t, NULL, signal_target, NULL);
    while (!waiter_tid)
        sched_yield();
    pthread_kill(t, SIGUSR1);
    pthread_join(t, NULL);
    CHECK("pthread_kill", handled_on == waiter_tid, "handled on %d, target %d", handled_on,
          waiter_tid);
}

/* /proc/self/status counts the threads; fork from a thread gives a one-thread child. */
static int threads_in_status(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    int n = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "Threads: %d", &n) == 1)
            break;
    if (f)
        fclose(f);
    return n;
}

static volatile int release_idle;

static void *idle(void *arg) {
    (void)arg;
    while (!release_idle)
        usleep(1000);
    return NULL;
}

static void *forker(void *arg) {
    (void)arg;
    pid_t child = fork();
    if (child == 0)
        _exit(threads_in_status() == 1 ? 5 : 6);
    int status = 0;
    waitpid(child, &status, 0);
    return (void *)(long)(WIFEXITED(status) ? WEXITSTATUS(status) : -1);
}

static void check_status_and_fork(void) {
    pthread_t a, b;
    pthread_create(&a, NULL, idle, NULL);
    pthread_create(&b, NULL, idle, NULL);
    int n = threads_in_status();
    pthread_t f;
    pthread_create(&f, NULL, forker, NULL);
    void *r;
    pthread_join(f, &r);
    release_idle = 1;
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    CHECK("proc-threads", n == 3, "Threads: %d, want 3", n);
    CHECK("fork-in-thread", (long)r == 5, "child status %ld", (long)r);
}

/* Sockets: a thread blocked in accept or recv lets the others run; a poll times out. */
static int listener;
static volatile long accepted_at;

static void *echo_server(void *arg) {
    (void)arg;
    int c = accept(listener, NULL, NULL);
    accepted_at = now_ms();
    char buf[64];
    ssize_t n;
    while ((n = recv(c, buf, sizeof buf, 0)) > 0)
        send(c, buf, n, 0);
    close(c);
    return NULL;
}

static volatile int poller_ready;

static void *poller(void *arg) {
    int fd = (int)(long)arg;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    /* A signal interrupts a long poll: its handler runs and poll fails with EINTR, even with
     * SA_RESTART (signal() sets it), as on Linux... */
    poller_ready = 1;
    int interrupted = poll(&p, 1, 5000) == -1 && errno == EINTR;
    /* ...and the next poll waits its own full timeout. */
    long start = now_ms();
    int r = poll(&p, 1, 60);
    long took = now_ms() - start;
    return (void *)(long)(interrupted && r == 0 && took >= 55 && took < 2000);
}

static void check_sockets(void) {
    listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(7777)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(listener, (struct sockaddr *)&a, sizeof a) || listen(listener, 4)) {
        CHECK("socket-threads", 0, "bind/listen: %s", strerror(errno));
        return;
    }
    pthread_t server;
    pthread_create(&server, NULL, echo_server, NULL);
    /* The server thread now waits in accept; this one must still run. */
    long start = now_ms();
    volatile long spins = 0;
    while (now_ms() - start < 40)
        spins++;
    int c = socket(AF_INET, SOCK_STREAM, 0);
    int connected = connect(c, (struct sockaddr *)&a, sizeof a) == 0;
    /* A second thread polls an idle socket meanwhile and times out. */
    int idle_sock = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in u = a;
    u.sin_port = htons(7778);
    bind(idle_sock, (struct sockaddr *)&u, sizeof u);
    pthread_t p;
    pthread_create(&p, NULL, poller, (void *)(long)idle_sock);
    while (!poller_ready)
        sched_yield();
    usleep(20000);
    pthread_kill(p, SIGUSR1); /* on_usr1 is its handler (check_thread_signal) */
    int echoed = 1;
    for (int i = 0; i < 100 && connected; i++) {
        char msg[32], back[32];
        int len = snprintf(msg, sizeof msg, "message %d", i);
        if (send(c, msg, len, 0) != len) {
            echoed = 0;
            break;
        }
        int got = 0;
        while (got < len) {
            ssize_t n = recv(c, back + got, len - got, 0);
            if (n <= 0)
                break;
            got += n;
        }
        echoed &= got == len && memcmp(msg, back, len) == 0;
    }
    void *timed_out;
    pthread_join(p, &timed_out);
    close(idle_sock);
    close(c);
    pthread_join(server, NULL);
    close(listener);
    CHECK("socket-threads", connected && echoed && accepted_at >= start + 40,
          "connected %d echoed %d accepted %ld ms after start", connected, echoed,
          accepted_at - start);
    CHECK("poll-timeout-in-thread", timed_out != NULL, "poll did not time out alone");
}

static void *exits_the_group(void *arg) {
    (void)arg;
    usleep(10000);
    exit(33); /* exit_group: the whole process ends, the main thread with it */
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc > 1 && strcmp(argv[1], "exit-group") == 0) {
        pthread_t t;
        pthread_create(&t, NULL, exits_the_group, NULL);
        for (;;)
            pause();
    }
    check_mutex();
    check_condvar();
    check_tls();
    check_preemption();
    check_sleep_and_timeout();
    check_thread_signal();
    check_status_and_fork();
    check_sockets();
    if (failures) {
        printf("%d failures\n", failures);
        return 1;
    }
    printf("threads: all ok\n");
    return 0;
}
