/*
 * blocks.h - GGUF's block formats that packs keep bit for bit (q4_1 ... iq4_xs, mxfp4),
 * and the one form every kernel computes with.
 *
 * ggml-quants.c defines each format by its dequantization; blocks.c restates
 * each as a decoder into small integer codes c with a scale s and a bias z per
 * 16 weights:
 *
 *     w[j] = s[j/16] * c[j] - z[j/16]
 *
 * Offsets and mins fold into z, so c is unsigned (0..63) for every format but
 * the IQ4 ones, whose codes are signed levels (-127..113). s and z are exact in
 * float32 (an fp16 times a small integer). A kernel then needs one integer dot
 * product per 16 weights against int8 activations, and one correction
 * z * d_x * sum(x_q) per 16 (struct moe_qact's ds16) - whatever the format.
 */
#ifndef MOE_KERNELS_BLOCKS_H
#define MOE_KERNELS_BLOCKS_H

#include <stddef.h>
#include <stdint.h>

#include "moe.h"

#define MOE_BLOCK_MAX 256 /* weights in the largest block (GGUF's QK_K) */

typedef void moe_block_codes_fn(const uint8_t *blk, uint8_t *c);

struct moe_block_format {
	const char *name;     /* ggml's name, as moe-pack -q spells it */
	uint16_t weights;     /* per block: 32 or 256 */
	uint16_t bytes;       /* per block, as in GGUF */
	uint8_t signed_codes; /* c is int8 (IQ4 levels), else uint8 */
	int16_t half_at[2];   /* byte offsets of its fp16 super-scales (d, dmin), -1 if absent */
	moe_block_codes_fn *codes;  /* one block's codes c[weights] */
	void (*scales)(const uint8_t *blk, float *s, float *z); /* its weights/16 scales and biases */
};

/* The format of a moe_type, or NULL for f32/f16/bf16/q8/q4 (split layout). */
const struct moe_block_format *moe_block_format(int type);

/* Bytes of one row of cols weights of a block type (0 if cols is not whole blocks). */
size_t moe_block_row_bytes(const struct moe_block_format *f, size_t cols);

/* n weights (whole blocks) starting at a block boundary, to floats. */
void moe_block_dequantize(const struct moe_block_format *f, const void *blocks, size_t n, float *dst);

/* IQ4_NL's 16 levels (shared by IQ4_XS). */
extern const int8_t moe_iq4_levels[16];
/* MXFP4's: the FP4 E2M1 values doubled (0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives),
 * so that they are integers; the block's scale is halved to match, as ggml does. */
extern const int8_t moe_mxfp4_levels[16];
/* An MXFP4 block's E8M0 exponent as that halved scale, 2^(e-128) (ggml's
 * E8M0_TO_FP32_HALF): exact in float32, subnormal for e < 2. */
static inline float moe_mxfp4_scale(uint8_t e)
{
	const uint32_t u = e < 2 ? 0x00200000u << e : (uint32_t)(e - 1) << 23;
	float d;
	__builtin_memcpy(&d, &u, 4);
	return d;
}

#endif
