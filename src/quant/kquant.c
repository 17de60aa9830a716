/*
 * kquant.c - floats into GGUF's K block types (Q2_K .. Q6_K), and into MXFP4, written
 * as ggml lays them out (blocks.c decodes them; ggml-quants.c's dequantize_row_* is
 * the specification).
 *
 * Every format is two levels of scales: a group of 16 or 32 weights has its own
 * scale (and, for Q2_K/Q4_K/Q5_K, a min), stored in 4, 6 or 8 bits against the
 * block's fp16 super-scales. A block is quantized in three steps:
 *   1. each group's scale (and min) is searched: a few grids around the group's
 *      range, each followed by a least-squares refit, the one of least squared
 *      error kept;
 *   2. the group scales are quantized against the block's super-scales;
 *   3. the codes are chosen again for the scales as stored.
 * The error is unweighted: with no importance matrix, RMS error is the measure
 * (bench/kquant_quality.sh compares it with llama.cpp's quantizer).
 */
#include "config.h"

#include <math.h>
#include <string.h>

#include "kernels/blocks.h"
#include "quant.h"

#define SEARCH_STEPS 10 /* grids tried on each side of the range's own */

static int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }
static int nearest(float x) { return (int)lrintf(x); }

/* an fp16 scale as stored, and the float it decodes to */
static float store_f16(uint8_t *at, float v)
{
	const uint16_t h = moe_f32_to_f16(v);
	memcpy(at, &h, 2);
	return moe_f16_to_f32(h);
}

/* ---- step 1: one group ---- */

/*
 * x ~ s*q - m, q in 0..nmax, m >= 0 (ggml's mins are subtracted): s, and *m. Each
 * candidate grid costs one pass: the least-squares fit and its error come from the
 * sums (err = sum (s*q + b - x)^2 expanded).
 */
static float fit_min(const float *x, int n, int nmax, float *m)
{
	float lo = 0, hi = x[0], sx = 0, sxx = 0;
	for (int i = 0; i < n; i++) {
		lo = x[i] < lo ? x[i] : lo;
		hi = x[i] > hi ? x[i] : hi;
		sx += x[i], sxx += x[i] * x[i];
	}
	*m = -lo;
	if (!(hi > lo))
		return 0; /* all equal: the min alone */
	float best_s = (hi - lo) / (float)nmax, best_b = lo, best = INFINITY;
	for (int k = -SEARCH_STEPS; k <= SEARCH_STEPS; k++) {
		const float iscale = ((float)nmax + 0.1f * (float)k) / (hi - lo);
		float sq = 0, sqq = 0, sqx = 0;
		for (int i = 0; i < n; i++) {
			const int q = clampi((int)(iscale * (x[i] - lo) + 0.5f), 0, nmax); /* >= 0: +0.5 rounds */
			sq += (float)q, sqq += (float)(q * q), sqx += (float)q * x[i];
		}
		/* least squares for x ~ s*q + b, with b <= 0 */
		const float det = (float)n * sqq - sq * sq;
		if (!(det > 0))
			continue;
		float s = ((float)n * sqx - sq * sx) / det, b = (sqq * sx - sq * sqx) / det;
		if (b > 0)
			b = 0, s = sqx / sqq;
		if (!(s > 0))
			continue;
		const float err = s * s * sqq + 2 * s * b * sq + (float)n * b * b - 2 * s * sqx - 2 * b * sx + sxx;
		if (err < best)
			best = err, best_s = s, best_b = b;
	}
	*m = -best_b;
	return best_s;
}

/* x ~ s*q, q in -nneg..npos (s may be negative: the range is lopsided): s. The
 * least-squares s = sum(q*x)/sum(q*q) leaves error sum(x*x) - sum(q*x)^2/sum(q*q):
 * the best grid has the largest sum(q*x)^2/sum(q*q). */
