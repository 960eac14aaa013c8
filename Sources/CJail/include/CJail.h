// System calls the jailer needs that Swift cannot call directly (variadic
// prctl, raw pivot_root and close_range) or that read better in C.
#ifndef SKIFF_CJAIL_H
#define SKIFF_CJAIL_H
#include <sys/types.h>

/// unshare(2) of the mount, IPC, UTS, network and PID namespaces (the PID
/// one for the caller's next child). 0 or -1 with errno.
int cjail_unshare_namespaces(void);
/// SIGKILL when the parent dies. 0 or -1.
int cjail_die_with_parent(void);
/// A private tmpfs at `root`, with `binds` (count of them) mounted at the
/// same paths inside (directories; nosuid, nodev, noexec), then
/// pivot_root into it and the old root detached; the new root is read-only.
/// On failure: -1, errno set, and *step names what failed.
int cjail_enter_root(const char *root, const char *const *binds, int count, const char **step);
/// Closes every fd >= 3 not in keep[0..count) (sorted ascending). 0 or -1.
int cjail_close_other_fds(const int *keep, int count);
/// Drops every capability from the bounding set, then becomes uid/gid with
/// no supplementary groups (which clears the permitted and effective
/// sets), with no-new-privileges and not dumpable. 0 or -1; *step says where.
int cjail_drop_privileges(uid_t uid, gid_t gid, const char **step);
/// Whether `path` is the root of a cgroup v2 hierarchy.
int cjail_is_cgroup2(const char *path);
/// pipe2(fds, O_CLOEXEC). 0 or -1.
int cjail_pipe(int fds[2]);
/// fork(2), the child born in the cgroup open at `cgroup` (clone3 with
/// CLONE_INTO_CGROUP: no migration, which costs 10-20 ms here); where the
/// kernel lacks it, a plain fork and *joined = 0 (join it yourself).
pid_t cjail_fork_into_cgroup(int cgroup, int *joined);
#endif
