/*
 * skiff-agent: /init, PID 1, of Skiff's default guest and of appliance VMs.
 *
 * It mounts the roots, prints the guest's banner, sets up the network,
 * starts the application, reaps every orphan, prints `skiff: exit N` when
 * the application ends (the host reads it from the console, GuestReport)
 * and resets the VM. Meanwhile it answers the host on vsock port 52.
 *
 * What to run comes from the kernel command line, which Linux hands to
 * init as environment variables:
 *   skiff_app=BASE64  an appliance image (skiff run IMAGE): its erofs root on
 *       /dev/vda under a tmpfs overlay at /newroot, the command run there
 *       as the image's user, busybox bound in at /.skiff/sh and
 *       /.skiff/busybox. BASE64 holds NUL-terminated entries, each a
 *       letter and a value (Sources/skiff/ImageRun.swift writes them):
 *       w workdir, u user (name or uid), i address/prefix, g gateway,
 *       n a name server, e NAME=VALUE, a one argument of the command.
 *   skiff_run=COMMAND  that command by /bin/sh -c in the initramfs;
 *   neither: a shell on the console (no `skiff: exit` line).
 *
 * Written in C, static, on purpose: it is the first guest process, each
 * system call costs about 0.4 ms of emulated kernel mode on PVM hosts and
 * each process started most of a second, and it must not depend on
 * anything in an application's image. Before the application runs it
 * starts no process and makes a few dozen calls (the shell /init it
 * replaced started about 30 processes).
 *
 * The protocol (host side: Sources/SkiffControl/GuestAgent.swift). Frames are a
 * type byte and a little-endian u32 length, then that many bytes (at most
 * 64 KiB). The first frame of a connection says what it is for:
 *   'x' exec: flags (u8: 1 = TTY), then NUL-terminated argv strings.
 *       Then host 'i' stdin bytes ('i' empty: EOF), 'z' rows u16, cols u16
 *       (TTY size); agent 'o' stdout, 'e' stderr, 'X' status (i32: the
 *       exit code, or 128 + the signal), then the agent closes.
 *   'h' health: agent 'H' "running PID" or "exited N".
 *   'n' identity: "ip=A/P gw=G mac=M hostname=H seed=HEX time=S.NS" (words
 *       may be left out); the agent re-addresses eth0, sets the hostname,
 *       mixes the seed into the kernel's entropy pool, sets the wall clock
 *       (a restored guest's clocks go on from the snapshot's moment);
 *       'N' "ok" or 'E' why.
 *   's' shutdown: SIGTERM to the application (SIGKILL after 10 s); the VM
 *       then resets as when it ends by itself; 'S' "ok".
 *   'f' freeze every filesystem mounted from a block device (FIFREEZE,
 *       newest mount first), for a backup's point in time: 'F' "frozen N"
 *       or 'E' why; they stay frozen until the host sends anything or
 *       closes the connection, and 10 s at most (a host that died must not
 *       leave the guest's writes blocked), then are thawed.
 *   't' thaw them now (FITHAW): 'F' "thawed N".
 *   'w' write a file: path NUL mode (octal text) NUL, then 'd' data frames,
 *       'd' empty at the end; 'W' "ok" or 'E'.
 *   'r' read a file: path; 'd' data frames, 'd' empty at the end, or 'E'.
 * Paths and commands are the application root's (a session chroots into
 * it). Anything malformed closes the connection; the agent goes on.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <net/if_arp.h>
#include <arpa/inet.h>
#include <net/if.h>
#include <net/route.h>
#include <linux/random.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <grp.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <termios.h>
#include <unistd.h>

#define PORT 52
#define MAX_FRAME 65536
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

static const char *root = "/"; /* the application's root: sessions chroot into it */
static pid_t app = -1;
static int app_status = -1; /* the application's status once it ended */
static int quiet;            /* --quiet: no `skiff: exit N` (the default guest's shell) */
static sigset_t unblocked;   /* the signal mask children start with */