static float fit_signed(const float *x, int n, int nneg, int npos)
{
	float v = 0; /* the weight of largest magnitude, with its sign */
	for (int i = 0; i < n; i++)
		v = fabsf(x[i]) > fabsf(v) ? x[i] : v;
	if (v == 0)
		return 0;
	float best_s = v / (float)-nneg, best = -1;
	for (int side = 0; side < 2; side++) /* v to the negative end, or to the positive one */
		for (int k = -SEARCH_STEPS; k <= SEARCH_STEPS; k++) {
			const float iscale = (side ? (float)npos + 0.1f * (float)k : -(float)nneg - 0.1f * (float)k) / v;
			float sqq = 0, sqx = 0;
			for (int i = 0; i < n; i++) {
				const int q = clampi(nearest(iscale * x[i]), -nneg, npos);
				sqq += (float)(q * q), sqx += (float)q * x[i];
			}
			if (sqq > 0 && sqx * sqx / sqq > best)
				best = sqx * sqx / sqq, best_s = sqx / sqq;
		}
	return best_s;
}

/* ---- steps 2 and 3 ---- */

/* non-negative group values as (bits)-bit multiples of a super-scale; returns it as stored at `at` */
static float quantize_unsigned(const float *v, int n, int bits, uint8_t *at, int *out)
{
	float mx = 0;
	for (int j = 0; j < n; j++)
		mx = v[j] > mx ? v[j] : mx;
	const int top = (1 << bits) - 1;
	const float d = store_f16(at, mx / (float)top);
	for (int j = 0; j < n; j++)
		out[j] = d > 0 ? clampi(nearest(v[j] / d), 0, top) : 0;
	return d;
}

/* signed group scales as integers in -nneg..nneg-1, the largest magnitude at -nneg exactly */
static float quantize_signed(const float *v, int n, int nneg, uint8_t *at, int *out)
{
	float ms = 0;
	for (int j = 0; j < n; j++)
		ms = fabsf(v[j]) > fabsf(ms) ? v[j] : ms;
	const float d = store_f16(at, ms / (float)-nneg);
	for (int j = 0; j < n; j++)
		out[j] = d != 0 ? clampi(nearest(v[j] / d), -nneg, nneg - 1) : 0;
	return d;
}

/* codes for x ~ s*q - m as stored */
static void codes_min(const float *x, int n, float s, float m, int nmax, uint8_t *c)
{
	for (int i = 0; i < n; i++)
		c[i] = (uint8_t)(s > 0 ? clampi(nearest((x[i] + m) / s), 0, nmax) : 0);
}

/* codes + offset for x ~ s*(c - offset) */
static void codes_signed(const float *x, int n, float s, int offset, int top, uint8_t *c)
{
	for (int i = 0; i < n; i++)
		c[i] = (uint8_t)(s != 0 ? clampi(nearest(x[i] / s) + offset, 0, top) : offset);
}

/* ---- the formats' bit layouts (the inverse of blocks.c's decoders) ---- */

/* Q2_K/Q3_K: weight i's two low bits at bits 2k of qs[32*(i/128) + i%32], k = (i%128)/32 */
static void put_crumbs(const uint8_t *c, uint8_t *qs)
{
	memset(qs, 0, 64);
	for (int i = 0; i < 256; i++)
		qs[32 * (i / 128) + i % 32] |= (uint8_t)((c[i] & 3) << (2 * ((i % 128) / 32)));
}

/* Q4_K/Q5_K: sub-block 2k in the low nibbles of qs[32k..32k+31], 2k+1 in the high ones */
static void put_k_nibbles(const uint8_t *c, uint8_t *qs)
{
	for (int k = 0; k < 4; k++)
		for (int l = 0; l < 32; l++)
			qs[32 * k + l] = (uint8_t)((c[64 * k + l] & 15) | (c[64 * k + 32 + l] & 15) << 4);
}

