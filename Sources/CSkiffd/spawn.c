#define _GNU_SOURCE
#include "cskiffd.h"
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>

int cskiffd_spawn(const char *path, char *const argv[], char *const envp[], const char *input, const char *console, pid_t *pid) {
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attributes;
    int r = posix_spawn_file_actions_init(&actions);
    if (r) return r;
    r = posix_spawnattr_init(&attributes);
    if (r) { posix_spawn_file_actions_destroy(&actions); return r; }
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    /* Read-write: the VMM holds a writer of its own input FIFO, so it never
     * reads an end of file between one attach and the next. */
    if (!r) r = posix_spawn_file_actions_addopen(&actions, 0, input, O_RDWR | O_NOFOLLOW, 0);
    if (!r) r = posix_spawn_file_actions_addopen(&actions, 1, console, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW, 0600);
    if (!r) r = posix_spawn_file_actions_adddup2(&actions, 1, 2);
    if (!r) r = posix_spawn_file_actions_addclosefrom_np(&actions, 3);
    if (!r) r = posix_spawnattr_setsigmask(&attributes, &none);
    if (!r) r = posix_spawnattr_setsigdefault(&attributes, &all);
    if (!r) r = posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    if (!r) r = posix_spawn(pid, path, &actions, &attributes, argv, envp);
    posix_spawnattr_destroy(&attributes);
    posix_spawn_file_actions_destroy(&actions);
    return r;
}
