/*
 * kernels.h - y = W x for the pack's weight formats, one implementation per
 * instruction set, chosen at run time from the CPU (MOE_KERNEL=scalar|avx2|avx512|neon
 * forces one).
 *
 * W is a view of a matrix as the pack stores it (moepack(5)): for q8/q4 rows of
 * codes, then the fp16 scales, one per 32-weight block, row-major; for GGUF's block
 * types (blocks.h) rows of blocks. Quantized matrices multiply activations
 * quantized on the fly to int8 blocks of 32 (a float scale per block), so the inner
 * loops are integer dot products; f16/f32 matrices multiply the f32 activations
 * directly. Batches (prefill) read each weight row once for all tokens.
 *
 * This directory depends on nothing but libc and pthreads, so that it cross-builds
 * for ARM and runs its tests under qemu without the rest of libmoe.
 */
#ifndef MOE_KERNELS_H
#define MOE_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/blocks.h"
#include "kernels/pool.h"
#include "moe.h"

/*
 * A token streams each weight from memory once, row after row, and the hardware
 * prefetchers of the machine measured (the CI VM) did not run far enough ahead of that
 * stream: one thread read Q4_K rows at half its memory bandwidth, and at 85 % once
 * the kernels asked for the bytes MOE_PREFETCH_AHEAD beyond those they were reading
 * (bench/RESULTS.md, "Weights prefetched ahead"; 2-8 KiB measured alike). Kernels
 * call this for the weights they are about to read, n bytes from p (a few lines):
 * a hint, which never faults, even past the end of a matrix (the address is made
 * as an integer, not as a pointer beyond its object). Always inlined: GCC takes a
 * call that only prefetches for one without effects and drops it.
 */
#define MOE_PREFETCH_AHEAD 4096
static inline __attribute__((always_inline)) void moe_prefetch_ahead(const void *p, size_t n)
{
	for (size_t i = 0; i < n; i += 64)
		__builtin_prefetch((const void *)((uintptr_t)p + MOE_PREFETCH_AHEAD + i));
}

/* A weight matrix in pack layout: rows x cols, type a moe_type id. */
struct moe_wmat {
	int type;
	size_t rows, cols;
	const void *codes;       /* q8: int8[rows][cols]; q4: uint8[rows][cols/2]; f16: uint16; f32: float;
				    GGUF block types: each row's blocks (blocks.h) */
	const uint16_t *scales;  /* q8/q4: fp16[rows][cols/32]; NULL otherwise */
};

/* Bytes of one row of codes (the scales of q8/q4 are stored apart, after all rows). */
static inline size_t moe_wmat_row_bytes(int type, size_t cols)
{
	switch (type) {
	case MOE_TYPE_F32: return 4 * cols;
	case MOE_TYPE_F16: case MOE_TYPE_BF16: return 2 * cols;
	case MOE_TYPE_Q8: return cols;
	case MOE_TYPE_Q4: return cols / 2;
	}
	const struct moe_block_format *f = moe_block_format(type);
	return f ? moe_block_row_bytes(f, cols) : 0;
}

static inline int moe_wmat_split(int type) { return type == MOE_TYPE_Q8 || type == MOE_TYPE_Q4; }

/* The view of a rows x cols matrix of `type` stored in pack layout at data. */
static inline struct moe_wmat moe_wmat_at(int type, size_t rows, size_t cols, const void *data)
{
	const size_t code_bytes = rows * moe_wmat_row_bytes(type, cols);
	return (struct moe_wmat){type, rows, cols, data,
				 moe_wmat_split(type) ? (const uint16_t *)((const uint8_t *)data + code_bytes) : NULL};
}

/* Rows r0 .. r0+n of a matrix view, as a view. */
static inline struct moe_wmat moe_wmat_rows(const struct moe_wmat *w, size_t r0, size_t n)
{
	return (struct moe_wmat){w->type, n, w->cols, (const uint8_t *)w->codes + r0 * moe_wmat_row_bytes(w->type, w->cols),
				 w->scales ? w->scales + r0 * (w->cols / 32) : NULL};
}

/* A batch of activations quantized to int8: one scale per `group` (32, or 256 for
 * GGUF's K types, as ggml's Q8_K: their kernels then sum a whole block in integers),
 * stored per 32 either way so that every kernel reads d the same way. */
#define MOE_QACT_X8_MIN 4

struct moe_qact {
	size_t cols, batch, group;
	int8_t *q;   /* [batch][cols] */
	float *d;    /* [batch][cols/32]: x ~= d * q */
	float *ds;   /* [batch][cols/32]: d * sum(q), for the q4/q8 offset forms */
	float *ds16; /* [batch][cols/16]: d * sum(q) per 16, for the biases of the block types */
	int16_t *s16; /* [batch][cols/16]: sum(q) per 16, for the K types' integer kernels */
	/* for kernels that work on unsigned weight codes u = w + off: -off * sum(q) per block */
	int32_t *nsum8, *nsum128; /* [batch][cols/32] */
	/* The 32-groups' codes again, 8 tokens to a 256-bit register, for kernels whose
	 * vector lanes are tokens: per octet of tokens and block, 8 groups of 4 columns,
	 * each as token 0's 4 codes, token 1's, ..., token 7's (256 bytes); d and nsum8
	 * likewise 8 tokens at a time. A last octet short of tokens is padded with zeros.
	 * Filled when batch >= MOE_QACT_X8_MIN (fewer tokens gain nothing from 8 lanes),
	 * for q4 (group 32) and Q4_K, Q5_K, Q6_K (group 256: d repeats over a group's 8
	 * blocks); NULL in a view of tokens that do not start an octet. */
	int8_t *q_x8;      /* [octets][cols/32][8][8][4] */
	float *d_x8;       /* [octets][cols/32][8] */
	int32_t *nsum8_x8; /* [octets][cols/32][8] */
	int32_t *s16_x8;   /* [octets][cols/32][8]: s16's two sums of the block, an int16 pair */
};

