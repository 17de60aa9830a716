/*
 * moe.h - public API of libmoe, the moemap runtime.
 *
 * Conventions (one everywhere):
 *   - every public name starts with moe_ / MOE_;
 *   - handles are opaque, created and freed by the library;
 *   - every fallible call returns int: 0 on success or a negative MOE_E* code;
 *     moe_strerror(code) names the code, moe_last_error() gives the detail of the
 *     last failure in the calling thread ("layer 12 expert 201: checksum mismatch").
 *   - the library never prints and never exits.
 */
#ifndef MOE_H
#define MOE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MOE_VERSION_MAJOR 0
#define MOE_VERSION_MINOR 1
#define MOE_VERSION_PATCH 0
#define MOE_VERSION_NUMBER (MOE_VERSION_MAJOR * 10000 + MOE_VERSION_MINOR * 100 + MOE_VERSION_PATCH)
unsigned moe_version_number(void);

/* ---- errors ------------------------------------------------------------ */

enum moe_error {
	MOE_OK = 0,
	MOE_EINVAL = -1,       /* bad argument or option */
	MOE_EIO = -2,          /* read/write failed (errno detail in the message) */
	MOE_ENOMEM = -3,       /* allocation failed */
	MOE_EFORMAT = -4,      /* malformed or truncated file */
	MOE_EVERSION = -5,     /* pack major version not understood */
	MOE_ECHECKSUM = -6,    /* stored checksum does not match the bytes */
	MOE_EUNSUPPORTED = -7, /* valid input this build does not handle */
	MOE_ENOTFOUND = -8,    /* missing key, tensor or file */
	MOE_EEXIST = -9,       /* output exists */
	MOE_ENOSPC = -10,      /* disk full */
};

const char *moe_strerror(int err);
/* Detail of the last failed call in this thread; "" if none. */
const char *moe_last_error(void);

/* ---- helpers the tools share ----------------------------------------------- */

/* A size as every moemap tool takes it: a decimal number of bytes, optionally
 * followed by K, M, G or T (powers of 1024) and an optional B: "4096", "900M",
 * "1.5G", "2MB". Returns the bytes, or 0 if s is malformed, below one byte or
 * past 2^64. */
uint64_t moe_parse_size(const char *s);
/* Seconds on a monotonic clock, for measuring durations. */
double moe_now(void);

/* ---- weight types ------------------------------------------------------- */

/*
 * Numeric ids are stored in packs: never renumber, only append.
 * q8/q4 use 32-weight blocks with an fp16 scale, value-compatible with GGUF
 * Q8_0/Q4_0; in a pack a matrix stores all its rows' codes first, then all
 * its scales (see moepack(5)). The types from q4_1 on are GGUF's blocks kept
 * bit for bit: a matrix is its rows, each row its blocks in GGUF's layout.
 */
enum moe_type {
	MOE_TYPE_F32 = 0,
	MOE_TYPE_F16 = 1,
	MOE_TYPE_BF16 = 2,
	MOE_TYPE_Q8 = 3,
	MOE_TYPE_Q4 = 4,
	MOE_TYPE_Q4_1 = 5,   /* GGUF Q4_1: 32 weights, d and m */
	MOE_TYPE_Q5_0 = 6,   /* GGUF Q5_0 */
	MOE_TYPE_Q5_1 = 7,   /* GGUF Q5_1 */
	MOE_TYPE_Q2_K = 8,   /* GGUF Q2_K: 256 weights, 4-bit scales and mins per 16 */
	MOE_TYPE_Q3_K = 9,   /* GGUF Q3_K: 6-bit scales per 16 */
	MOE_TYPE_Q4_K = 10,  /* GGUF Q4_K: 6-bit scales and mins per 32 */
	MOE_TYPE_Q5_K = 11,  /* GGUF Q5_K */
	MOE_TYPE_Q6_K = 12,  /* GGUF Q6_K: 8-bit scales per 16 */
	MOE_TYPE_IQ4_NL = 13, /* GGUF IQ4_NL: 32 weights, 16 non-uniform levels */
	MOE_TYPE_IQ4_XS = 14, /* GGUF IQ4_XS: 256 weights, IQ4_NL levels, 6-bit scales per 32 */
	MOE_TYPE_COUNT
};

/* "f32", "f16", "bf16", "q8", "q4", "q4_1", ... "q6_k", "iq4_nl", "iq4_xs"; NULL for an unknown id. */
const char *moe_type_name(int type);
/* Parse a name above; returns the id or MOE_EINVAL. */
int moe_type_from_name(const char *name);
/* Bytes of a rows x cols matrix of this type; 0 if cols does not fit the block size. */
uint64_t moe_type_matrix_bytes(int type, uint64_t rows, uint64_t cols);

/* ---- packs ---------------------------------------------------------------- */

typedef struct moe_pack moe_pack;

/*
 * Open a pack: maps it, checks magic, version, superblock and footer checksums,
 * that every section, tensor and expert lies inside the file, and the
 * metadata/directory checksums. Expert and tensor data are checked by
 * moe_pack_verify() (or by the runtime as they are read).
 */
int moe_pack_open(const char *path, moe_pack **out);
/* The path it was opened with. */
const char *moe_pack_path(const moe_pack *pack);
void moe_pack_close(moe_pack *pack);

