/* io.c - O_DIRECT reads through io_uring, or pread (see io.h). */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "common/error.h"
#include "io/io.h"

#define REG_CHUNK (1ull << 30) /* the kernel's limit on one registered buffer */

enum io_mode { IO_PREAD, IO_URING, IO_URING_UNREGISTERED };

struct done {
	uint64_t tag;
	int64_t res;
};

/* MOE_IO_FAULT=eio@N|short@N|flip@N|hang@N: the Nth completed read fails with EIO,
 * comes back half done, has one byte of its data flipped, or never comes back (a
 * disk that stopped answering). Tests of the error paths. */
enum fault { FAULT_NONE, FAULT_EIO, FAULT_SHORT, FAULT_FLIP, FAULT_HANG };

struct moe_io {
	int fd, direct;
	enum fault fault;
	uint64_t fault_at, completed;
	struct {
		uint64_t tag;
		void *dst;
		int used;
	} *flight; /* per read in flight, so that a completion knows its buffer */
	enum io_mode mode;
	struct io_uring ring;
	unsigned depth, inflight, stuck; /* stuck: reads swallowed by FAULT_HANG */
	char *arena;
	size_t arena_bytes;
	char mode_name[64];
	/* pread: reads queued until submit, then their completions */
	struct {
		void *dst;
		uint64_t off;
		size_t len;
		uint64_t tag;
	} *queued;
	size_t n_queued;
	struct done *done;
	size_t n_done, done_head;
};

int moe_io_create(const char *path, unsigned depth, void *arena, size_t arena_bytes, struct moe_io **out)
{
	struct moe_io *io = calloc(1, sizeof *io);
	if (!io)
		return moe_fail(MOE_ENOMEM, "out of memory");
	io->depth = depth ? depth : 1;
	io->arena = arena, io->arena_bytes = arena_bytes;
	io->queued = calloc(io->depth, sizeof *io->queued);
	io->done = calloc(io->depth, sizeof *io->done);
	io->flight = calloc(io->depth, sizeof *io->flight);
	const char *fault = getenv("MOE_IO_FAULT"), *at = fault ? strchr(fault, '@') : NULL;
	if (at) {
		io->fault = !strncmp(fault, "eio", 3) ? FAULT_EIO : !strncmp(fault, "short", 5) ? FAULT_SHORT
			  : !strncmp(fault, "flip", 4) ? FAULT_FLIP : !strncmp(fault, "hang", 4) ? FAULT_HANG : FAULT_NONE;
		io->fault_at = strtoull(at + 1, NULL, 10);
	}
	if (!io->queued || !io->done || !io->flight) {
		moe_io_free(io);
		return moe_fail(MOE_ENOMEM, "out of memory");
	}
	/* O_DIRECT keeps expert bytes out of the page cache; a file system without it
	 * (tmpfs) gets buffered reads, said in the mode name */
	io->fd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
	io->direct = io->fd >= 0;
	if (io->fd < 0 && errno == EINVAL)
		io->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (io->fd < 0) {
		int e = errno;
		free(io->queued);
		free(io->done);
		free(io->flight);
		free(io);
		return moe_fail(MOE_EIO, "%s: %s", path, strerror(e));
	}
	const char *force = getenv("MOE_IO");
	io->mode = IO_PREAD;
	if (!(force && strcmp(force, "pread") == 0) && io_uring_queue_init(io->depth, &io->ring, 0) == 0) {
		io->mode = IO_URING;
		int fd = io->fd;
		if (io_uring_register_files(&io->ring, &fd, 1) != 0)
			io->mode = IO_URING_UNREGISTERED;
		size_t n = (arena_bytes + REG_CHUNK - 1) / REG_CHUNK;
		struct iovec *iov = calloc(n ? n : 1, sizeof *iov);
		for (size_t i = 0; iov && i < n; i++) {
			iov[i].iov_base = io->arena + i * REG_CHUNK;
			iov[i].iov_len = arena_bytes - i * REG_CHUNK < REG_CHUNK ? arena_bytes - i * REG_CHUNK : REG_CHUNK;
		}
		/* registering pins the pages (RLIMIT_MEMLOCK for unprivileged users): plain reads if refused */
		if (io->mode == IO_URING && (!iov || !n || io_uring_register_buffers(&io->ring, iov, (unsigned)n) != 0)) {
			io_uring_unregister_files(&io->ring);
			io->mode = IO_URING_UNREGISTERED;
		}
		free(iov);
	}
	snprintf(io->mode_name, sizeof io->mode_name, "%s%s",
		 io->mode == IO_PREAD ? "pread" : io->mode == IO_URING ? "io_uring" : "io_uring (unregistered buffers)",
		 io->direct ? "" : ", buffered (no O_DIRECT here)");
	*out = io;
	return 0;
}

void moe_io_free(struct moe_io *io)
{
	if (!io)
		return;
	if (io->mode != IO_PREAD)
		io_uring_queue_exit(&io->ring);
	if (io->fd >= 0)
		close(io->fd);
	free(io->queued);
	free(io->done);
	free(io->flight);
	free(io);
}

