/* fuzz.h - shared by the libFuzzer targets (tests/fuzz/README): inputs as files
 * in memory, and a pack's checksums recomputed so mutations reach past them. */
#ifndef MOE_FUZZ_H
#define MOE_FUZZ_H

#define _GNU_SOURCE
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xxhash.h>

#include "moe.h"
#include "pack/format.h"

/* The bytes as a file: a memfd, named by /proc/self/fd/N in path. Returns its fd. */
static inline int fuzz_file(const uint8_t *data, size_t size, char *path, size_t cap)
{
	int fd = memfd_create("fuzz", 0);
	if (fd < 0)
		return -1;
	for (size_t done = 0; done < size;) {
		ssize_t k = write(fd, data + done, size - done);
		if (k <= 0) {
			close(fd);
			return -1;
		}
		done += (size_t)k;
	}
	snprintf(path, cap, "/proc/self/fd/%d", fd);
	return fd;
}

static inline uint64_t fuzz_u64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

/* Make the checksums of a (mutated) pack right again: the expert blobs' stored
 * checksums, the metadata, tensor directory and expert table checksums, the
 * superblock and the footer, and the file size in both. Leaves the rest as is. */
static inline void fuzz_reseal(uint8_t *b, size_t n)
{
	if (n < PACK_SUPERBLOCK_SIZE + PACK_FOOTER_SIZE)
		return;
	struct pack_superblock sb;
	memcpy(&sb, b, sizeof sb);
	sb.file_size = n;
	const uint32_t ns = sb.n_sections < PACK_MAX_SECTIONS ? sb.n_sections : PACK_MAX_SECTIONS;
	for (uint32_t i = 0; i < ns; i++) { /* stored checksums of the expert blobs */
		const struct pack_section *s = &sb.sections[i];
		if (s->kind != SEC_EXPERT_TABLE || s->offset > n || s->size > n - s->offset ||
		    s->size < sizeof(struct pack_expert_header))
			continue;
		struct pack_expert_header h;
		memcpy(&h, b + s->offset, sizeof h);
		const size_t room = (s->size - sizeof h) / sizeof(struct pack_expert_rec);
		for (size_t k = 0; k < h.count && k < room; k++) {
			uint8_t *at = b + s->offset + sizeof h + k * sizeof(struct pack_expert_rec);
			struct pack_expert_rec e;
			memcpy(&e, at, sizeof e);
			if (e.offset <= n && e.stored_size <= n - e.offset) {
				e.xxh3_stored = XXH3_64bits(b + e.offset, e.stored_size);
				memcpy(at, &e, sizeof e);
			}
		}
	}
	for (uint32_t i = 0; i < ns; i++) {
		struct pack_section *s = &sb.sections[i];
		if (s->kind >= SEC_META && s->kind <= SEC_EXPERT_TABLE && s->offset <= n && s->size <= n - s->offset)
			s->xxh3 = XXH3_64bits(b + s->offset, s->size);
	}
	sb.checksum = XXH3_64bits(&sb, offsetof(struct pack_superblock, checksum));
	memcpy(b, &sb, sizeof sb);
	struct pack_footer ft;
	memcpy(ft.magic, PACK_FOOTER_MAGIC, 8);
	ft.superblock_checksum = sb.checksum;
	ft.file_size = n;
	ft.checksum = XXH3_64bits(&ft, 24);
	memcpy(b + n - PACK_FOOTER_SIZE, &ft, sizeof ft);
}

/* The input opened as a pack, its checksums first recomputed if reseal: 0 and *p, *fd
 * (close both after), or -1. */
static inline int fuzz_open_pack(const uint8_t *data, size_t size, int reseal, moe_pack **p, int *fd)
{
	uint8_t *b = malloc(size ? size : 1);
	if (!b)
		return -1;
	memcpy(b, data, size);
	if (reseal)
		fuzz_reseal(b, size);
	char path[64];
	*fd = fuzz_file(b, size, path, sizeof path);
	free(b);
	if (*fd >= 0 && moe_pack_open(path, p) == 0)
		return 0;
	if (*fd >= 0)
		close(*fd);
	return -1;
}

#endif