static int write_all(int fd, const void *p, size_t n) {
    const char *b = p;
    while (n > 0) {
        ssize_t w = write(fd, b, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        b += w; n -= (size_t)w;
    }
    return 0;
}

static int read_all(int fd, void *p, size_t n) {
    char *b = p;
    while (n > 0) {
        ssize_t r = read(fd, b, n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        b += r; n -= (size_t)r;
    }
    return 0;
}

static int send_frame(int fd, char type, const void *p, uint32_t n) {
    unsigned char h[5] = {(unsigned char)type, n & 255, n >> 8 & 255, n >> 16 & 255, n >> 24 & 255};
    if (write_all(fd, h, 5) < 0) return -1;
    return n ? write_all(fd, p, n) : 0;
}

static int send_text(int fd, char type, const char *s) { return send_frame(fd, type, s, (uint32_t)strlen(s)); }

/* One frame into buf (MAX_FRAME + 1 bytes, NUL-terminated); its type, or -1. */
static int recv_frame(int fd, char *buf, uint32_t *len) {
    unsigned char h[5];
    if (read_all(fd, h, 5) < 0) return -1;
    uint32_t n = h[1] | h[2] << 8 | h[3] << 16 | (uint32_t)h[4] << 24;
    if (n > MAX_FRAME || (n && read_all(fd, buf, n) < 0)) return -1;
    buf[n] = 0;
    *len = n;
    return h[0];
}

static int status_code(int st) { return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st); }

/* The argv strings in a payload (NUL-terminated each); NULL if none or malformed. */
static char **split_argv(char *p, uint32_t n) {
    if (n == 0 || p[n - 1] != 0) return NULL;
    size_t count = 0;
    for (uint32_t i = 0; i < n; i++) if (p[i] == 0) count++;
    char **argv = calloc(count + 1, sizeof *argv);
    if (!argv) return NULL;
    size_t k = 0;
    for (uint32_t i = 0; i < n; i += (uint32_t)strlen(p + i) + 1) argv[k++] = p + i;
    return argv[0][0] ? argv : NULL;
}

static void enter_root(void) {
    if (chroot(root) != 0 || chdir("/") != 0) { perror("skiff-agent: chroot"); _exit(125); }
    setenv("PATH", DEFAULT_PATH, 1);
    setenv("HOME", "/root", 1);
}

static void session_exec(int s, char *buf, uint32_t n) {
    if (n < 2) return;
    int tty = buf[0] & 1;
    char **argv = split_argv(buf + 1, n - 1);
    if (!argv) { send_text(s, 'E', "exec: no command"); return; }
    int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1}, master = -1;
    if (tty) {
        master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
        if (master < 0 || grantpt(master) || unlockpt(master)) { send_text(s, 'E', "exec: no pty"); return; }
    } else if (pipe2(in, O_CLOEXEC) || pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) {
        send_text(s, 'E', "exec: no pipes"); return;
    }
    char *slave = tty ? ptsname(master) : NULL;
    /* vfork: no copy of this process's page tables (a fork here costs
     * hundreds of milliseconds on PVM hosts). The child only makes system
     * calls and changes the environment of this throwaway session process
     * before it execs. */
    pid_t pid = vfork();
    if (pid < 0) { send_text(s, 'E', "exec: fork failed"); return; }
    if (pid == 0) {
        sigprocmask(SIG_SETMASK, &unblocked, NULL);
        setsid();
        if (tty) {
            int t = open(slave, O_RDWR);
            if (t < 0) _exit(125);
            ioctl(t, TIOCSCTTY, 0);
            dup2(t, 0); dup2(t, 1); dup2(t, 2);
            setenv("TERM", "xterm", 0);
        } else {
            dup2(in[0], 0); dup2(out[1], 1); dup2(err[1], 2);
        }
        enter_root();
        execvp(argv[0], argv);
        fprintf(stderr, "skiff-agent: %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    int to_child = tty ? master : in[1], from_out = tty ? master : out[0], from_err = tty ? -1 : err[0];
    if (!tty) { close(in[0]); close(out[1]); close(err[1]); }
    fcntl(to_child, F_SETFL, O_NONBLOCK);
    /* Flow control: the socket is read only when what it sent is in the child. */
    char *pending = malloc(MAX_FRAME + 1), *data = malloc(MAX_FRAME);
    uint32_t pend_len = 0, pend_off = 0;
    int sock_open = 1, stdin_open = 1;
    while (from_out >= 0 || from_err >= 0) {
        struct pollfd p[4];
        int np = 0, i_sock = -1, i_out = -1, i_err = -1, i_in = -1;
        if (sock_open && pend_len == 0) { p[np] = (struct pollfd){s, POLLIN, 0}; i_sock = np++; }
        if (from_out >= 0) { p[np] = (struct pollfd){from_out, POLLIN, 0}; i_out = np++; }
        if (from_err >= 0) { p[np] = (struct pollfd){from_err, POLLIN, 0}; i_err = np++; }
        if (pend_len) { p[np] = (struct pollfd){to_child, POLLOUT, 0}; i_in = np++; }
        if (poll(p, (nfds_t)np, -1) < 0) { if (errno == EINTR) continue; break; }
        if (i_sock >= 0 && p[i_sock].revents) {
            uint32_t len;
            int t = recv_frame(s, pending, &len);
            if (t < 0) { sock_open = 0; kill(pid, SIGHUP); }
            else if (t == 'i' && len == 0 && stdin_open) { if (!tty) { close(to_child); to_child = -1; } else { write_all(master, "\004", 1); } stdin_open = 0; }
            else if (t == 'i' && stdin_open) { pend_len = len; pend_off = 0; }
            else if (t == 'z' && tty && len == 4) {
                struct winsize ws = {.ws_row = (unsigned char)pending[0] | (unsigned char)pending[1] << 8,
                                     .ws_col = (unsigned char)pending[2] | (unsigned char)pending[3] << 8};
                ioctl(master, TIOCSWINSZ, &ws);
            }
        }
        if (i_in >= 0 && p[i_in].revents) {
            ssize_t w = write(to_child, pending + pend_off, pend_len - pend_off);
            if (w > 0) { pend_off += (uint32_t)w; if (pend_off == pend_len) pend_len = 0; }
            else if (w < 0 && errno != EAGAIN && errno != EINTR) pend_len = 0;
        }
        int fds[2] = {i_out, i_err};
        for (int k = 0; k < 2; k++) {
            if (fds[k] < 0 || !p[fds[k]].revents) continue;
            int fd = k ? from_err : from_out;
            ssize_t r = read(fd, data, MAX_FRAME);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) { /* EOF (or EIO: the pty's last holder closed it) */
                if (!(tty && k == 0)) close(fd);
                if (k) from_err = -1; else from_out = -1;
                continue;
            }
            if (sock_open && send_frame(s, k ? 'e' : 'o', data, (uint32_t)r) < 0) sock_open = 0;
        }
    }
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    int32_t code = status_code(st);
    unsigned char c[4] = {code & 255, code >> 8 & 255, code >> 16 & 255, (uint32_t)code >> 24 & 255};
    if (sock_open) send_frame(s, 'X', c, 4);
}

static const char *word(const char *text, const char *key, char *out, size_t size) {
    size_t k = strlen(key);
    for (const char *p = text; *p; ) {
        while (*p == ' ' || *p == '\n') p++;
        size_t n = strcspn(p, " \n");
        if (n > k && strncmp(p, key, k) == 0 && p[k] == '=') {
            if (n - k - 1 >= size) return NULL;
            memcpy(out, p + k + 1, n - k - 1);
            out[n - k - 1] = 0;
            return out;
        }
        p += n;
    }
    return NULL;
}

/* Only these characters reach an applet's argv: no option or word can be smuggled. */
static int plain(const char *s) {
    if (!*s || *s == '-') return 0;
    for (; *s; s++) if (!strchr("0123456789abcdefABCDEF.:/-", *s) && !(*s >= 'g' && *s <= 'z')) return 0;
    return 1;
}

/* SIOCSIFHWADDR on an inet socket (busybox's ip needs AF_PACKET, which
 * Skiff's kernel leaves out); virtio-net takes a new MAC while up. */
static int set_mac(const char *ifname, const char *text) {
    unsigned b[6];
    char end;
    if (sscanf(text, "%2x:%2x:%2x:%2x:%2x:%2x%c", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5], &end) != 6 || (b[0] & 1)) {
        errno = EINVAL;
        return -1;
    }
    struct ifreq r;
    memset(&r, 0, sizeof r);
    strncpy(r.ifr_name, ifname, IFNAMSIZ - 1);
    r.ifr_hwaddr.sa_family = ARPHRD_ETHER;
    for (int i = 0; i < 6; i++) r.ifr_hwaddr.sa_data[i] = (char)b[i];
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int rc = ioctl(fd, SIOCSIFHWADDR, &r);
    int e = errno;
    close(fd);
    errno = e;
    return rc;
}

