/* fileio.c - full-length positional I/O with errors that name the file. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "fileio.h"

int moe_pread_full(int fd, void *buf, size_t n, uint64_t off, const char *what)
{
	char *p = buf;
	while (n > 0) {
		ssize_t r = pread(fd, p, n, (off_t)off);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return moe_fail(MOE_EIO, "%s: read at offset %llu: %s", what,
					(unsigned long long)off, strerror(errno));
		}
		if (r == 0)
			return moe_fail(MOE_EFORMAT, "%s: truncated (file ends before offset %llu)",
					what, (unsigned long long)(off + n));
		p += r;
		n -= (size_t)r;
		off += (uint64_t)r;
	}
	return 0;
}

int moe_pwrite_full(int fd, const void *buf, size_t n, uint64_t off, const char *what)
{
	const char *p = buf;
	while (n > 0) {
		ssize_t r = pwrite(fd, p, n, (off_t)off);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return moe_fail(moe_errno_code(errno), "%s: write at offset %llu: %s", what,
					(unsigned long long)off, strerror(errno));
		}
		p += r;
		n -= (size_t)r;
		off += (uint64_t)r;
	}
	return 0;
}

int moe_read_file(const char *path, char **data, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return moe_fail(moe_errno_code(errno), "%s: %s", path, strerror(errno));
	struct stat st;
	if (fstat(fd, &st) != 0) {
		close(fd);
		return moe_fail(MOE_EIO, "%s: %s", path, strerror(errno));
	}
	if (st.st_size > MOE_MAX_SIDE_FILE) {
		close(fd);
		return moe_fail(MOE_EFORMAT, "%s: %lld bytes, more than the %d MB such a file may have", path,
				(long long)st.st_size, MOE_MAX_SIDE_FILE >> 20);
	}
	char *buf = malloc((size_t)st.st_size + 1);
	if (!buf) {
		close(fd);
		return moe_fail(MOE_ENOMEM, "%s: cannot allocate %lld bytes", path, (long long)st.st_size);
	}
	int rc = moe_pread_full(fd, buf, (size_t)st.st_size, 0, path);
	close(fd);
	if (rc) {
		free(buf);
		return rc;
	}
	buf[st.st_size] = '\0';
	*data = buf;
	*len = (size_t)st.st_size;
	return 0;
}

int moe_out_create(const char *path, char **tmp, int *fd)
{
	const size_t n = strlen(path) + 16;
	if (!(*tmp = malloc(n)))
		return moe_fail(MOE_ENOMEM, "out of memory");
	snprintf(*tmp, n, "%s.tmp.XXXXXX", path);
	if ((*fd = mkstemp(*tmp)) < 0) {
		const int e = errno;
		const int rc = moe_fail(moe_errno_code(e), "%s: cannot create a temporary file beside it: %s", path, strerror(e));
		free(*tmp);
		*tmp = NULL;
		return rc;
	}
	fchmod(*fd, 0644);
	return 0;
}

int moe_out_commit(int fd, const char *tmp, const char *path, int force)
{
	if (fsync(fd) != 0)
		return moe_fail(moe_errno_code(errno), "%s: fsync: %s", tmp, strerror(errno));
	if (!force && access(path, F_OK) == 0)
		return moe_fail(MOE_EEXIST, "%s: appeared while writing; not overwritten", path);
	if (rename(tmp, path) != 0)
		return moe_fail(moe_errno_code(errno), "%s: rename: %s", path, strerror(errno));
	/* the rename itself is durable once the folder is synced */
	char *copy = strdup(path);
	const int dfd = copy ? open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
	free(copy);
	if (dfd >= 0) {
		fsync(dfd);
		close(dfd);
	}
	return 0;
}