/* Q4_K/Q5_K's 12 bytes of eight 6-bit scales and mins (ggml's get_scale_min_k4, inverted) */
static void put_k4_scales(const int *sc, const int *m, uint8_t *q)
{
	for (int j = 0; j < 4; j++) {
		q[j] = (uint8_t)(sc[j] | (sc[j + 4] >> 4) << 6);
		q[j + 4] = (uint8_t)(m[j] | (m[j + 4] >> 4) << 6);
		q[j + 8] = (uint8_t)((sc[j + 4] & 15) | (m[j + 4] & 15) << 4);
	}
}

/* ---- blocks ---- */

/* Q4_K {d, dmin, scales[12], qs[128]} and Q5_K {d, dmin, scales[12], qh[32], qs[128]} */
static void block_k_min(const float *x, uint8_t *b, int bits)
{
	const int nmax = (1 << bits) - 1;
	float s[8], m[8];
	int isc[8], im[8];
	uint8_t c[256];
	for (int j = 0; j < 8; j++)
		s[j] = fit_min(x + 32 * j, 32, nmax, &m[j]);
	const float d = quantize_unsigned(s, 8, 6, b, isc), dmin = quantize_unsigned(m, 8, 6, b + 2, im);
	for (int j = 0; j < 8; j++)
		codes_min(x + 32 * j, 32, d * (float)isc[j], dmin * (float)im[j], nmax, c + 32 * j);
	put_k4_scales(isc, im, b + 4);
	if (bits == 4) {
		put_k_nibbles(c, b + 16);
		return;
	}
	memset(b + 16, 0, 32);
	for (int i = 0; i < 256; i++)
		b[16 + i % 32] |= (uint8_t)((c[i] >> 4) << (i / 32));
	put_k_nibbles(c, b + 48);
}

/* Q2_K {scales[16] (scale | min << 4), qs[64], d, dmin} */
static void block_q2_k(const float *x, uint8_t *b)
{
	float s[16], m[16];
	int isc[16], im[16];
	uint8_t c[256];
	for (int g = 0; g < 16; g++)
		s[g] = fit_min(x + 16 * g, 16, 3, &m[g]);
	const float d = quantize_unsigned(s, 16, 4, b + 80, isc), dmin = quantize_unsigned(m, 16, 4, b + 82, im);
	for (int g = 0; g < 16; g++) {
		codes_min(x + 16 * g, 16, d * (float)isc[g], dmin * (float)im[g], 3, c + 16 * g);
		b[g] = (uint8_t)(isc[g] | im[g] << 4);
	}
	put_crumbs(c, b + 16);
}

/* Q3_K and Q6_K: 16 groups of 16, x ~ d*sc*(c - offset) with c in 0..top and sc in
 * -sneg..sneg-1; the group scales' integers in isc, the codes in c, d stored at d_at */
static void signed_groups(const float *x, int offset, int top, int sneg, uint8_t *d_at, int *isc, uint8_t *c)
{
	float s[16];
	for (int g = 0; g < 16; g++)
		s[g] = fit_signed(x + 16 * g, 16, offset, top - offset);
	const float d = quantize_signed(s, 16, sneg, d_at, isc);
	for (int g = 0; g < 16; g++)
		codes_signed(x + 16 * g, 16, d * (float)isc[g], offset, top, c + 16 * g);
}

/* Q3_K {hmask[32], qs[64], scales[12], d}: w = d*(sc-32)*(c-4), c's bit 2 in hmask,
 * the 6-bit sc+32 as 4-bit lows (bytes 0..7) and 2-bit highs (bytes 8..11) */
static void block_q3_k(const float *x, uint8_t *b)
{
	int isc[16];
	uint8_t c[256], *sc = b + 96;
	signed_groups(x, 4, 7, 32, b + 108, isc, c);
	memset(sc, 0, 12);
	for (int g = 0; g < 16; g++) {
		const int v = isc[g] + 32;
		sc[g % 8] |= (uint8_t)((v & 15) << (4 * (g / 8)));
		sc[8 + g % 4] |= (uint8_t)((v >> 4) << (2 * (g / 4)));
	}
	memset(b, 0, 32);
	for (int i = 0; i < 256; i++)
		b[i % 32] |= (uint8_t)(((c[i] >> 2) & 1) << (i / 32));
	put_crumbs(c, b + 32);
}