/* The address, its prefix and the default route, by ioctl: no process
 * is started (each costs most of a second of emulated kernel mode on PVM
 * hosts). SIOCSIFADDR replaces the interface's first address. */
static int set_ipv4(const char *ifname, const char *cidr, const char *gateway) {
    char a[32];
    const char *slash = strchr(cidr, '/');
    size_t n = slash ? (size_t)(slash - cidr) : strlen(cidr);
    char *end;
    long prefix = slash ? strtol(slash + 1, &end, 10) : 32;
    struct in_addr addr, gw;
    if (n >= sizeof a || (slash && (*end || end == slash + 1)) || prefix < 1 || prefix > 32) { errno = EINVAL; return -1; }
    memcpy(a, cidr, n);
    a[n] = 0;
    if (inet_pton(AF_INET, a, &addr) != 1 || inet_pton(AF_INET, gateway, &gw) != 1) { errno = EINVAL; return -1; }
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct ifreq r;
    memset(&r, 0, sizeof r);
    strncpy(r.ifr_name, ifname, IFNAMSIZ - 1);
    struct sockaddr_in *sin = (struct sockaddr_in *)&r.ifr_addr;
    sin->sin_family = AF_INET;
    sin->sin_addr = addr;
    int rc = ioctl(fd, SIOCSIFADDR, &r);
    if (rc == 0) {
        sin->sin_addr.s_addr = htonl(prefix == 32 ? 0xffffffffu : ~(0xffffffffu >> prefix));
        rc = ioctl(fd, SIOCSIFNETMASK, &r);
    }
    if (rc == 0 && (rc = ioctl(fd, SIOCGIFFLAGS, &r)) == 0) {
        r.ifr_flags |= IFF_UP | IFF_RUNNING;
        rc = ioctl(fd, SIOCSIFFLAGS, &r);
    }
    if (rc == 0) {
        struct rtentry rt;
        memset(&rt, 0, sizeof rt);
        ((struct sockaddr_in *)&rt.rt_dst)->sin_family = AF_INET;
        ((struct sockaddr_in *)&rt.rt_genmask)->sin_family = AF_INET;
        ((struct sockaddr_in *)&rt.rt_gateway)->sin_family = AF_INET;
        ((struct sockaddr_in *)&rt.rt_gateway)->sin_addr = gw;
        rt.rt_flags = RTF_UP | RTF_GATEWAY;
        rt.rt_dev = (char *)ifname;
        rc = ioctl(fd, SIOCADDRT, &rt);
        if (rc != 0 && errno == EEXIST) rc = 0;
    }
    int e = errno;
    close(fd);
    errno = e;
    return rc;
}

