// The backup code's C: Debian's libzstd (libzstd-dev) compresses chunks,
// and syncfs(2), which Glibc's Swift module does not export.
#ifndef SKIFF_CBACKUP_H
#define SKIFF_CBACKUP_H
#include <zstd.h>
int cbackup_syncfs(int fd);
/* Starts writing a file's dirty pages back, without waiting (sync_file_range). */
int cbackup_start_writeback(int fd);
/* Large buffers kept in the heap, not mapped and unmapped each time (mallopt). */
void cbackup_keep_large_buffers(void);
/* open(2) with O_DIRECT added (Glibc's Swift module lacks it). */
int cbackup_open_direct(const char *path, int flags, int mode);
/* posix_memalign, or NULL. */
void *cbackup_aligned_alloc(unsigned long alignment, unsigned long size);
#endif
