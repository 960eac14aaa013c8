/* pingpong N: two processes bounce one byte over two pipes N times; each
 * round trip is two context switches on one CPU (and four system calls).
 * Prints `pingpong: N round trips in X s: Y us per round trip`. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 1000;
    if (n < 1) return 2;
    int ping[2], pong[2];
    if (pipe(ping) || pipe(pong)) { perror("pipe"); return 2; }
    char b = 0;
    pid_t p = fork();
    if (p < 0) { perror("fork"); return 2; }
    if (p == 0) {
        for (long i = 0; i < n; i++) {
            if (read(ping[0], &b, 1) != 1 || write(pong[1], &b, 1) != 1) _exit(1);
        }
        _exit(0);
    }
    /* One round trip first, so the child is up and both are warm. */
    if (write(ping[1], &b, 1) != 1 || read(pong[0], &b, 1) != 1) return 1;
    double t0 = now();
    for (long i = 1; i < n; i++) {
        b++;
        if (write(ping[1], &b, 1) != 1 || read(pong[0], &b, 1) != 1) return 1;
    }
    double t = now() - t0;
    int st;
    waitpid(p, &st, 0);
    printf("pingpong: %ld round trips in %.3f s: %.1f us per round trip\n", n - 1, t, t / (n - 1) * 1e6);
    return 0;
}