static void session_identity(int s, const char *text) {
    char ip[64], gw[64], mac[32], host[65], seed[129];
    if (word(text, "mac", mac, sizeof mac)) {
        if (set_mac("eth0", mac) != 0) {
            char m[96];
            snprintf(m, sizeof m, "identity: eth0 did not take MAC %.20s: %s", mac, strerror(errno));
            send_text(s, 'E', m);
            return;
        }
    }
    if (word(text, "ip", ip, sizeof ip)) {
        if (!word(text, "gw", gw, sizeof gw) || set_ipv4("eth0", ip, gw) != 0) {
            char m[128];
            snprintf(m, sizeof m, "identity: eth0 did not take %.40s via %.20s: %s", ip, word(text, "gw", gw, sizeof gw) ? gw : "?", strerror(errno));
            send_text(s, 'E', m);
            return;
        }
    }
    if (word(text, "hostname", host, sizeof host)) {
        if (!plain(host) || sethostname(host, strlen(host))) { send_text(s, 'E', "identity: bad hostname"); return; }
    }
    if (word(text, "seed", seed, sizeof seed)) {
        struct { int count, size; unsigned char bytes[64]; } e = {0, 0, {0}};
        size_t n = strlen(seed) / 2;
        for (size_t i = 0; i < n && i < 64; i++) {
            unsigned v;
            if (sscanf(seed + 2 * i, "%2x", &v) != 1) { send_text(s, 'E', "identity: bad seed"); return; }
            e.bytes[i] = (unsigned char)v;
        }
        e.size = (int)n; e.count = (int)n * 8;
        int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
        /* RNDADDENTROPY credits it: a restored VM's pool is not its parent's. */
        if (fd < 0 || ioctl(fd, RNDADDENTROPY, &e) != 0) { if (fd >= 0) close(fd); send_text(s, 'E', "identity: entropy not taken"); return; }
        close(fd);
    }
    char when[32];
    if (word(text, "time", when, sizeof when)) {
        char *end;
        long long sec = strtoll(when, &end, 10), nsec = 0;
        if (*end == '.') nsec = strtoll(end + 1, &end, 10);
        struct timespec ts = {(time_t)sec, (long)nsec};
        if (*end || sec <= 0 || nsec < 0 || nsec > 999999999 || clock_settime(CLOCK_REALTIME, &ts) != 0) {
            send_text(s, 'E', "identity: wall clock not set");
            return;
        }
    }
    send_text(s, 'N', "ok");
}

