/* bench/spawn: runs a command, times spawn -> a marker on its stdout, and
 * reports its peak RSS. A separate small static program because the peak
 * RSS the kernel reports for a child (ru_maxrss) includes whatever the
 * forking process had mapped before exec: forked from Python that is
 * ~10 MiB; from this program it is a few hundred KiB.
 *   spawn MARKER TIMEOUT_MS CMD ARGS...  ->  "<ns to marker> <peak RSS KiB>"
 * The command is killed once the marker is seen if it is still running. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <poll.h>
#include <fcntl.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: spawn MARKER TIMEOUT_MS CMD...\n"); return 2; }
    const char *marker = argv[1];
    int timeout_ms = atoi(argv[2]);
    int fds[2];
    if (pipe(fds) != 0) { perror("pipe"); return 1; }
    long long t0 = now_ns();
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 1);
        close(fds[0]); close(fds[1]);
        int null = open("/dev/null", 0);
        dup2(null, 0); dup2(null, 2);
        execvp(argv[3], argv + 3);
        _exit(127);
    }
    close(fds[1]);
    char buf[65536];
    size_t len = 0;
    long long seen = -1;
    while (len < sizeof buf - 1) {
        struct pollfd p = { fds[0], POLLIN, 0 };
        int left = timeout_ms - (int)((now_ns() - t0) / 1000000);
        if (left <= 0 || poll(&p, 1, left) <= 0) break;
        ssize_t n = read(fds[0], buf + len, sizeof buf - 1 - len);
        if (n <= 0) break;
        len += n;
        buf[len] = 0;
        if (strstr(buf, marker)) { seen = now_ns() - t0; break; }
    }
    int status;
    struct rusage ru;
    if (waitpid(pid, &status, WNOHANG) == 0) kill(pid, SIGKILL);
    wait4(pid, &status, 0, &ru);
    if (seen < 0) { fprintf(stderr, "spawn: no marker from %s\n", argv[3]); return 1; }
    printf("%lld %ld\n", seen, ru.ru_maxrss);
    return 0;
}