/* Q6_K {ql[128], qh[64], scales[16] int8, d}: w = d*sc*(c-32) */
static void block_q6_k(const float *x, uint8_t *b)
{
	int isc[16];
	uint8_t c[256];
	signed_groups(x, 32, 63, 128, b + 208, isc, c);
	for (int g = 0; g < 16; g++)
		b[192 + g] = (uint8_t)(int8_t)isc[g];
	memset(b, 0, 192);
	for (int h = 0; h < 2; h++)
		for (int k = 0; k < 4; k++)
			for (int l = 0; l < 32; l++) {
				const uint8_t v = c[128 * h + 32 * k + l];
				b[64 * h + l + 32 * (k & 1)] |= (uint8_t)((v & 15) << (k < 2 ? 0 : 4));
				b[128 + 32 * h + l] |= (uint8_t)((v >> 4) << (2 * k));
			}
}

/* MXFP4 {e, qs[16]} as llama.cpp's reference quantizer makes it: the E8M0 exponent that
 * puts the block's largest magnitude at level 4 or more of the doubled E2M1 levels
 * (floor(log2 amax) - 2 + 127), then each weight the nearest level x 2^(e-128), the
 * first of equals in code order; weights j and j + 16 share byte j. */
static uint8_t mxfp4_code(float x, float d)
{
	int best = 0;
	float err = fabsf(moe_mxfp4_levels[0] * d - x);
	for (int i = 1; i < 16; i++) {
		const float e = fabsf(moe_mxfp4_levels[i] * d - x);
		if (e < err)
			best = i, err = e;
	}
	return (uint8_t)best;
}

static void block_mxfp4(const float *x, uint8_t *b)
{
	float amax = 0;
	for (int j = 0; j < 32; j++)
		amax = fmaxf(amax, fabsf(x[j]));
	/* 0 for a zero block, 254 (the largest finite scale) for infinities */
	int e = !(amax > 0) ? 0 : amax < 0x1p127f ? (int)floorf(log2f(amax)) - 2 + 127 : 254;
	e = e < 0 ? 0 : e > 254 ? 254 : e;
	const float d = moe_mxfp4_scale((uint8_t)e);
	b[0] = (uint8_t)e;
	for (int j = 0; j < 16; j++)
		b[1 + j] = (uint8_t)(mxfp4_code(x[j], d) | mxfp4_code(x[j + 16], d) << 4);
}

int moe_type_is_quantizable_block(int type)
{
	return type == MOE_TYPE_Q2_K || type == MOE_TYPE_Q3_K || type == MOE_TYPE_Q4_K || type == MOE_TYPE_Q5_K ||
	       type == MOE_TYPE_Q6_K || type == MOE_TYPE_MXFP4;
}

void moe_quantize_blocks(int type, const float *src, size_t n, void *dst)
{
	const struct moe_block_format *f = moe_block_format(type);
	for (size_t i = 0; i < n / f->weights; i++) {
		const float *x = src + f->weights * i;
		uint8_t *b = (uint8_t *)dst + f->bytes * i;
		switch (type) {
		case MOE_TYPE_MXFP4: block_mxfp4(x, b); break;
		case MOE_TYPE_Q2_K: block_q2_k(x, b); break;
		case MOE_TYPE_Q3_K: block_q3_k(x, b); break;
		case MOE_TYPE_Q4_K: block_k_min(x, b, 4); break;
		case MOE_TYPE_Q5_K: block_k_min(x, b, 5); break;
		case MOE_TYPE_Q6_K: block_q6_k(x, b); break;
		}
	}
}
