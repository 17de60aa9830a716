/*
 * quant.h - weight formats: the traits table, scalar conversions, and the
 * reference quantizers (plain C; the kernels issue adds SIMD paths that must
 * agree with these).
 *
 * q8 and q4 are value-compatible with GGUF Q8_0 and Q4_0: 32 weights share one
 * fp16 scale d. q8: x = d*q, q int8. q4: x = d*(q-8), q a nibble; weight j of a
 * block sits in the low nibble of byte j, weight j+16 in its high nibble.
 * In a pack a q8/q4 matrix is "split": all rows' codes first (row-major,
 * 32 or 16 bytes per block), then all rows' fp16 scales, so SIMD loads of
 * codes stay aligned. The GGUF array-of-blocks layout appears only at import.
 */
#ifndef MOE_QUANT_H
#define MOE_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "moe.h"

#define MOE_QBLOCK 32

/* GGUF's blocks, as found in GGUF files. */
typedef struct {
	uint16_t d;          /* fp16 scale */
	int8_t qs[MOE_QBLOCK];
} gguf_block_q8_0;
_Static_assert(sizeof(gguf_block_q8_0) == 34, "GGUF Q8_0 block is 34 bytes");

typedef struct {
	uint16_t d;
	uint8_t qs[MOE_QBLOCK / 2];
} gguf_block_q4_0;
_Static_assert(sizeof(gguf_block_q4_0) == 18, "GGUF Q4_0 block is 18 bytes");

/* q8/q4: codes of all rows, then their fp16 scales (one per 32 weights). */
static inline int moe_type_is_split(int type) { return type == MOE_TYPE_Q8 || type == MOE_TYPE_Q4; }
/* GGUF's block types, kept bit for bit (src/kernels/blocks.h). */
int moe_type_is_blocks(int type);
/* Bytes of the codes of one row (the blocks of a block type; scales of q8/q4 not
 * included); 0 if cols does not fit the type's block size. */
uint64_t moe_type_row_bytes(int type, uint64_t cols);
/* Weights per block: 1 (float types), 32 or 256. */
uint32_t moe_type_block(int type);

/* scalar conversions (round to nearest even) */
float moe_f16_to_f32(uint16_t h);
uint16_t moe_f32_to_f16(float f);
float moe_bf16_to_f32(uint16_t h);
uint16_t moe_f32_to_bf16(float f);
float moe_fp8_e4m3_to_f32(uint8_t v);
/* Nearest FP8 E4M3 (ties to even), saturating at +-448; NaN maps to 0x7f. */
uint8_t moe_f32_to_fp8_e4m3(float f);

/*
 * Convert rows of floats to a type (float types, q8, q4, the K block types). For
 * float types dst receives nrows*cols elements. For q8/q4, codes receives nrows
 * rows of codes and scales nrows*(cols/32) fp16 values (cols must be a multiple
 * of 32). For a K type, codes receives the blocks (cols a multiple of 256).
 */
void moe_quantize_rows(int type, const float *src, size_t nrows, size_t cols, void *codes, uint16_t *scales);
/* GGUF block types moe-pack quantizes floats into (kquant.c): Q2_K .. Q6_K. */
int moe_type_is_quantizable_block(int type);
/* n floats (a multiple of 256) into blocks of a K type. */
void moe_quantize_blocks(int type, const float *src, size_t n, void *dst);
/* nrows of a matrix back to floats, for every type (scales NULL but for q8/q4). */
void moe_dequantize_rows(int type, const void *codes, const uint16_t *scales, size_t nrows, size_t cols, float *dst);

/* Split-layout matrix <-> GGUF blocks, lossless (nblocks = rows*cols/32). */
void moe_q8_from_gguf(const gguf_block_q8_0 *src, size_t nblocks, int8_t *codes, uint16_t *scales);
void moe_q4_from_gguf(const gguf_block_q4_0 *src, size_t nblocks, uint8_t *codes, uint16_t *scales);
void moe_q8_to_gguf(const int8_t *codes, const uint16_t *scales, size_t nblocks, gguf_block_q8_0 *dst);
void moe_q4_to_gguf(const uint8_t *codes, const uint16_t *scales, size_t nblocks, gguf_block_q4_0 *dst);

#endif
