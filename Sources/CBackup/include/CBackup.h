// The backup code's C: Debian's libzstd (libzstd-dev) compresses chunks,
// and syncfs(2), which Glibc's Swift module does not export.
#ifndef SKIFF_CBACKUP_H
#define SKIFF_CBACKUP_H
#include <zstd.h>
int cbackup_syncfs(int fd);
#endif
