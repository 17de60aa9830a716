/* blocks.c - GGUF's block formats as decoders into codes, scales and biases per 16
 * weights (blocks.h). Byte offsets are those of ggml-common.h's structs; weight
 * order and arithmetic those of ggml-quants.c's dequantize_row_* functions. */
#include <string.h>

#include "kernels/blocks.h"
#include "kernels/kernels.h"

const int8_t moe_iq4_levels[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
const int8_t moe_mxfp4_levels[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

/* an fp16 scale: normal numbers inline (the common case), the rest by the full conversion */
static inline float h16(const uint8_t *p)
{
	uint16_t h;
	memcpy(&h, p, 2);
	const uint32_t exp = h & 0x7c00u;
	if (__builtin_expect(exp == 0 || exp == 0x7c00u, 0))
		return moe_kernel_f16(h);
	const uint32_t u = (uint32_t)(h & 0x8000u) << 16 | ((uint32_t)(h & 0x7fffu) + 0x1c000u) << 13;
	float f;
	memcpy(&f, &u, 4);
	return f;
}

/* the two 16-weight groups of a 32-weight sub-block share its scale and bias */
static void pair(float *s, float *z, int sub, float sv, float zv)
{
	s[2 * sub] = s[2 * sub + 1] = sv;
	z[2 * sub] = z[2 * sub + 1] = zv;
}

/* Each format is two functions: its codes (what SIMD implementations redo faster)
 * and its scales and biases per 16 weights. */

/* weight j in the low nibble of qs[j], j+16 in the high one (Q4_0's order) */
static void nibbles32(const uint8_t *qs, uint8_t *c)
{
	for (int j = 0; j < 16; j++) {
		c[j] = qs[j] & 15;
		c[j + 16] = qs[j] >> 4;
	}
}

/* Q4_1 {d, m, qs[16]}: w = d*q + m */
static void codes_q4_1(const uint8_t *b, uint8_t *c) { nibbles32(b + 4, c); }
static void scales_q4_1(const uint8_t *b, float *s, float *z) { pair(s, z, 0, h16(b), -h16(b + 2)); }

/* Q5_0 {d, qh[4], qs[16]}: w = d*(q - 16), bit 4 of weight j in bit j of qh */
static void codes_q5(const uint8_t *qh4, const uint8_t *qs, uint8_t *c)
{
	uint32_t qh;
	memcpy(&qh, qh4, 4);
	nibbles32(qs, c);
	for (int j = 0; j < 32; j++)
		c[j] |= (uint8_t)(((qh >> j) & 1) << 4);
}

static void codes_q5_0(const uint8_t *b, uint8_t *c) { codes_q5(b + 2, b + 6, c); }
static void scales_q5_0(const uint8_t *b, float *s, float *z) { pair(s, z, 0, h16(b), 16 * h16(b)); }

/* Q5_1 {d, m, qh[4], qs[16]}: w = d*q + m */
static void codes_q5_1(const uint8_t *b, uint8_t *c) { codes_q5(b + 4, b + 8, c); }
#define scales_q5_1 scales_q4_1

/* IQ4_NL {d, qs[16]}: w = d * level[nibble] */
static void codes_iq4_nl(const uint8_t *b, uint8_t *c)
{
	nibbles32(b + 2, c);
	for (int j = 0; j < 32; j++)
		c[j] = (uint8_t)moe_iq4_levels[c[j]];
}
static void scales_iq4_nl(const uint8_t *b, float *s, float *z) { pair(s, z, 0, h16(b), 0); }

/* MXFP4 {e, qs[16]}: w = 2^(e-128) * level[nibble] (the E8M0 scale 2^(e-127), halved
 * for the doubled levels); the scale is a power of two, exact in float32 down to e = 0 */
static void codes_mxfp4(const uint8_t *b, uint8_t *c)
{
	nibbles32(b + 1, c);
	for (int j = 0; j < 32; j++)
		c[j] = (uint8_t)moe_mxfp4_levels[c[j]];
}
static void scales_mxfp4(const uint8_t *b, float *s, float *z)
{
	pair(s, z, 0, moe_mxfp4_scale(b[0]), 0);
}

/*
 * The 2- and 3-bit K formats share one weight order: weight i of the 256 is
 * bits 2k..2k+1 of qs[32*(i/128) + (i%32)], k = (i%128)/32, and its group of 16 is i/16.
 */
static void crumbs(const uint8_t *qs, uint8_t *c)
{
	for (int h = 0; h < 2; h++)
		for (int k = 0; k < 4; k++)
			for (int l = 0; l < 32; l++)
				c[128 * h + 32 * k + l] = (qs[32 * h + l] >> (2 * k)) & 3;
}

/* Q2_K {scales[16], qs[64], d, dmin}: w = d*(sc&15)*q - dmin*(sc>>4) */
static void codes_q2_k(const uint8_t *b, uint8_t *c) { crumbs(b + 16, c); }
static void scales_q2_k(const uint8_t *b, float *s, float *z)
{
	const float d = h16(b + 80), dmin = h16(b + 82);
	for (int g = 0; g < 16; g++) {
		s[g] = d * (float)(b[g] & 15);
		z[g] = dmin * (float)(b[g] >> 4);
	}
}

/* Q3_K {hmask[32], qs[64], scales[12], d}: w = d*(sc-32)*(q - 4*!hbit), where the
 * high bit of weight i is bit (i/32) of hmask[i%32] and the 16 6-bit scales are
 * packed as 4-bit lows (bytes 0..7) and 2-bit highs (bytes 8..11). */
static void codes_q3_k(const uint8_t *b, uint8_t *c)
{
	crumbs(b + 32, c);
	for (int i = 0; i < 256; i++)
		c[i] |= (uint8_t)(((b[i % 32] >> (i / 32)) & 1) << 2);
}
static void scales_q3_k(const uint8_t *b, float *s, float *z)
{
	const uint8_t *sc = b + 96;
	const float d = h16(b + 108);
	for (int g = 0; g < 16; g++) {
		const int lo = (sc[g % 8] >> (4 * (g / 8))) & 15, hi = (sc[8 + g % 4] >> (2 * (g / 4))) & 3;
		s[g] = d * (float)((lo | hi << 4) - 32);
		z[g] = 4 * s[g];
	}
}

/* Q4_K/Q5_K: 8 sub-blocks of 32 with 6-bit scales and mins (ggml's get_scale_min_k4) */
static void scales_k4(const uint8_t *b, float *s, float *z)
{
	const uint8_t *q = b + 4;
	const float d = h16(b), dmin = h16(b + 2);
	for (int j = 0; j < 8; j++) {
		const int sc = j < 4 ? q[j] & 63 : (q[j + 4] & 15) | ((q[j - 4] >> 6) << 4);
		const int m = j < 4 ? q[j + 4] & 63 : (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
		pair(s, z, j, d * (float)sc, dmin * (float)m);
	}
}

/* Q4_K {d, dmin, scales[12], qs[128]}: sub-block 2k is the low nibbles of qs[32k..32k+31], 2k+1 the high */
static void codes_q4_k(const uint8_t *b, uint8_t *c)
{
	const uint8_t *qs = b + 16;
	for (int k = 0; k < 4; k++)
		for (int l = 0; l < 32; l++) {
			c[64 * k + l] = qs[32 * k + l] & 15;
			c[64 * k + 32 + l] = qs[32 * k + l] >> 4;
		}
}

/* Q5_K {d, dmin, scales[12], qh[32], qs[128]}: as Q4_K, bit 4 of sub-block j's weight l in bit j of qh[l] */
static void codes_q5_k(const uint8_t *b, uint8_t *c)
{
	const uint8_t *qh = b + 16;
	codes_q4_k(b + 32, c); /* qs sits 32 bytes further than Q4_K's */
	for (int i = 0; i < 256; i++)
		c[i] |= (uint8_t)(((qh[i % 32] >> (i / 32)) & 1) << 4);
}

/* Q6_K {ql[128], qh[64], scales[16] int8, d}: w = d*sc*(q - 32); in each half of 128,
 * quarter k of weight l takes a nibble of ql[l + 32*(k&1)] (low for k<2) and bits 2k..2k+1 of qh[l] */
static void codes_q6_k(const uint8_t *b, uint8_t *c)
{
	for (int h = 0; h < 2; h++) {
		const uint8_t *ql = b + 64 * h, *qh = b + 128 + 32 * h;
		for (int k = 0; k < 4; k++)
			for (int l = 0; l < 32; l++) {
				const uint8_t lo = ql[l + 32 * (k & 1)];
				c[128 * h + 32 * k + l] = (uint8_t)((k < 2 ? lo & 15 : lo >> 4) | ((qh[l] >> (2 * k)) & 3) << 4);
			}
	}
}
static void scales_q6_k(const uint8_t *b, float *s, float *z)
{
	const float d = h16(b + 208);
	for (int g = 0; g < 16; g++) {
		s[g] = d * (float)(int8_t)b[192 + g];
		z[g] = 32 * s[g];
	}
}

/* IQ4_XS {d, scales_h, scales_l[4], qs[128]}: sub-block j of 32 has scale d*(ls-32),
 * ls 4 bits from scales_l and 2 from scales_h; codes as IQ4_NL, 16 bytes per sub-block */
static void codes_iq4_xs(const uint8_t *b, uint8_t *c)
{
	for (int j = 0; j < 8; j++)
		codes_iq4_nl(b + 16 * j - 2 + 8, c + 32 * j); /* codes_iq4_nl reads its qs at +2 */
}
static void scales_iq4_xs(const uint8_t *b, float *s, float *z)
{
	const float d = h16(b);
	const unsigned sh = b[2] | (unsigned)b[3] << 8;
	for (int j = 0; j < 8; j++) {
		const int ls = ((b[4 + j / 2] >> (4 * (j % 2))) & 15) | (int)((sh >> (2 * j)) & 3) << 4;
		pair(s, z, j, d * (float)(ls - 32), 0);
	}
}

#define FORMAT(name, w, bytes, sgn, h0, h1) {#name, w, bytes, sgn, {h0, h1}, codes_##name, scales_##name}
static const struct moe_block_format formats[MOE_TYPE_COUNT] = {
	[MOE_TYPE_Q4_1] = FORMAT(q4_1, 32, 20, 0, 0, 2),
	[MOE_TYPE_Q5_0] = FORMAT(q5_0, 32, 22, 0, 0, -1),
	[MOE_TYPE_Q5_1] = FORMAT(q5_1, 32, 24, 0, 0, 2),
	[MOE_TYPE_Q2_K] = FORMAT(q2_k, 256, 84, 0, 80, 82),
	[MOE_TYPE_Q3_K] = FORMAT(q3_k, 256, 110, 0, 108, -1),
	[MOE_TYPE_Q4_K] = {"q4_k", 256, 144, 0, {0, 2}, codes_q4_k, scales_k4},
	[MOE_TYPE_Q5_K] = {"q5_k", 256, 176, 0, {0, 2}, codes_q5_k, scales_k4},
	[MOE_TYPE_Q6_K] = FORMAT(q6_k, 256, 210, 0, 208, -1),
	[MOE_TYPE_IQ4_NL] = FORMAT(iq4_nl, 32, 18, 1, 0, -1),
	[MOE_TYPE_IQ4_XS] = FORMAT(iq4_xs, 256, 136, 1, 0, -1),
	[MOE_TYPE_MXFP4] = FORMAT(mxfp4, 32, 17, 1, -1, -1),
};

const struct moe_block_format *moe_block_format(int type)
{
	return type >= 0 && type < MOE_TYPE_COUNT && formats[type].codes ? &formats[type] : NULL;
}

size_t moe_block_row_bytes(const struct moe_block_format *f, size_t cols)
{
	return cols % f->weights ? 0 : cols / f->weights * f->bytes;
}

void moe_block_dequantize(const struct moe_block_format *f, const void *blocks, size_t n, float *dst)
{
	uint8_t c[MOE_BLOCK_MAX];
	float s[MOE_BLOCK_MAX / 16], z[MOE_BLOCK_MAX / 16];
	for (size_t b = 0; b < n / f->weights; b++) {
		f->codes((const uint8_t *)blocks + b * f->bytes, c);
		f->scales((const uint8_t *)blocks + b * f->bytes, s, z);
		for (int j = 0; j < f->weights; j++) {
			const float code = f->signed_codes ? (float)(int8_t)c[j] : (float)c[j];
			dst[b * f->weights + j] = s[j / 16] * code - z[j / 16];
		}
	}
}

void moe_blocks_rows(moe_block_dot_fn *dot, moe_block_codes_fn *const *codes, const struct moe_wmat *w, size_t r0,
		     size_t r1, const struct moe_qact *a, float *y, size_t ystride)
{
	const struct moe_block_format *f = moe_block_format(w->type);
	moe_block_codes_fn *const decode = codes && codes[w->type] ? codes[w->type] : f->codes;
	const size_t row_bytes = moe_block_row_bytes(f, w->cols);
	_Alignas(64) uint8_t c[MOE_BLOCK_CHUNK];
	_Alignas(64) float s[MOE_BLOCK_CHUNK / 16], z[MOE_BLOCK_CHUNK / 16];
	for (size_t r = r0; r < r1; r++) {
		const uint8_t *row = (const uint8_t *)w->codes + r * row_bytes;
		for (size_t t = 0; t < a->batch; t++)
			y[t * ystride + r] = 0;
		for (size_t col0 = 0; col0 < w->cols; col0 += MOE_BLOCK_CHUNK) {
			const size_t n = w->cols - col0 < MOE_BLOCK_CHUNK ? w->cols - col0 : MOE_BLOCK_CHUNK;
			for (size_t j = 0; j < n; j += f->weights) {
				const uint8_t *blk = row + (col0 + j) / f->weights * f->bytes;
				moe_prefetch_ahead(blk, f->bytes);
				decode(blk, c + j);
				f->scales(blk, s + j / 16, z + j / 16);
			}
			for (size_t t0 = 0; t0 < a->batch; t0 += 4) {
				const size_t T = a->batch - t0 < 4 ? a->batch - t0 : 4;
				float acc[4] = {0};
				dot(c, s, z, f->signed_codes, n, a, col0, t0, T, acc);
				for (size_t k = 0; k < T; k++)
					y[(t0 + k) * ystride + r] += acc[k];
			}
		}
	}
}