/* One implementation: rows [r0, r1) of W times `batch` tokens, y[t * ystride + r]. */
struct moe_kernel_impl {
	const char *name;
	int (*available)(void);
	void (*q8)(const struct moe_wmat *w, size_t r0, size_t r1, const struct moe_qact *a, float *y, size_t ystride);
	void (*q4)(const struct moe_wmat *w, size_t r0, size_t r1, const struct moe_qact *a, float *y, size_t ystride);
	/* every GGUF block type (blocks.h) */
	void (*blocks)(const struct moe_wmat *w, size_t r0, size_t r1, const struct moe_qact *a, float *y,
		       size_t ystride);
	void (*f16)(const struct moe_wmat *w, size_t r0, size_t r1, const float *x, size_t batch, float *y,
		    size_t ystride);
	void (*f32)(const struct moe_wmat *w, size_t r0, size_t r1, const float *x, size_t batch, float *y,
		    size_t ystride);
	/* n IEEE halves to floats (an f16 KV cache's rows) */
	void (*halves)(const uint16_t *h, size_t n, float *out);
};

/*
 * The block types' common driver, which each implementation's `blocks` calls with
 * its dot product and its own code decoders (codes[type], NULL or a NULL entry:
 * blocks.c's): a row is decoded (blocks.h) MOE_BLOCK_CHUNK weights at a time,
 * then dot adds, for tokens t0 .. t0+T-1 (T <= 4), the products of those n decoded
 * weights (codes c, scales s, biases z per 16; c signed if sgn) with columns col0 ..
 * col0+n-1 of the activations to acc[0 .. T-1].
 */
#define MOE_BLOCK_CHUNK 2048
typedef void moe_block_dot_fn(const uint8_t *c, const float *s, const float *z, int sgn, size_t n,
			      const struct moe_qact *a, size_t col0, size_t t0, size_t T, float *acc);
void moe_blocks_rows(moe_block_dot_fn *dot, moe_block_codes_fn *const *codes, const struct moe_wmat *w, size_t r0,
		     size_t r1, const struct moe_qact *a, float *y, size_t ystride);

extern const struct moe_kernel_impl moe_kernels_scalar;
extern const struct moe_kernel_impl moe_kernels_avx2;   /* x86-64 only */
extern const struct moe_kernel_impl moe_kernels_avx512; /* x86-64 only */
extern const struct moe_kernel_impl moe_kernels_neon;   /* aarch64 only */

/* Every implementation compiled in, scalar first; NULL-terminated. */
extern const struct moe_kernel_impl *const moe_kernel_impls[];

/* The implementation to use: MOE_KERNEL if set (NULL if it names one that is not
 * available here), else the best the CPU supports. */
const struct moe_kernel_impl *moe_kernels_select(void);
const struct moe_kernel_impl *moe_kernels_by_name(const char *name);

/* Quantize batch x cols activations (cols a multiple of 32; of group) into a (buffers
 * owned by a). moe_qact_group is the group a matrix of this type and width wants. */
int moe_qact_alloc(struct moe_qact *a, size_t batch, size_t cols);
void moe_qact_free(struct moe_qact *a);
void moe_qact_quantize(struct moe_qact *a, const float *x, size_t batch, size_t group);
size_t moe_qact_group(int type, size_t cols);

/* Scratch buffers for moe_matmul / moe_expert_ffn, grown as needed. */
struct moe_kscratch {
	struct moe_qact act, act2;
	float *h;
	size_t h_cap;
};
void moe_kscratch_free(struct moe_kscratch *s);

/*
 * y[batch][w->rows] = x[batch][w->cols] * W^T, rows split over the pool's threads
 * (pool may be NULL: this thread only). Returns 0, or -1 if scratch cannot grow.
 */
int moe_matmul(const struct moe_kernel_impl *k, struct moe_pool *pool, const struct moe_wmat *w, const float *x,
	       size_t batch, float *y, struct moe_kscratch *s);

/*
 * y[g][w[g].rows] = W_g x[g] for g < n: n matrices of one type and shape (views into
 * one tensor, say), each times its own activation row, in one pass over the pool
 * (whole matrices per thread), as the per-head products of an attention need.
 * Returns 0, or -1 if scratch cannot grow.
 */
int moe_matmul_each(const struct moe_kernel_impl *k, struct moe_pool *pool, const struct moe_wmat *w, size_t n,
		    const float *x, float *y, struct moe_kscratch *s);

/* gpt-oss's expert: a bias on each projection and a clamped SwiGLU, gate g = min(g, limit),
 * up u = clamp(u, -limit, limit), h = g * sigmoid(1.702 g) * (u + 1) */
struct moe_ffn_oai {
	const float *gate_bias, *up_bias, *down_bias; /* [ff], [ff], [hidden] */
	float limit;
};

/*
 * A SwiGLU expert: y = down(silu(gate x) * (up x)) for batch tokens, or gpt-oss's when
 * oai is not NULL. gate and up are [ff, hidden], down [hidden, ff]. The intermediate
 * is written once.
 */
int moe_expert_ffn(const struct moe_kernel_impl *k, struct moe_pool *pool, const struct moe_wmat *gate,
		   const struct moe_wmat *up, const struct moe_wmat *down, const float *x, size_t batch, float *y,
		   const struct moe_ffn_oai *oai, struct moe_kscratch *s);

/* fp16 -> f32 for the kernels (no dependency on src/quant). */
float moe_kernel_f16(uint16_t h);

#endif
