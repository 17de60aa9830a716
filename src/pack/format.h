/*
 * format.h - the pack's on-disk layout (moepack(5) documents it byte by byte).
 * All integers little-endian; structures are read with memcpy, never cast from
 * the mapping, so a hostile file cannot cause unaligned access.
 *
 *   0                superblock (512 bytes, padded to 4096)
 *   sections[META]   typed key/values
 *   sections[TDIR]   dense-tensor directory
 *   sections[ETAB]   expert table
 *   sections[DENSE]  dense tensor data, each tensor 64-byte aligned
 *   sections[EXPERT] expert blobs, each on an `alignment` boundary
 *   file_size - 32   footer
 */
#ifndef MOE_PACK_FORMAT_H
#define MOE_PACK_FORMAT_H

#include <stdint.h>

#define PACK_MAGIC "MOEPACK"        /* 8 bytes with the NUL */
#define PACK_FOOTER_MAGIC "MOEPEND" /* 8 bytes with the NUL */
#define PACK_MAJOR 1
#define PACK_MINOR 0

#define PACK_SUPERBLOCK_SIZE 512
#define PACK_HEADER_RESERVE 4096      /* superblock region; metadata starts here */
#define PACK_FOOTER_SIZE 32
#define PACK_TENSOR_ALIGN 64          /* dense tensors: SIMD-aligned in the mapping */
#define PACK_MIN_ALIGN 4096           /* expert blobs: O_DIRECT-able */
#define PACK_MAX_SECTIONS 8

enum pack_section_kind {
	SEC_META = 1,
	SEC_TENSOR_DIR = 2,
	SEC_EXPERT_TABLE = 3,
	SEC_DENSE_DATA = 4,
	SEC_EXPERT_DATA = 5,
};

/* Feature flags: the low 16 bits may be ignored by readers that do not know
 * them; a set bit in the high 16 that a reader does not know means "refuse". */
#define PACK_F_TOKENIZER 0x0001u   /* metadata holds a tokenizer */
#define PACK_F_ZSTD 0x0002u        /* some expert blobs are zstd frames */
#define PACK_F_KNOWN_COMPAT 0x0003u
#define PACK_F_INCOMPAT_MASK 0xffff0000u
#define PACK_F_LAYOUTS 0x00010000u     /* experts in more than one layout (types differ by layer) */
#define PACK_F_KNOWN_INCOMPAT 0x00010000u

struct pack_section {
	uint32_t kind;
	uint32_t reserved;
	uint64_t offset;
	uint64_t size;
	uint64_t xxh3; /* of the section's bytes; 0 for the two data sections */
};
_Static_assert(sizeof(struct pack_section) == 32, "section entry is 32 bytes");

struct pack_superblock {
	char magic[8];
	uint16_t major, minor;
	uint32_t flags;
	uint32_t alignment;  /* expert blob alignment: 4096 or 2097152 */
	uint32_t n_sections;
	uint64_t file_size;
	struct pack_section sections[PACK_MAX_SECTIONS];
	uint8_t reserved[PACK_SUPERBLOCK_SIZE - 32 - 32 * PACK_MAX_SECTIONS - 8];
	uint64_t checksum;   /* XXH3-64 of the 504 bytes before it */
};
_Static_assert(sizeof(struct pack_superblock) == PACK_SUPERBLOCK_SIZE, "superblock is 512 bytes");

struct pack_footer {
	char magic[8];
	uint64_t superblock_checksum; /* repeats superblock.checksum */
	uint64_t file_size;
	uint64_t checksum;            /* XXH3-64 of the 24 bytes before it */
};
_Static_assert(sizeof(struct pack_footer) == PACK_FOOTER_SIZE, "footer is 32 bytes");

/* Tensor directory: u32 count, u32 0, then per tensor this record + name bytes,
 * each record padded to a multiple of 8 bytes. */
struct pack_tensor_rec {
	uint16_t name_len;
	uint8_t type;
	uint8_t n_dims;
	uint32_t reserved;
	uint64_t dims[2];
	uint64_t offset;
	uint64_t size;
	uint64_t xxh3;
};
_Static_assert(sizeof(struct pack_tensor_rec) == 48, "tensor record is 48 bytes");

/* Expert table: this header (layout 0), then `count` entries sorted by (layer, expert),
 * then, with PACK_F_LAYOUTS, a u32 count of further layouts, a u32 0, and each as a
 * struct pack_expert_layout (layouts 1..n). */
struct pack_expert_matrix {
	uint32_t type;
	uint32_t reserved;
	uint64_t rows, cols;
	uint64_t offset; /* inside the raw blob, 64-byte aligned */
	uint64_t size;
};
_Static_assert(sizeof(struct pack_expert_matrix) == 40, "expert matrix record is 40 bytes");

struct pack_expert_header {
	uint32_t count;
	uint32_t n_matrices; /* 3: gate, up, down */
	struct pack_expert_matrix matrix[3];
	uint64_t raw_size;
};
_Static_assert(sizeof(struct pack_expert_header) == 136, "expert header is 136 bytes");

struct pack_expert_layout {
	struct pack_expert_matrix matrix[3];
	uint64_t raw_size;
};
_Static_assert(sizeof(struct pack_expert_layout) == 128, "expert layout is 128 bytes");

struct pack_expert_rec {
	uint32_t layer;
	uint32_t expert;
	uint64_t offset;
	uint64_t stored_size;
	uint32_t codec;
	uint32_t layout;   /* 0: the header's; i > 0: the table's extra layout i */
	uint64_t xxh3_stored;
	uint64_t xxh3_raw;
};
_Static_assert(sizeof(struct pack_expert_rec) == 48, "expert record is 48 bytes");

#endif
