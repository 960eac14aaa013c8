#define _GNU_SOURCE
#include "CJail.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <linux/magic.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/capability.h>
#include <linux/sched.h>
#include <stdint.h>

int cjail_unshare_namespaces(void) {
    return unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET | CLONE_NEWPID);
}

int cjail_die_with_parent(void) { return prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0); }

// mkdir -p, each component 0755 (the jail's uid must traverse them).
static int make_directories(const char *path) {
    char p[PATH_MAX];
    if (snprintf(p, sizeof p, "%s", path) >= (int)sizeof p) { errno = ENAMETOOLONG; return -1; }
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = 0;
        if (mkdir(p, 0755) != 0 && errno != EEXIST) return -1;
        *s = '/';
    }
    return mkdir(p, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

int cjail_enter_root(const char *root, const char *const *binds, int count, const char **step) {
    *step = "make mounts private";
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) return -1;
    *step = "mount the jail's tmpfs";
    if (mount("skiff-jail", root, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=64k,mode=0755") != 0) return -1;
    char target[PATH_MAX];
    for (int i = 0; i < count; i++) {
        *step = "bind a host directory into the jail";
        if (snprintf(target, sizeof target, "%s%s", root, binds[i]) >= (int)sizeof target) { errno = ENAMETOOLONG; return -1; }
        if (make_directories(target) != 0) return -1;
        if (mount(binds[i], target, NULL, MS_BIND, NULL) != 0) return -1;
        if (mount(NULL, target, NULL, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0) return -1;
    }
    *step = "pivot_root";
    if (chdir(root) != 0) return -1;
    // pivot_root(".", "."): the old root ends up under the new one, where
    // it is detached at once (no directory for it needed).
    if (syscall(SYS_pivot_root, ".", ".") != 0) return -1;
    if (umount2(".", MNT_DETACH) != 0) return -1;
    if (chdir("/") != 0) return -1;
    *step = "make the jail's root read-only";
    if (mount(NULL, "/", NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0) return -1;
    return 0;
}

int cjail_close_other_fds(const int *keep, int count) {
    unsigned int next = 3;
    for (int i = 0; i <= count; i++) {
        unsigned int end = i < count ? (unsigned int)keep[i] : ~0U;
        if (i < count && keep[i] < 3) continue;
        if (end > next && syscall(SYS_close_range, next, end - 1, 0) != 0) return -1;
        if (i < count) next = (unsigned int)keep[i] + 1;
    }
    return 0;
}

int cjail_drop_privileges(uid_t uid, gid_t gid, const char **step) {
    *step = "drop the capability bounding set";
    for (int cap = 0; cap <= CAP_LAST_CAP; cap++)
        if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL) return -1;
    *step = "drop supplementary groups";
    if (setgroups(0, NULL) != 0) return -1;
    *step = "set the jail's gid";
    if (setresgid(gid, gid, gid) != 0) return -1;
    *step = "set the jail's uid";
    if (setresuid(uid, uid, uid) != 0) return -1;
    *step = "clear ambient capabilities";
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0 && errno != EINVAL) return -1;
    *step = "set no-new-privileges";
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -1;
    *step = "set not dumpable";
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) return -1;
    return 0;
}

int cjail_is_cgroup2(const char *path) {
    struct statfs fs;
    return statfs(path, &fs) == 0 && fs.f_type == CGROUP2_SUPER_MAGIC;
}

int cjail_pipe(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

pid_t cjail_fork_into_cgroup(int cgroup, int *joined) {
    *joined = 0;
    if (cgroup >= 0) {
        struct clone_args args;
        memset(&args, 0, sizeof args);
        args.flags = CLONE_INTO_CGROUP;
        args.exit_signal = SIGCHLD;
        args.cgroup = (uint64_t)cgroup;
        // The child's glibc thread data still names the parent's thread:
        // it must only make plain system calls (and fork) from here on,
        // which the keeper does.
        long pid = syscall(SYS_clone3, &args, sizeof args);
        if (pid >= 0) { *joined = 1; return (pid_t)pid; }
        if (errno != ENOSYS && errno != EINVAL && errno != E2BIG) return -1;
    }
    return fork();
}