/* The mount points of filesystems on block devices, newest first. */
static int block_mounts(char points[][256], int max) {
    FILE *f = fopen("/proc/mounts", "re");
    if (!f) return 0;
    char line[1024], all[64][256];
    int n = 0;
    while (n < 64 && fgets(line, sizeof line, f)) {
        char source[256], point[256];
        if (sscanf(line, "%255s %255s", source, point) != 2 || strncmp(source, "/dev/", 5) != 0) continue;
        snprintf(all[n++], 256, "%s", point);
    }
    fclose(f);
    int k = 0;
    for (int i = n - 1; i >= 0 && k < max; i--) snprintf(points[k++], 256, "%s", all[i]);
    return k;
}

/* FIFREEZE or FITHAW on each; the count done. A filesystem that cannot be
 * frozen (read-only ones may refuse) is left as it is. */
static int freeze_all(char points[][256], int n, int freeze) {
    int done = 0;
    for (int i = 0; i < n; i++) {
        int fd = open(points[freeze ? i : n - 1 - i], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0) continue;
        if (ioctl(fd, freeze ? FIFREEZE : FITHAW, 0) == 0) done++;
        close(fd);
    }
    return done;
}

static void session_freeze(int s, int freeze) {
    char points[32][256], m[64];
    int n = block_mounts(points, 32);
    if (!freeze) {
        snprintf(m, sizeof m, "thawed %d", freeze_all(points, n, 0));
        send_text(s, 'F', m);
        return;
    }
    int frozen = freeze_all(points, n, 1);
    snprintf(m, sizeof m, "frozen %d", frozen);
    send_text(s, 'F', m);
    struct pollfd p = {s, POLLIN, 0};
    poll(&p, 1, 10000); /* the host's next frame, its close, or 10 s */
    freeze_all(points, n, 0);
}

static void session_files(int s, int type, char *buf, uint32_t n) {
    char *data = malloc(MAX_FRAME + 1);
    if (!data) return;
    if (chroot(root) != 0 || chdir("/") != 0) { send_text(s, 'E', "files: no root"); return; }
    if (type == 'r') {
        int fd = open(buf, O_RDONLY | O_CLOEXEC);
        if (fd < 0) { snprintf(data, 256, "%s: %s", buf, strerror(errno)); send_text(s, 'E', data); return; }
        ssize_t r;
        while ((r = read(fd, data, MAX_FRAME)) > 0) if (send_frame(s, 'd', data, (uint32_t)r) < 0) return;
        if (r < 0) { send_text(s, 'E', "read failed"); return; }
        send_frame(s, 'd', NULL, 0);
        return;
    }
    size_t plen = strnlen(buf, n);
    if (plen == 0 || plen + 1 >= n || buf[n - 1] != 0) { send_text(s, 'E', "write: needs path and mode"); return; }
    unsigned long mode = strtoul(buf + plen + 1, NULL, 8) & 07777;
    int fd = open(buf, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, (mode_t)mode);
    if (fd < 0) { snprintf(data, 256, "%s: %s", buf, strerror(errno)); send_text(s, 'E', data); return; }
    for (;;) {
        uint32_t len;
        int t = recv_frame(s, data, &len);
        if (t != 'd') { close(fd); return; }
        if (len == 0) break;
        if (write_all(fd, data, len) < 0) { close(fd); send_text(s, 'E', "write failed"); return; }
    }
    fchmod(fd, (mode_t)mode);
    close(fd);
    send_text(s, 'W', "ok");
}

/* A connection whose first frame asks for exec, files, freeze or
 * shutdown: in its own process (so a stuck session holds nothing). */