const char *moe_io_mode(const struct moe_io *io) { return io->mode_name; }

unsigned moe_io_free_slots(const struct moe_io *io)
{
	return (io->mode == IO_PREAD ? io->depth - (unsigned)(io->n_queued + io->n_done - io->done_head)
				     : io->depth - io->inflight) - io->stuck;
}

int moe_io_read(struct moe_io *io, void *dst, uint64_t off, size_t len, uint64_t tag)
{
	if (!moe_io_free_slots(io))
		return moe_fail(MOE_EINVAL, "io: more than %u reads in flight", io->depth);
	unsigned f = 0;
	while (io->flight[f].used)
		f++;
	io->flight[f].used = 1, io->flight[f].tag = tag, io->flight[f].dst = dst;
	tag = f; /* the engine's own tag; the caller's comes back from flight[] */
	if (io->mode == IO_PREAD) {
		io->queued[io->n_queued].dst = dst, io->queued[io->n_queued].off = off;
		io->queued[io->n_queued].len = len, io->queued[io->n_queued].tag = tag;
		io->n_queued++;
		return 0;
	}
	struct io_uring_sqe *sqe = io_uring_get_sqe(&io->ring);
	if (!sqe)
		return moe_fail(MOE_EIO, "io_uring: submission queue full");
	const size_t at = (size_t)((char *)dst - io->arena), index = at / REG_CHUNK;
	if (io->mode == IO_URING && (at + len - 1) / REG_CHUNK == index) {
		io_uring_prep_read_fixed(sqe, 0, dst, (unsigned)len, off, (int)index);
		sqe->flags |= IOSQE_FIXED_FILE;
	} else {
		io_uring_prep_read(sqe, io->fd, dst, (unsigned)len, off);
	}
	io_uring_sqe_set_data64(sqe, tag);
	io->inflight++;
	return 0;
}

int moe_io_submit(struct moe_io *io)
{
	if (io->mode != IO_PREAD) {
		int r = io_uring_submit(&io->ring);
		return r < 0 ? moe_fail(MOE_EIO, "io_uring_submit: %s", strerror(-r)) : 0;
	}
	/* pread: do them now, in order; their completions wait in done[] */
	if (io->done_head == io->n_done)
		io->done_head = io->n_done = 0;
	for (size_t i = 0; i < io->n_queued; i++) {
		size_t got = 0;
		int64_t res = 0;
		while (got < io->queued[i].len) {
			ssize_t r = pread(io->fd, (char *)io->queued[i].dst + got, io->queued[i].len - got,
					  (off_t)(io->queued[i].off + got));
			if (r < 0 && errno == EINTR)
				continue;
			if (r <= 0) {
				res = r < 0 ? -errno : (int64_t)got;
				break;
			}
			got += (size_t)r;
			res = (int64_t)got;
		}
		if (io->n_done == io->depth) { /* compact */
			memmove(io->done, io->done + io->done_head, (io->n_done - io->done_head) * sizeof *io->done);
			io->n_done -= io->done_head, io->done_head = 0;
		}
		io->done[io->n_done++] = (struct done){io->queued[i].tag, res};
	}
	io->n_queued = 0;
	return 0;
}

/* the caller's tag back, and the injected fault if this completion is the one;
 * 0 if the completion is to be swallowed (FAULT_HANG) */
static int deliver(struct moe_io *io, uint64_t f, int64_t *res, uint64_t *tag)
{
	*tag = io->flight[f].tag;
	if (io->fault && ++io->completed == io->fault_at) {
		if (io->fault == FAULT_HANG) {
			io->stuck++; /* its flight entry stays taken, as a read the disk never answers */
			return 0;
		}
		if (io->fault == FAULT_EIO)
			*res = -EIO;
		else if (io->fault == FAULT_SHORT && *res > 0)
			*res /= 2;
		else if (io->fault == FAULT_FLIP && *res > 0)
			((unsigned char *)io->flight[f].dst)[*res / 2] ^= 0x40;
	}
	io->flight[f].used = 0;
	return 1;
}

int moe_io_complete(struct moe_io *io, int wait, uint64_t *tag, int64_t *res)
{
	if (io->mode == IO_PREAD) {
		while (io->done_head < io->n_done) {
			const uint64_t f = io->done[io->done_head].tag;
			*res = io->done[io->done_head++].res;
			if (deliver(io, f, res, tag))
				return 0;
		}
		return 1;
	}
	while (io->inflight) {
		struct io_uring_cqe *cqe;
		int r = wait ? io_uring_wait_cqe(&io->ring, &cqe) : io_uring_peek_cqe(&io->ring, &cqe);
		if (r == -EINTR)
			continue;
		if (r == -EAGAIN)
			return 1;
		if (r < 0)
			return moe_fail(MOE_EIO, "io_uring_wait_cqe: %s", strerror(-r));
		const uint64_t f = io_uring_cqe_get_data64(cqe);
		*res = cqe->res;
		io_uring_cqe_seen(&io->ring, cqe);
		io->inflight--;
		if (deliver(io, f, res, tag))
			return 0;
	}
	return 1;
}
