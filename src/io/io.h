/*
 * io.h - reads of expert blobs straight from the pack file into memory we own:
 * O_DIRECT (no page cache, so a RAM budget holds), through io_uring with many
 * reads in flight, a registered file and registered buffers; or, when io_uring is
 * refused (ENOSYS, EPERM under seccomp) or MOE_IO=pread asks for it, plain pread.
 * One thread drives an engine (the expert cache's I/O thread).
 */
#ifndef MOE_IO_IO_H
#define MOE_IO_IO_H

#include <stddef.h>
#include <stdint.h>

#define MOE_IO_ALIGN 4096 /* offsets, lengths and buffers of O_DIRECT reads */

struct moe_io;

/* Open path for reading with up to depth reads in flight. Buffers handed to
 * moe_io_read must lie in [arena, arena + arena_bytes) (registered with the ring). */
int moe_io_create(const char *path, unsigned depth, void *arena, size_t arena_bytes, struct moe_io **out);
void moe_io_free(struct moe_io *io);
/* "io_uring", "io_uring (unregistered buffers)" or "pread" */
const char *moe_io_mode(const struct moe_io *io);
unsigned moe_io_free_slots(const struct moe_io *io);

/* Queue a read of len bytes at off into dst (all MOE_IO_ALIGN multiples); tag
 * comes back with its completion. Submitted by moe_io_submit. */
int moe_io_read(struct moe_io *io, void *dst, uint64_t off, size_t len, uint64_t tag);
int moe_io_submit(struct moe_io *io);
/* One completion: *res is the byte count or -errno. With wait, blocks until one
 * arrives (if any read is in flight); returns 0 with one, 1 when none, <0 on error. */
int moe_io_complete(struct moe_io *io, int wait, uint64_t *tag, int64_t *res);

#endif