static void session(int s, int t, char *buf, uint32_t n) {
    switch (t) {
    case 'x': session_exec(s, buf, n); break;
    case 's':
        if (app > 0) kill(app, SIGTERM);
        send_text(s, 'S', "ok");
        sleep(10);
        if (app > 0) kill(app, SIGKILL);
        break;
    case 'f': case 't': session_freeze(s, t == 'f'); break;
    case 'w': case 'r': session_files(s, t, buf, n); break;
    default: break;
    }
    close(s);
    _exit(0);
}

/* A new connection: its first frame read here, within a second; health
 * and identity answered here at once (a fork costs most of a second of
 * emulated kernel mode on PVM hosts), the rest in a session process. */
static void connection(int s, char *buf) {
    struct timeval tv = {1, 0};
    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    uint32_t n;
    int t = recv_frame(s, buf, &n);
    char m[64];
    if (t == 'h') {
        if (app_status >= 0) snprintf(m, sizeof m, "exited %d", app_status);
        else snprintf(m, sizeof m, "running %d", (int)app);
        send_text(s, 'H', m);
    } else if (t == 'n') {
        session_identity(s, buf);
    } else if (t >= 0) {
        tv.tv_sec = 0;
        setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        if (fork() == 0) session(s, t, buf, n);
    }
    close(s);
}

static void finish(void) {
    if (!quiet) printf("skiff: exit %d\n", app_status);
    fflush(stdout);
    sync();
    reboot(RB_AUTOBOOT);
    _exit(app_status);
}

static void on_child(int sig) { (void)sig; } /* only to end ppoll */

/* Terminals for `exec -t`: devpts at /dev/pts, bound into the
 * application's root too (its programs look their terminal up there).
 * By mount(2): no process for it. Errors leave exec without a TTY. */
static void mount_ptys(void) {
    mkdir("/dev/pts", 0755);
    mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "mode=620,ptmxmode=666");
    if (strcmp(root, "/") != 0) {
        char p[4096];
        snprintf(p, sizeof p, "%s/dev/pts", root);
        mkdir(p, 0755);
        mount("/dev/pts", p, NULL, MS_BIND, NULL);
    }
}

/* What the application runs as, and where. */
static const char *workdir = "/";
static uid_t app_uid;
static gid_t app_gid, app_groups[64];
static int app_ngroups;

/* A refusal before the application starts: the reason, `skiff: exit 125`
 * (the status `docker run` gives when it cannot start a container), reset. */
static void refuse(const char *fmt, const char *what) {
    printf("skiff: ");
    printf(fmt, what);
    printf("\n");
    app_status = 125;
    finish();
}

/* `skiff guest: Linux 6.1.x, N CPU(s), M MiB`: uname and sysinfo, no
 * files read. */
static void banner(void) {
    struct utsname u;
    struct sysinfo si;
    if (uname(&u) != 0 || sysinfo(&si) != 0) return;
    printf("skiff guest: Linux %s, %ld CPU(s), %llu MiB\n", u.release, sysconf(_SC_NPROCESSORS_ONLN),
           (unsigned long long)si.totalram * si.mem_unit >> 20);
    fflush(stdout);
}

/* RFC 4648 base64 into out (size bytes); the length, or -1. */
static long base64_decode(const char *in, unsigned char *out, size_t size) {
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t n = 0;
    unsigned v = 0;
    int bits = 0;
    for (; *in && *in != '='; in++) {
        const char *c = strchr(alphabet, *in);
        if (!c || !*c) return -1;
        v = v << 6 | (unsigned)(c - alphabet);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (n == size) return -1;
            out[n++] = (unsigned char)(v >> bits);
        }
    }
    return (long)n;
}

/* A whole small file (at most size - 1 bytes), NUL-terminated; its length or -1. */
static long read_file(const char *path, char *buf, size_t size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    size_t n = 0;
    ssize_t r;
    while (n < size - 1 && ((r = read(fd, buf + n, size - 1 - n)) > 0 || (r < 0 && errno == EINTR)))
        if (r > 0) n += (size_t)r;
    close(fd);
    buf[n] = 0;
    return (long)n;
}

/* The user, by name or uid, in the image's /etc/passwd, and its groups in
 * /etc/group: what busybox's su looked up before. 0 if found. */
