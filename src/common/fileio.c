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

static const char *stdout_prog = "moemap";
static int stdout_state; /* MOE_STDOUT_OK, _FAILED (said so), _CLOSED */

int moe_stdout_check(void)
{
	if (stdout_state == MOE_STDOUT_OK && (fflush(stdout) != 0 || ferror(stdout))) {
		const int e = errno;
		stdout_state = e == EPIPE ? MOE_STDOUT_CLOSED : MOE_STDOUT_FAILED;
		if (e != EPIPE)
			fprintf(stderr, "%s: standard output: %s\n", stdout_prog, e ? strerror(e) : "write error");
	}
	return stdout_state;
}

static void close_stdout(void)
{
	if (moe_stdout_check() == MOE_STDOUT_OK && fclose(stdout) != 0 && errno != EPIPE) {
		fprintf(stderr, "%s: standard output: %s\n", stdout_prog, strerror(errno));
		stdout_state = MOE_STDOUT_FAILED;
	}
	if (stdout_state == MOE_STDOUT_FAILED)
		_exit(1);
}

void moe_check_stdout_at_exit(const char *prog)
{
	stdout_prog = prog;
	atexit(close_stdout);
}

static char sigbus_msg[512];
static size_t sigbus_len;

static void on_sigbus(int sig)
{
	(void)sig;
	/* threads reading the mapping fault together: the first one says it, once */
	static volatile sig_atomic_t said;
	if (__atomic_exchange_n(&said, 1, __ATOMIC_SEQ_CST) == 0 && write(STDERR_FILENO, sigbus_msg, sigbus_len) < 0) {
		/* nothing more to do in a handler */
	}
	_exit(1);
}

void moe_trap_truncated_mapping(const char *prog, const char *path)
{
	int n = snprintf(sigbus_msg, sizeof sigbus_msg, "%s: %s: the file was truncated or changed while in use\n", prog,
			 path);
	sigbus_len = n < 0 ? 0 : (size_t)n < sizeof sigbus_msg ? (size_t)n : sizeof sigbus_msg - 1;
	struct sigaction sa = {.sa_handler = on_sigbus};
	sigemptyset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, NULL);
}
