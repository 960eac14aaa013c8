#define _GNU_SOURCE
#include <unistd.h>
#include "CBackup.h"

int cbackup_syncfs(int fd) { return syncfs(fd); }