static int find_user(const char *who, char *name, size_t name_size) {
    static char text[1 << 18];
    char path[4200];
    snprintf(path, sizeof path, "%s/etc/passwd", root);
    if (read_file(path, text, sizeof text) < 0) return -1;
    int numeric = *who && strspn(who, "0123456789") == strlen(who), found = 0;
    for (char *line = strtok(text, "\n"); line && !found; line = strtok(NULL, "\n")) {
        char *f[4] = {line, NULL, NULL, NULL};
        for (int k = 1; k < 4 && f[k - 1]; k++) { char *c = strchr(f[k - 1], ':'); if (c) { *c = 0; f[k] = c + 1; } }
        if (!f[3] || !strchr(f[3], ':')) continue;
        *strchr(f[3], ':') = 0;
        if (numeric ? strcmp(f[2], who) != 0 : strcmp(f[0], who) != 0) continue;
        if (strlen(f[0]) >= name_size) return -1;
        strcpy(name, f[0]);
        app_uid = (uid_t)strtoul(f[2], NULL, 10);
        app_gid = (gid_t)strtoul(f[3], NULL, 10);
        found = 1;
    }
    if (!found) return -1;
    app_groups[0] = app_gid;
    app_ngroups = 1;
    snprintf(path, sizeof path, "%s/etc/group", root);
    if (read_file(path, text, sizeof text) < 0) return 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        char *gid = strchr(line, ':');
        gid = gid ? strchr(gid + 1, ':') : NULL;
        char *members = gid ? strchr(gid + 1, ':') : NULL;
        if (!members) continue;
        *members++ = 0;
        for (char *m = members; *m && app_ngroups < 64; ) {
            size_t len = strcspn(m, ",");
            if (len == strlen(name) && strncmp(m, name, len) == 0) { app_groups[app_ngroups++] = (gid_t)strtoul(gid + 1, NULL, 10); break; }
            m += len + (m[len] == ',');
        }
    }
    return 0;
}

/* An empty file at path with src bound onto it. */
static void bind_file(const char *src, const char *path) {
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0755);
    if (fd >= 0) close(fd);
    mount(src, path, NULL, MS_BIND, NULL);
}

static int up(const char *ifname) {
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct ifreq r;
    memset(&r, 0, sizeof r);
    strncpy(r.ifr_name, ifname, IFNAMSIZ - 1);
    int rc = ioctl(fd, SIOCGIFFLAGS, &r);
    if (rc == 0) { r.ifr_flags |= IFF_UP; rc = ioctl(fd, SIOCSIFFLAGS, &r); }
    close(fd);
    return rc;
}

/* skiff_app: the image's root, network and user; the command into cmd. */
static void setup_image(const char *encoded, char **cmd, size_t max) {
    static unsigned char spec[4096];
    long n = base64_decode(encoded, spec, sizeof spec - 1);
    if (n <= 0 || spec[n - 1] != 0) refuse("%s", "the image's start (skiff_app) is malformed");
    const char *user = "root", *ip = NULL, *gw = NULL, *dns[8];
    size_t ndns = 0, argc = 0;
    for (long i = 0; i < n; i += (long)strlen((char *)spec + i) + 1) {
        char *v = (char *)spec + i + 1;
        switch (spec[i]) {
        case 'w': workdir = v; break;
        case 'u': user = v; break;
        case 'i': ip = v; break;
        case 'g': gw = v; break;
        case 'n': if (ndns < 8) dns[ndns++] = v; break;
        case 'e': if (strchr(v, '=')) putenv(v); break;
        case 'a': if (argc + 1 < max) cmd[argc++] = v; break;
        default: break;
        }
    }
    cmd[argc] = NULL;
    if (argc == 0) refuse("%s", "the image names no command");
    unsetenv("skiff_app");
    setenv("HOME", "/", 1);
    root = "/newroot";
    mkdir("/image", 0755); mkdir("/rw", 0755); mkdir("/newroot", 0755);
    if (mount("/dev/vda", "/image", "erofs", MS_RDONLY, NULL) != 0) refuse("%s", "the image's root (/dev/vda) does not mount");
    if (mount("tmpfs", "/rw", "tmpfs", 0, "mode=0755") != 0 || mkdir("/rw/upper", 0755) || mkdir("/rw/work", 0755) ||
        mount("overlay", "/newroot", "overlay", 0, "lowerdir=/image,upperdir=/rw/upper,workdir=/rw/work") != 0)
        refuse("the writable layer over the image's root: %s", strerror(errno));
    const char *dirs[] = {"proc", "sys", "dev", "tmp", ".skiff"};
    char p[4200];
    for (size_t k = 0; k < sizeof dirs / sizeof *dirs; k++) { snprintf(p, sizeof p, "/newroot/%s", dirs[k]); mkdir(p, 0755); }
    mount("proc", "/newroot/proc", "proc", 0, NULL);
    mount("sysfs", "/newroot/sys", "sysfs", 0, NULL);
    mount("devtmpfs", "/newroot/dev", "devtmpfs", 0, NULL);
    mount("tmpfs", "/newroot/tmp", "tmpfs", 0, NULL);
    bind_file("/bin/busybox", "/newroot/.skiff/sh");
    bind_file("/bin/busybox", "/newroot/.skiff/busybox");
    up("lo");
    if (ip) {
        if (!gw || set_ipv4("eth0", ip, gw) != 0) printf("skiff: eth0 did not take %s\n", ip);
        unlink("/newroot/etc/resolv.conf");
        FILE *f = fopen("/newroot/etc/resolv.conf", "we");
        for (size_t k = 0; f && k < ndns; k++) fprintf(f, "nameserver %s\n", dns[k]);
        if (f) fclose(f);
    }
    char name[256];
    if (find_user(user, name, sizeof name) != 0) refuse("user %s is not in the image's /etc/passwd", user);
}