uint64_t moe_pack_file_size(const moe_pack *pack);
void moe_pack_version(const moe_pack *pack, unsigned *major, unsigned *minor);
uint32_t moe_pack_alignment(const moe_pack *pack);

/* Metadata: typed key/values. */
enum moe_meta_type {
	MOE_META_U64 = 1,
	MOE_META_I64 = 2,
	MOE_META_F64 = 3,
	MOE_META_STR = 4,  /* UTF-8, no terminator stored (one is added in memory) */
	MOE_META_BLOB = 5, /* opaque bytes (tokenizer.json, ...) */
	MOE_META_I64_ARRAY = 6,
};
size_t moe_pack_meta_count(const moe_pack *pack);
/* Key and type of entry i (i < moe_pack_meta_count); NULL if out of range. */
const char *moe_pack_meta_key(const moe_pack *pack, size_t i, int *type);
int moe_pack_meta_u64(const moe_pack *pack, const char *key, uint64_t *out);
int moe_pack_meta_i64(const moe_pack *pack, const char *key, int64_t *out);
int moe_pack_meta_f64(const moe_pack *pack, const char *key, double *out);
/* STR and BLOB: pointer into the mapping, valid until close; STR is NUL-terminated. */
int moe_pack_meta_bytes(const moe_pack *pack, const char *key, const void **data, uint64_t *len);
int moe_pack_meta_i64_array(const moe_pack *pack, const char *key, const int64_t **vals, uint64_t *n);

/* Dense tensors: used in place through the mapping. */
typedef struct moe_tensor {
	const char *name;   /* canonical name, e.g. "blk.3.attn_q" (moepack(5)) */
	int type;           /* enum moe_type */
	int n_dims;         /* 1 or 2 */
	uint64_t dims[2];   /* dims[0] = rows (outputs), dims[1] = cols (inputs); 1-D: dims[0] */
	const void *data;   /* 64-byte aligned */
	uint64_t size;      /* bytes */
	uint64_t offset;    /* in the file */
	uint64_t xxh3;      /* XXH3-64 of the bytes */
} moe_tensor;
size_t moe_pack_tensor_count(const moe_pack *pack);
int moe_pack_tensor_at(const moe_pack *pack, size_t i, moe_tensor *out);
int moe_pack_tensor(const moe_pack *pack, const char *name, moe_tensor *out);

/* Experts: one blob per (layer, expert) holding gate, up and down. */
enum moe_codec { MOE_CODEC_RAW = 0, MOE_CODEC_ZSTD = 1 };
enum moe_expert_matrix { MOE_EXPERT_GATE = 0, MOE_EXPERT_UP = 1, MOE_EXPERT_DOWN = 2 };
typedef struct moe_expert_layout {
	int type[3];          /* per matrix (gate, up, down) */
	uint64_t rows[3], cols[3];
	uint64_t offset[3];   /* byte offset of each matrix inside the raw blob */
	uint64_t raw_size;    /* raw blob bytes of an expert in this layout */
} moe_expert_layout;
typedef struct moe_expert_info {
	uint32_t layer, expert;
	uint64_t offset;       /* in the file, a multiple of the pack alignment */
	uint64_t stored_size;  /* bytes on disk */
	uint64_t raw_size;     /* bytes once decoded */
	int layout;            /* its layout (moe_pack_expert_layout_at) */
	int codec;             /* enum moe_codec */
	uint64_t xxh3_stored;  /* of the stored bytes */
	uint64_t xxh3_raw;     /* of the decoded bytes */
} moe_expert_info;
/* Layout 0: the matrices' shapes, which every layout shares, and their types in most packs.
 * A pack whose matrix types differ by layer (GGUF's _M mixes kept as they are) has more
 * layouts, one per combination of types; each expert names its own. */
void moe_pack_expert_layout(const moe_pack *pack, moe_expert_layout *out);
size_t moe_pack_expert_layouts(const moe_pack *pack);
int moe_pack_expert_layout_at(const moe_pack *pack, size_t i, moe_expert_layout *out);
/* The largest raw blob of any layout: what a buffer for any expert needs. */
uint64_t moe_pack_expert_max_raw(const moe_pack *pack);
size_t moe_pack_expert_count(const moe_pack *pack);
int moe_pack_expert_at(const moe_pack *pack, size_t i, moe_expert_info *out);
int moe_pack_expert(const moe_pack *pack, uint32_t layer, uint32_t expert, moe_expert_info *out);
/* The stored bytes of an expert in the mapping (valid until close), not verified. */
int moe_pack_expert_stored(const moe_pack *pack, uint32_t layer, uint32_t expert, const void **data,
			   moe_expert_info *info);
/* Decode an expert from the mapping into dst (raw_size bytes), checking both checksums. */
int moe_pack_expert_read(const moe_pack *pack, uint32_t layer, uint32_t expert, void *dst);

/*
 * Recompute every checksum (dense tensors, stored and raw expert bytes).
 * progress, if not NULL, is called after each item; returning non-zero stops.
 * On a mismatch returns MOE_ECHECKSUM; moe_last_error() names the tensor or
 * the layer and expert.
 */
typedef int (*moe_progress_fn)(void *user, uint64_t done, uint64_t total);
int moe_pack_verify(const moe_pack *pack, moe_progress_fn progress, void *user);

#ifdef __cplusplus
}
#endif
#endif /* MOE_H */
