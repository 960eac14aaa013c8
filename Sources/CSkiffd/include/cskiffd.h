#pragma once
#include <sys/types.h>

/* Starts `path` with argv/envp in a new session, stdin from `input` (the
 * VM's console input FIFO, opened read-write),
 * stdout and stderr appended to `console`, no other descriptor inherited,
 * default signal dispositions and an empty mask (posix_spawn with glibc's
 * POSIX_SPAWN_SETSID and closefrom, which Swift's Glibc does not export).
 * Returns 0 and sets *pid, or an errno value. */
int cskiffd_spawn(const char *path, char *const argv[], char *const envp[], const char *input, const char *console, pid_t *pid);
