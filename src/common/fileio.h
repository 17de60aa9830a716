/* fileio.h - whole-buffer pread/pwrite that report short transfers as errors. */
#ifndef MOE_COMMON_FILEIO_H
#define MOE_COMMON_FILEIO_H

#include <stddef.h>
#include <stdint.h>

/* Read exactly n bytes at off; a short read is MOE_EFORMAT (file ended), errno is MOE_EIO.
 * what names the file in the message. */
int moe_pread_full(int fd, void *buf, size_t n, uint64_t off, const char *what);
int moe_pwrite_full(int fd, const void *buf, size_t n, uint64_t off, const char *what);
/* Read a whole (small) file into a NUL-terminated buffer: a tokenizer, a config, a
 * template, a text; at most MOE_MAX_SIDE_FILE bytes (tokenizer.json files are ~10 MB). */
#define MOE_MAX_SIDE_FILE (256 << 20)
int moe_read_file(const char *path, char **data, size_t *len);

/* An output file appears whole or not at all. moe_out_create makes a temporary
 * PATH.tmp.XXXXXX beside path (mode 0644) and gives its name (malloc'd) and fd;
 * the caller writes through fd, then moe_out_commit flushes it to disk, refuses
 * an existing path unless force, renames it over path and syncs the folder. On
 * any failure the caller unlinks *tmp. */
int moe_out_create(const char *path, char **tmp, int *fd);
int moe_out_commit(int fd, const char *tmp, const char *path, int force);

#endif