int main(void) {
    static char *cmd[256];
    setenv("PATH", DEFAULT_PATH, 1);
    mount("proc", "/proc", "proc", 0, NULL);
    mount("sysfs", "/sys", "sysfs", 0, NULL);
    mount("devtmpfs", "/dev", "devtmpfs", 0, NULL); /* may be there already */
    mount("tmpfs", "/tmp", "tmpfs", 0, NULL);
    banner();
    const char *image = getenv("skiff_app"), *run = getenv("skiff_run");
    if (image) {
        setup_image(image, cmd, sizeof cmd / sizeof *cmd);
    } else if (run) {
        cmd[0] = "/bin/sh"; cmd[1] = "-c"; cmd[2] = (char *)run;
    } else {
        quiet = 1;
        cmd[0] = "/bin/busybox"; cmd[1] = "setsid"; cmd[2] = "cttyhack"; cmd[3] = "sh";
    }
    mount_ptys();
    /* SIGCHLD stays blocked except inside ppoll, so none is missed between a reap and the wait. */
    struct sigaction sa = {.sa_handler = on_child, .sa_flags = SA_NOCLDSTOP};
    sigaction(SIGCHLD, &sa, NULL);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigprocmask(SIG_BLOCK, &chld, &unblocked);
    fflush(stdout);
    app = fork();
    if (app == 0) {
        sigprocmask(SIG_SETMASK, &unblocked, NULL);
        if (strcmp(root, "/") != 0 && (chroot(root) != 0 || chdir("/") != 0)) { perror("skiff: chroot"); _exit(125); }
        if (chdir(workdir) != 0) { fprintf(stderr, "skiff: cannot enter %s: %s\n", workdir, strerror(errno)); _exit(125); }
        if (app_uid != 0 && (setgroups((size_t)app_ngroups, app_groups) != 0 || setgid(app_gid) != 0 || setuid(app_uid) != 0)) {
            perror("skiff: dropping to the image's user");
            _exit(125);
        }
        execvp(cmd[0], cmd);
        fprintf(stderr, "skiff: %s: %s\n", cmd[0], strerror(errno));
        _exit(errno == ENOENT ? 127 : 126);
    }
    int l = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_port = PORT, .svm_cid = VMADDR_CID_ANY};
    if (l >= 0 && (bind(l, (struct sockaddr *)&a, sizeof a) || listen(l, 16))) {
        close(l);
        l = -1; /* no vsock device: the application runs without the host's requests */
    }
    char *buf = malloc(MAX_FRAME + 1);
    if (!buf) l = -1;
    for (;;) {
        int st;
        pid_t p;
        /* Whatever ended: the application, a session, an orphan. */
        while ((p = waitpid(-1, &st, WNOHANG)) > 0)
            if (p == app) { app_status = status_code(st); finish(); }
        if (l >= 0) {
            int s;
            while ((s = accept4(l, NULL, NULL, SOCK_CLOEXEC)) >= 0) connection(s, buf);
        }
        struct pollfd pf = {l, POLLIN, 0};
        ppoll(&pf, l >= 0 ? 1 : 0, NULL, &unblocked);
    }
}
