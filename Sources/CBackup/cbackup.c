#define _GNU_SOURCE
#include <fcntl.h>
#include <malloc.h>
#include <stdlib.h>
#include <unistd.h>
#include "CBackup.h"

int cbackup_syncfs(int fd) { return syncfs(fd); }

int cbackup_start_writeback(int fd) { return sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE); }

void cbackup_keep_large_buffers(void) {
    mallopt(M_MMAP_THRESHOLD, 64 << 20);
    mallopt(M_TRIM_THRESHOLD, 256 << 20);
}

int cbackup_open_direct(const char *path, int flags, int mode) { return open(path, flags | O_DIRECT, (mode_t)mode); }

void *cbackup_aligned_alloc(unsigned long alignment, unsigned long size) {
    void *p = NULL;
    return posix_memalign(&p, alignment, size) == 0 ? p : NULL;
}
