/*
 * blocks_x86.h - blocks.c's code decoders with AVX2 integer instructions, 32 codes
 * per instruction instead of one. Included by avx2.c and avx512.c after their target
 * pragmas, so each compiles them for its own instruction set; test_kernels checks
 * them against a float64 dequantization like every kernel.
 */
#ifndef MOE_KERNELS_BLOCKS_X86_H
#define MOE_KERNELS_BLOCKS_X86_H

#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels/blocks.h"
#include "kernels/kernels.h"



#define TILE 4 /* tokens sharing one pass over a weight row */

/* Tokens first .. batch-1 against row r, TILE at a time: ROW(args..., t0, T, out) with
 * T a constant in each call (so its loops unroll into registers), then out to y. */
#define TOKEN_TILES(first, batch, ROW, ...)                                           \
	for (size_t t0 = (first); t0 < (batch); t0 += TILE) {                         \
		float out[TILE];                                                      \
		const size_t T = (batch) - t0 < TILE ? (batch) - t0 : TILE;           \
		switch (T) {                                                          \
		case 1: ROW(__VA_ARGS__, t0, 1, out); break;                          \
		case 2: ROW(__VA_ARGS__, t0, 2, out); break;                          \
		case 3: ROW(__VA_ARGS__, t0, 3, out); break;                          \
		default: ROW(__VA_ARGS__, t0, 4, out); break;                         \
		}                                                                     \
		for (size_t k = 0; k < T; k++)                                        \
			y[(t0 + k) * ystride + r] = out[k];                           \
	}

static inline __m256i x86_load(const uint8_t *p) { return _mm256_loadu_si256((const __m256i *)p); }
static inline void x86_store(uint8_t *p, __m256i v) { _mm256_store_si256((__m256i *)p, v); }

/* 16 bytes of nibbles as 32 codes: low nibbles (weights 0..15), then high ones */
static inline __m256i x86_nibbles32(const uint8_t *qs)
{
	const __m128i raw = _mm_loadu_si128((const __m128i *)qs);
	return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), _mm256_set1_epi8(15));
}

/* 0x10 in byte j where bit j of the 32-bit little-endian word at p is set */
static inline __m256i x86_bits32(const uint8_t *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32((int)v),
						   _mm256_set_epi64x(0x0303030303030303ll, 0x0202020202020202ll,
								     0x0101010101010101ll, 0x0000000000000000ll));
	const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
	return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit), _mm256_set1_epi8(0x10));
}

/* value where bit `bit` of each byte of v is set, else 0 */
static inline __m256i x86_bit_to(__m256i v, int bit, char value)
{
	const __m256i m = _mm256_set1_epi8((char)(1 << bit));
	return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(v, m), m), _mm256_set1_epi8(value));
}

static void x86_codes_q4_1(const uint8_t *b, uint8_t *c) { x86_store(c, x86_nibbles32(b + 4)); }
static void x86_codes_q5_0(const uint8_t *b, uint8_t *c)
{
	x86_store(c, _mm256_or_si256(x86_nibbles32(b + 6), x86_bits32(b + 2)));
}
static void x86_codes_q5_1(const uint8_t *b, uint8_t *c)
{
	x86_store(c, _mm256_or_si256(x86_nibbles32(b + 8), x86_bits32(b + 4)));
}

/* 4-bit indices -> one of 16 levels, by table lookup in each 128-bit lane */
static inline __m256i x86_levels(const int8_t *levels, __m256i nib)
{
	const __m128i t = _mm_loadu_si128((const __m128i *)levels);
	return _mm256_shuffle_epi8(_mm256_set_m128i(t, t), nib);
}
static inline __m256i x86_iq4(__m256i nib) { return x86_levels(moe_iq4_levels, nib); }
static void x86_codes_iq4_nl(const uint8_t *b, uint8_t *c) { x86_store(c, x86_iq4(x86_nibbles32(b + 2))); }
static void x86_codes_mxfp4(const uint8_t *b, uint8_t *c)
{
	x86_store(c, x86_levels(moe_mxfp4_levels, x86_nibbles32(b + 1)));
}
static void x86_codes_iq4_xs(const uint8_t *b, uint8_t *c)
{
	for (int j = 0; j < 8; j++)
		x86_store(c + 32 * j, x86_iq4(x86_nibbles32(b + 8 + 16 * j)));
}

/* Q2_K/Q3_K: 2-bit codes, weight 128h + 32k + l in bits 2k of qs[32h + l] */
static inline void x86_crumbs(const uint8_t *qs, uint8_t *c, const uint8_t *hmask)
{
	const __m256i m3 = _mm256_set1_epi8(3);
	const __m256i hv = hmask ? x86_load(hmask) : _mm256_setzero_si256();
	for (int h = 0; h < 2; h++) {
		const __m256i v = x86_load(qs + 32 * h);
		for (int k = 0; k < 4; k++) {
			__m256i q = _mm256_and_si256(_mm256_srli_epi16(v, 2 * k), m3);
			if (hmask) /* Q3_K: + 4 where bit 4h + k of hmask[l] is set */
				q = _mm256_or_si256(q, x86_bit_to(hv, 4 * h + k, 4));
			x86_store(c + 128 * h + 32 * k, q);
		}
	}
}
static void x86_codes_q2_k(const uint8_t *b, uint8_t *c) { x86_crumbs(b + 16, c, NULL); }
static void x86_codes_q3_k(const uint8_t *b, uint8_t *c) { x86_crumbs(b + 32, c, b); }

/* Q4_K/Q5_K: sub-block 2k the low nibbles of qs[32k..], 2k+1 the high ones */
static inline void x86_k4(const uint8_t *qs, uint8_t *c, const uint8_t *qh)
{
	const __m256i m4 = _mm256_set1_epi8(15);
	const __m256i hv = qh ? x86_load(qh) : _mm256_setzero_si256();
	for (int k = 0; k < 4; k++) {
		const __m256i v = x86_load(qs + 32 * k);
		__m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
		if (qh) { /* Q5_K: + 16 where bit j of qh[l] is set, j the sub-block */
			lo = _mm256_or_si256(lo, x86_bit_to(hv, 2 * k, 16));
			hi = _mm256_or_si256(hi, x86_bit_to(hv, 2 * k + 1, 16));
		}
		x86_store(c + 64 * k, lo);
		x86_store(c + 64 * k + 32, hi);
	}
}
static void x86_codes_q4_k(const uint8_t *b, uint8_t *c) { x86_k4(b + 16, c, NULL); }
static void x86_codes_q5_k(const uint8_t *b, uint8_t *c) { x86_k4(b + 48, c, b + 16); }

/* Q6_K: quarter k of half h (weights 128h + 32k ..) takes a nibble of ql and bits
 * 2k..2k+1 of qh, shifted to bits 4..5 */
static inline void x86_q6_quarters(const uint8_t *b, int h, __m256i u[4])
{
	const __m256i m4 = _mm256_set1_epi8(15), m30 = _mm256_set1_epi8(0x30);
	const __m256i l0 = x86_load(b + 64 * h), l1 = x86_load(b + 64 * h + 32), qh = x86_load(b + 128 + 32 * h);
	u[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30));
	u[1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30));
	u[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4), _mm256_and_si256(qh, m30));
	u[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4), _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30));
}

static void x86_codes_q6_k(const uint8_t *b, uint8_t *c)
{
	for (int h = 0; h < 2; h++) {
		__m256i u[4];
		x86_q6_quarters(b, h, u);
		for (int k = 0; k < 4; k++)
			x86_store(c + 128 * h + 32 * k, u[k]);
	}
}

static moe_block_codes_fn *const x86_codes[MOE_TYPE_COUNT] = {
	[MOE_TYPE_Q4_1] = x86_codes_q4_1,     [MOE_TYPE_Q5_0] = x86_codes_q5_0, [MOE_TYPE_Q5_1] = x86_codes_q5_1,
	[MOE_TYPE_Q2_K] = x86_codes_q2_k,     [MOE_TYPE_Q3_K] = x86_codes_q3_k, [MOE_TYPE_Q4_K] = x86_codes_q4_k,
	[MOE_TYPE_Q5_K] = x86_codes_q5_k,     [MOE_TYPE_Q6_K] = x86_codes_q6_k, [MOE_TYPE_IQ4_NL] = x86_codes_iq4_nl,
	[MOE_TYPE_IQ4_XS] = x86_codes_iq4_xs, [MOE_TYPE_MXFP4] = x86_codes_mxfp4,
};

/*
 * GGUF Q4_K and Q6_K rows against activations quantized per 256 (moe_qact group 256,
 * as ggml's Q8_K): a block's products are summed in int32 with its integer sub-scales
 * (vpmaddubsw, then vpmaddwd by the scales), the offsets come from the activations'
 * sums per 16, and each block costs one float multiply-add per token. T tokens share
 * each decoded block.
 */
static inline float x86_hsum_ps(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

static inline float x86_h16(const uint8_t *p)
{
	uint16_t h;
	memcpy(&h, p, 2);
	return _cvtsh_ss(h);
}

static inline int x86_hsum_i32(__m256i v)
{
	__m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
	s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
	return _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1)));
}

/* 8 vectors' lane sums, vector i's in lane i */
static inline __m256i x86_sums8(const __m256i v[8])
{
	/* per 128-bit half: g0 = the sums of v0..v3's lanes 0-3 | of their lanes 4-7 */
	const __m256i g0 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[0], v[1]), _mm256_hadd_epi32(v[2], v[3]));
	const __m256i g1 = _mm256_hadd_epi32(_mm256_hadd_epi32(v[4], v[5]), _mm256_hadd_epi32(v[6], v[7]));
	return _mm256_add_epi32(_mm256_permute2x128_si256(g0, g1, 0x20), _mm256_permute2x128_si256(g0, g1, 0x31));
}

/*
 * Q4_K, Q5_K and Q6_K sum a token the same way in any batch (the octet kernels below
 * and the per-token ones): per block b, the exact integers S = sum_j sc_j dot_j
 * (sub-block j's scale times its codes . q) and M = sum_j m_j sum_j(q), then
 * f = d S - dmin M (Q6_K has no mins: f = d S), and f times the token's scale
 * fused-added into chain b mod 4; the row's value is (c0 + c2) + (c1 + c3). The
 * per-token kernels leave each block's S and M spread over 8 int32 lanes; kq_chains
 * gathers 8 blocks' at a time.
 */
struct kq_chains {
	__m256i s[TILE][8], m[TILE][8]; /* [token][block mod 8]: lanes adding up to S, M */
	float d[8], dmin[8], dx[TILE][8];
	float c[TILE][4]; /* [token][chain] */
};

static inline __attribute__((always_inline)) void kq_start(struct kq_chains *q, const int T)
{
	for (int k = 0; k < T; k++)
		q->c[k][0] = q->c[k][1] = q->c[k][2] = q->c[k][3] = 0;
}

/* block b's d, dmin and its T tokens' lanes of S (t0 on); mins16: the block's mins,
 * each twice (the activations' sums come per 16), or NULL: none (Q6_K) */
static inline __attribute__((always_inline)) void kq_block(struct kq_chains *q, const int T, size_t b, float d,
							   float dmin, const __m256i *sumi, const __m256i *mins16,
							   const struct moe_qact *a, size_t t0)
{
	const size_t i = b % 8;
	q->d[i] = d, q->dmin[i] = dmin;
	for (int k = 0; k < T; k++) {
		q->s[k][i] = sumi[k];
		if (mins16)
			q->m[k][i] = _mm256_madd_epi16(
				_mm256_loadu_si256((const __m256i *)(a->s16 + (t0 + (size_t)k) * (a->cols / 16) + b * 16)), *mins16);
		q->dx[k][i] = a->d[(t0 + (size_t)k) * (a->cols / 32) + b * 8];
	}
	if (i < 7)
		return;
	const __m256 dv = _mm256_loadu_ps(q->d), dm = _mm256_loadu_ps(q->dmin);
	for (int k = 0; k < T; k++) {
		__m256 f = _mm256_mul_ps(dv, _mm256_cvtepi32_ps(x86_sums8(q->s[k])));
		if (mins16)
			f = _mm256_sub_ps(f, _mm256_mul_ps(dm, _mm256_cvtepi32_ps(x86_sums8(q->m[k]))));
		const __m256 x = _mm256_loadu_ps(q->dx[k]);
		__m128 c = _mm_loadu_ps(q->c[k]); /* blocks b-7..b-4 into chains 0..3, then b-3..b */
		c = _mm_fmadd_ps(_mm256_castps256_ps128(x), _mm256_castps256_ps128(f), c);
		c = _mm_fmadd_ps(_mm256_extractf128_ps(x, 1), _mm256_extractf128_ps(f, 1), c);
		_mm_storeu_ps(q->c[k], c);
	}
}

/* the blocks after the last 8 (of nblk), and the rows' values; mins as kq_block's */
static inline __attribute__((always_inline)) void kq_finish(struct kq_chains *q, const int T, size_t nblk,
							    const int mins, float *out)
{
	for (size_t i = 0; i < nblk % 8; i++) /* block nblk - nblk % 8 + i: chain i mod 4 */
		for (int k = 0; k < T; k++) {
			float f = q->d[i] * (float)x86_hsum_i32(q->s[k][i]);
			if (mins)
				f = f - q->dmin[i] * (float)x86_hsum_i32(q->m[k][i]);
			q->c[k][i % 4] = fmaf(q->dx[k][i], f, q->c[k][i % 4]);
		}
	for (int k = 0; k < T; k++)
		out[k] = (q->c[k][0] + q->c[k][2]) + (q->c[k][1] + q->c[k][3]);
}

/* Q4_K/Q5_K's 8 six-bit scales (bytes 0..7 of out) and mins (8..15), unpacked with
 * 32-bit masks (get_scale_min_k4 for all eight at once) */
static inline void x86_k4_scales(const uint8_t *q, uint8_t out[16])
{
	uint32_t u[4];
	memcpy(u, q, 12);
	const uint32_t m6 = 0x3f3f3f3f, m4 = 0x0f0f0f0f, m2 = 0x03030303;
	u[3] = ((u[2] >> 4) & m4) | (((u[1] >> 6) & m2) << 4); /* mins 4..7 */
	const uint32_t mins_lo = u[1] & m6;                     /* mins 0..3 */
	u[1] = (u[2] & m4) | (((u[0] >> 6) & m2) << 4);         /* scales 4..7 */
	u[2] = mins_lo;
	u[0] &= m6;                                             /* scales 0..3 */
	memcpy(out, u, 16);
}

/* Q4_K, or Q5_K (five: bit 4 of sub-block j's weight l is bit j of qh[l]) */
static inline __attribute__((always_inline)) void x86_q45_k_row(const int five, const uint8_t *row, size_t nblk,
								   const struct moe_qact *a, size_t t0, const int T,
								   float *out)
{
	const size_t cols = a->cols;
	const __m256i m4 = _mm256_set1_epi8(15);
	/* each min twice: the activations' sums come per 16, a sub-block is 32 */
	const __m128i twice = _mm_set_epi8(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
	struct kq_chains q;
	kq_start(&q, T);
	for (size_t b = 0; b < nblk; b++) {
		const uint8_t *blk = row + b * (five ? 176 : 144);
		moe_prefetch_ahead(blk, five ? 176 : 144);
		const __m256i hv = five ? _mm256_loadu_si256((const __m256i *)(blk + 16)) : _mm256_setzero_si256();
		uint8_t sm[16];
		x86_k4_scales(blk + 4, sm);
		const __m128i smv = _mm_loadu_si128((const __m128i *)sm);
		const __m256i mins16 = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(_mm_srli_si128(smv, 8), twice));
		/* the 8 scales as int16 in both lanes: sub-block i's is int16 i, picked by a shuffle */
		const __m256i sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(smv));
		__m256i sumi[4];
		for (int k = 0; k < T; k++)
			sumi[k] = _mm256_setzero_si256();
#pragma GCC unroll 4
		for (int j = 0; j < 4; j++) {
			const __m256i v = _mm256_loadu_si256((const __m256i *)(blk + (five ? 48 : 16) + 32 * j));
			__m256i lo = _mm256_and_si256(v, m4), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
			if (five) {
				lo = _mm256_or_si256(lo, x86_bit_to(hv, 2 * j, 16));
				hi = _mm256_or_si256(hi, x86_bit_to(hv, 2 * j + 1, 16));
			}
			const __m256i s_lo = _mm256_shuffle_epi8(sc16, _mm256_set1_epi16((short)(0x0100 + 0x0202 * 2 * j)));
			const __m256i s_hi = _mm256_shuffle_epi8(sc16, _mm256_set1_epi16((short)(0x0100 + 0x0202 * (2 * j + 1))));
			for (int k = 0; k < T; k++) {
				const int8_t *x = a->q + (t0 + (size_t)k) * cols + b * 256 + 64 * j;
				const __m256i p_lo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)x)), s_lo);
				const __m256i p_hi =
					_mm256_madd_epi16(_mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(x + 32))), s_hi);
				sumi[k] = _mm256_add_epi32(sumi[k], _mm256_add_epi32(p_lo, p_hi));
			}
		}
		kq_block(&q, T, b, x86_h16(blk), x86_h16(blk + 2), sumi, &mins16, a, t0);
	}
	kq_finish(&q, T, nblk, 1, out);
}

static inline __attribute__((always_inline)) void x86_q6_k_row(const uint8_t *row, size_t nblk,
								  const struct moe_qact *a, size_t t0, const int T,
								  float *out)
{
	const size_t cols = a->cols, n16 = cols / 16;
	struct kq_chains ch;
	kq_start(&ch, T);
	for (size_t b = 0; b < nblk; b++) {
		const uint8_t *blk = row + b * 210;
		moe_prefetch_ahead(blk, 210);
		const int8_t *sc = (const int8_t *)blk + 192;
		const float d = x86_h16(blk + 208);
		__m256i sumi[4];
		for (int k = 0; k < T; k++)
			sumi[k] = _mm256_setzero_si256();
		for (int h = 0; h < 2; h++) {
			__m256i u[4];
			x86_q6_quarters(blk, h, u);
			for (int q = 0; q < 4; q++) {
				const int g = 8 * h + 2 * q; /* the two groups of 16 in these 32 weights */
				const __m256i sv = _mm256_set_m128i(_mm_set1_epi16(sc[g + 1]), _mm_set1_epi16(sc[g]));
				for (int k = 0; k < T; k++) {
					const int8_t *x = a->q + (t0 + (size_t)k) * cols + b * 256 + 128 * h + 32 * q;
					const __m256i p = _mm256_maddubs_epi16(u[q], _mm256_loadu_si256((const __m256i *)x));
					sumi[k] = _mm256_add_epi32(sumi[k], _mm256_madd_epi16(p, sv));
				}
			}
		}
		/* the codes are q + 32: take 32 * sum(scale * sum16(x)) back */
		const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)sc));
		for (int k = 0; k < T; k++) {
			const __m256i s16 = _mm256_loadu_si256((const __m256i *)(a->s16 + (t0 + (size_t)k) * n16 + b * 16));
			sumi[k] = _mm256_sub_epi32(sumi[k], _mm256_slli_epi32(_mm256_madd_epi16(s16, sc16), 5));
		}
		kq_block(&ch, T, b, d, 0.0f, sumi, NULL, a, t0); /* no mins: f = d S */
	}
	kq_finish(&ch, T, nblk, 0, out);
}

/* Q2_K, or Q3_K (three): 2-bit codes in groups of 16 with a 4-bit scale and min
 * each (Q2_K), or a high bit from hmask and signed 6-bit scales (Q3_K: weight =
 * d (s - 32) (u - 4), u = code + 4 * high bit) */
static inline __attribute__((always_inline)) void x86_q23_k_row(const int three, const uint8_t *row, size_t nblk,
								   const struct moe_qact *a, size_t t0, const int T,
								   float *out)
{
	const size_t cols = a->cols, nb32 = cols / 32, n16 = cols / 16;
	const __m256i m3 = _mm256_set1_epi8(3);
	__m256 acc[4], mins[4];
	for (int k = 0; k < T; k++) {
		acc[k] = _mm256_setzero_ps();
		mins[k] = _mm256_setzero_ps();
	}
	for (size_t b = 0; b < nblk; b++) {
		const uint8_t *blk = row + b * (three ? 110 : 84), *qs = blk + (three ? 32 : 16);
		moe_prefetch_ahead(blk, three ? 110 : 84);
		const float d = x86_h16(blk + (three ? 108 : 80)), dmin = three ? 0 : x86_h16(blk + 82);
		int8_t sc[16]; /* the groups' integer scales */
		__m256i off16; /* what the codes' offset costs per group: Q2_K its min, Q3_K 4 * its scale */
		if (three) {
			uint32_t u[4];
			memcpy(u, blk + 96, 12);
			const uint32_t m4 = 0x0f0f0f0f, m2 = 0x03030303, hi = u[2];
			u[2] = ((u[0] >> 4) & m4) | (((hi >> 4) & m2) << 4);
			u[3] = ((u[1] >> 4) & m4) | (((hi >> 6) & m2) << 4);
			u[0] = (u[0] & m4) | ((hi & m2) << 4);
			u[1] = (u[1] & m4) | (((hi >> 2) & m2) << 4);
			memcpy(sc, u, 16);
			for (int g = 0; g < 16; g++)
				sc[g] = (int8_t)(sc[g] - 32);
			off16 = _mm256_slli_epi16(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)sc)), 2);
		} else {
			const __m128i raw = _mm_loadu_si128((const __m128i *)blk);
			_mm_storeu_si128((__m128i *)sc, _mm_and_si128(raw, _mm_set1_epi8(15)));
			off16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), _mm_set1_epi8(15)));
		}
		const __m256i hv = three ? _mm256_loadu_si256((const __m256i *)blk) : _mm256_setzero_si256();
		__m256i sumi[4];
		for (int k = 0; k < T; k++)
			sumi[k] = _mm256_setzero_si256();
		for (int h = 0; h < 2; h++) {
			const __m256i v = _mm256_loadu_si256((const __m256i *)(qs + 32 * h));
			for (int q = 0; q < 4; q++) {
				__m256i u = _mm256_and_si256(_mm256_srli_epi16(v, 2 * q), m3);
				if (three)
					u = _mm256_or_si256(u, x86_bit_to(hv, 4 * h + q, 4));
				const int g = 8 * h + 2 * q;
				const __m256i sv = _mm256_set_m128i(_mm_set1_epi16(sc[g + 1]), _mm_set1_epi16(sc[g]));
				for (int k = 0; k < T; k++) {
					const int8_t *x = a->q + (t0 + (size_t)k) * cols + b * 256 + 128 * h + 32 * q;
					const __m256i p = _mm256_maddubs_epi16(u, _mm256_loadu_si256((const __m256i *)x));
					sumi[k] = _mm256_add_epi32(sumi[k], _mm256_madd_epi16(p, sv));
				}
			}
		}
		for (int k = 0; k < T; k++) {
			const size_t t = t0 + (size_t)k;
			const float dx = a->d[t * nb32 + b * 8];
			const __m256i s16 = _mm256_loadu_si256((const __m256i *)(a->s16 + t * n16 + b * 16));
			const __m256i off = _mm256_madd_epi16(s16, off16);
			if (three) {
				acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(d * dx), _mm256_cvtepi32_ps(_mm256_sub_epi32(sumi[k], off)),
							 acc[k]);
			} else {
				acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(d * dx), _mm256_cvtepi32_ps(sumi[k]), acc[k]);
				mins[k] = _mm256_fmadd_ps(_mm256_set1_ps(dmin * dx), _mm256_cvtepi32_ps(off), mins[k]);
			}
		}
	}
	for (int k = 0; k < T; k++)
		out[k] = x86_hsum_ps(_mm256_sub_ps(acc[k], mins[k]));
}

#if defined(X86_AVX512_VNNI)
/*
 * Q6_K with 512-bit registers (avx512.c defines X86_AVX512_VNNI): 64 weights per
 * vpmaddubsw, then one vpmaddwd by the groups' scales (lanes 4g..4g+3 a group of 16).
 * Q4_K/Q5_K keep the 256-bit row there: with the weights prefetched it ran 18-30 %
 * faster than its 512-bit form (bench/RESULTS.md, "Weights prefetched ahead").
 */
static inline __attribute__((always_inline)) void x86_q6_k_row_512(const uint8_t *row, size_t nblk,
								      const struct moe_qact *a, size_t t0, const int T,
								      float *out)
{
	const size_t cols = a->cols, n16 = cols / 16;
	struct kq_chains ch;
	kq_start(&ch, T);
	for (size_t b = 0; b < nblk; b++) {
		const uint8_t *blk = row + b * 210;
		moe_prefetch_ahead(blk, 210);
		const int8_t *sc = (const int8_t *)blk + 192;
		const float d = x86_h16(blk + 208);
		/* group g's scale in lanes 4g..4g+3 of a 64-weight quarter: 4 groups per vector;
		 * each scale in both int16 halves of its lane, for vpmaddwd */
		const __m512i sc32 = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)sc));
		const __m512i sc16x2 =
			_mm512_or_si512(_mm512_and_si512(sc32, _mm512_set1_epi32(0xffff)), _mm512_slli_epi32(sc32, 16));
		__m512i sumi[4];
		for (int k = 0; k < T; k++)
			sumi[k] = _mm512_setzero_si512();
		for (int h = 0; h < 2; h++) {
			__m256i u[4];
			x86_q6_quarters(blk, h, u);
			for (int q = 0; q < 4; q += 2) {
				/* weights 128h + 32q .. +63: groups 8h + 2q .. 8h + 2q + 3 */
				const __m512i uu = _mm512_inserti64x4(_mm512_castsi256_si512(u[q]), u[q + 1], 1);
				const int g = 8 * h + 2 * q;
				const __m512i sv = _mm512_permutexvar_epi32(
					_mm512_set_epi32(g + 3, g + 3, g + 3, g + 3, g + 2, g + 2, g + 2, g + 2, g + 1, g + 1, g + 1,
							 g + 1, g, g, g, g), sc16x2);
				for (int k = 0; k < T; k++) {
					const int8_t *x = a->q + (t0 + (size_t)k) * cols + b * 256 + 128 * h + 32 * q;
					const __m512i p = _mm512_maddubs_epi16(uu, _mm512_loadu_si512(x)); /* 2 * 63 * 127 at most */
					sumi[k] = _mm512_add_epi32(sumi[k], _mm512_madd_epi16(p, sv));
				}
			}
		}
		const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)sc));
		__m256i s8[4];
		for (int k = 0; k < T; k++) {
			const __m256i s16 = _mm256_loadu_si256((const __m256i *)(a->s16 + (t0 + (size_t)k) * n16 + b * 16));
			s8[k] = _mm256_sub_epi32(_mm256_add_epi32(_mm512_castsi512_si256(sumi[k]), _mm512_extracti64x4_epi64(sumi[k], 1)),
						 _mm256_slli_epi32(_mm256_madd_epi16(s16, sc16), 5));
		}
		kq_block(&ch, T, b, d, 0.0f, s8, NULL, a, t0); /* no mins: f = d S */
	}
	kq_finish(&ch, T, nblk, 0, out);
}

#define X86_Q6_K_ROW x86_q6_k_row_512
#else
#define X86_Q6_K_ROW x86_q6_k_row
#endif
/*
 * Q4_K block b of a row against an octet of tokens (moe_qact's q_x8, 8 tokens to a
 * register: this octet's at qx, dx and nx), into the octet's chain *ch; or Q5_K
 * (five: bit 4 of sub-block j's weight l is bit j of qh[l]). Each 16 bytes of codes are
 * 16 columns of two sub-blocks (low nibbles: sub-block 2p, high: 2p + 1), broadcast 4
 * at a time to all 8 tokens. AVX2: a sub-block's 8 vpmaddubsw add up in 16 bits (at
 * most 8 * 2 * 15 * 127 = 30480; Q5_K's 31 allows 4, so its halves are scaled apart),
 * then one vpmaddwd by its scale serves 8 tokens; VNNI: vpdpbusd adds each token's 4
 * products into its int32 lane, one instruction for both steps, then one vpmulld by
 * the scale.
 */
#if defined(X86_AVX512_VNNI)
#define K4_DOT(acc, codes, x) ((acc) = _mm256_dpbusd_epi32((acc), (codes), (x)))
#define K4_SCALE(acc, j) _mm256_mullo_epi32((acc), _mm256_set1_epi32(sm[j]))
#else
#define K4_DOT(acc, codes, x) ((acc) = _mm256_add_epi16((acc), _mm256_maddubs_epi16((codes), (x))))
#define K4_SCALE(acc, j) _mm256_madd_epi16((acc), _mm256_set1_epi32((int)pairs[j]))
#endif
static inline __attribute__((always_inline)) void x86_q45_k_octet_block(const int five, const uint8_t *blk, size_t b,
									   const int8_t *qx, const float *dx,
									   const int32_t *sx, __m256 *ch)
{
	const __m256i m4 = _mm256_set1_epi8(15);
	const uint8_t *qs = blk + (five ? 48 : 16);
	uint8_t sm[16];
	x86_k4_scales(blk + 4, sm);
	/* the scales and mins each in both int16 halves of a 32-bit word, broadcast from
	 * memory (a load, where a byte's broadcast takes three instructions) */
	uint32_t pairs[16];
	for (int h = 0; h < 2; h++) { /* scales, then mins */
		const __m128i v = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)(sm + 8 * h)));
		_mm_storeu_si128((__m128i *)(pairs + 8 * h), _mm_unpacklo_epi16(v, v));
		_mm_storeu_si128((__m128i *)(pairs + 8 * h + 4), _mm_unpackhi_epi16(v, v));
	}
	__m256i S = _mm256_setzero_si256(), M = _mm256_setzero_si256();
#pragma GCC unroll 4
	for (int p = 0; p < 4; p++) {
		const __m256i *x = (const __m256i *)(qx + 256 * (8 * b + 2 * p)); /* sub-blocks 2p, 2p + 1 */
		__m256i slo = _mm256_setzero_si256(), shi = _mm256_setzero_si256();
#pragma GCC unroll 2
		for (int h = 0; h < 2; h++) {
			const __m256i w = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(qs + 32 * p + 16 * h)));
			__m256i lo = _mm256_and_si256(w, m4), hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), m4);
			if (five) {
				const __m256i qh = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(blk + 16 + 16 * h)));
				lo = _mm256_or_si256(lo, x86_bit_to(qh, 2 * p, 16));
				hi = _mm256_or_si256(hi, x86_bit_to(qh, 2 * p + 1, 16));
			}
/* columns 16h + 4g .. + 3 of both sub-blocks; the empty asm keeps GCC from computing
 * all products first and running out of registers */
#define K4_GROUP(g, imm)                                                                          \
	do {                                                                                      \
		K4_DOT(slo, _mm256_shuffle_epi32(lo, imm), _mm256_load_si256(x + 4 * h + (g)));     \
		K4_DOT(shi, _mm256_shuffle_epi32(hi, imm), _mm256_load_si256(x + 8 + 4 * h + (g))); \
		__asm__("" : "+x"(slo), "+x"(shi));                                               \
	} while (0)
			K4_GROUP(0, 0x00);
			K4_GROUP(1, 0x55);
			K4_GROUP(2, 0xaa);
			K4_GROUP(3, 0xff);
#undef K4_GROUP
			if (five || h == 1) {
				S = _mm256_add_epi32(S, _mm256_add_epi32(K4_SCALE(slo, 2 * p), K4_SCALE(shi, 2 * p + 1)));
				slo = shi = _mm256_setzero_si256();
			}
		}
	}
	/* M: each min times its sub-block's two sums per 16 (an int16 pair per token) */
#pragma GCC unroll 8
	for (int j = 0; j < 8; j++)
		M = _mm256_add_epi32(M, _mm256_madd_epi16(_mm256_load_si256((const __m256i *)(sx + 8 * (8 * b + j))),
							  _mm256_set1_epi32((int)pairs[8 + j])));
	const __m256 f = _mm256_sub_ps(_mm256_mul_ps(_mm256_set1_ps(x86_h16(blk)), _mm256_cvtepi32_ps(S)),
				       _mm256_mul_ps(_mm256_set1_ps(x86_h16(blk + 2)), _mm256_cvtepi32_ps(M)));
	*ch = _mm256_fmadd_ps(_mm256_load_ps(dx + 8 * (8 * b)), f, *ch);
}
#undef K4_DOT
#undef K4_SCALE

/*
 * Q6_K block b of a row against an octet of tokens, likewise: codes 0..63 (the weight
 * is d * scale * (code - 32)), stored unpacked and broadcast 4 at a time to the 8
 * tokens from memory, a scale per 16 columns. AVX2: two vpmaddubsw add up in 16 bits
 * (2 * 2 * 63 * 127 = 32004), then vpmaddwd by the group's scale; VNNI: a group's 4
 * vpdpbusd, then vpmulld. The codes' offset 32 comes back as 32 times the scales
 * times the tokens' sums per 16 (s16_x8 at sx, one vpmaddwd per 32 columns).
 */
static inline __m256i k6_codes(const uint8_t *c)
{
	int32_t four;
	memcpy(&four, c, 4);
	return _mm256_set1_epi32(four);
}

/* sc times a 16-column group's products, codes (broadcast 4 at a time) by x[0..3] */
static inline __attribute__((always_inline)) __m256i k6_group(const uint8_t *codes, const __m256i *x, int sc)
{
#if defined(X86_AVX512_VNNI)
	__m256i s = _mm256_setzero_si256();
	for (int g = 0; g < 4; g++)
		s = _mm256_dpbusd_epi32(s, k6_codes(codes + 4 * g), x[g]);
	return _mm256_mullo_epi32(s, _mm256_set1_epi32(sc));
#else
	const __m256i s16 = _mm256_set1_epi16((short)sc);
	const __m256i p01 = _mm256_add_epi16(_mm256_maddubs_epi16(k6_codes(codes), x[0]),
					     _mm256_maddubs_epi16(k6_codes(codes + 4), x[1]));
	const __m256i p23 = _mm256_add_epi16(_mm256_maddubs_epi16(k6_codes(codes + 8), x[2]),
					     _mm256_maddubs_epi16(k6_codes(codes + 12), x[3]));
	return _mm256_add_epi32(_mm256_madd_epi16(p01, s16), _mm256_madd_epi16(p23, s16));
#endif
}

/* a Q6_K block's 256 codes, a byte each in column order */
static inline void x86_q6_k_unpack(const uint8_t *blk, uint8_t *codes)
{
#pragma GCC unroll 2
	for (int h = 0; h < 2; h++) {
		__m256i u[4];
		x86_q6_quarters(blk, h, u);
#pragma GCC unroll 4
		for (int q = 0; q < 4; q++)
			_mm256_store_si256((__m256i *)(codes + 128 * h + 32 * q), u[q]);
	}
}

/* block b (blk, its codes unpacked) */
static inline __attribute__((always_inline)) void x86_q6_k_octet_block(const uint8_t *blk, const uint8_t *codes,
									  size_t b, const int8_t *qx, const float *dx,
									  const int32_t *sx, __m256 *ch)
{
	const int8_t *sc = (const int8_t *)blk + 192;
	__m256i S = _mm256_setzero_si256(), off = _mm256_setzero_si256();
#pragma GCC unroll 8
	for (int j = 0; j < 8; j++) { /* 32 columns: groups 2j and 2j + 1 */
		const __m256i *x = (const __m256i *)(qx + 256 * (8 * b + j));
		S = _mm256_add_epi32(S, k6_group(codes + 32 * j, x, sc[2 * j]));
		S = _mm256_add_epi32(S, k6_group(codes + 32 * j + 16, x + 4, sc[2 * j + 1]));
		const int32_t pair = (int32_t)(((uint32_t)(uint16_t)sc[2 * j + 1] << 16) | (uint16_t)sc[2 * j]);
		off = _mm256_add_epi32(off, _mm256_madd_epi16(_mm256_load_si256((const __m256i *)(sx + 8 * (8 * b + j))),
							      _mm256_set1_epi32(pair)));
	}
	S = _mm256_sub_epi32(S, _mm256_slli_epi32(off, 5));
	const __m256 f = _mm256_mul_ps(_mm256_set1_ps(x86_h16(blk + 208)), _mm256_cvtepi32_ps(S));
	*ch = _mm256_fmadd_ps(_mm256_load_ps(dx + 8 * (8 * b)), f, *ch);
}

/* a last octet with fewer tokens than this goes through the per-token kernel: a
 * padded octet costs about as much as 4.5 tokens of Q4_K there, 3.5 of Q6_K
 * (moe-bench kernels, batches 4 and 5) */
#define KQ_OCTET_MIN(kind) ((kind) == 6 ? 4 : 5)

#define KQ_CHUNK 16 /* blocks of a row per pass over the octets (a multiple of 4) */

/* block b of a row (blk; codes: Q6_K's unpacked) for octet o, into its chain *ch */
static inline __attribute__((always_inline)) void x86_k_octet_block(const int kind, const uint8_t *blk,
								       const uint8_t *codes, size_t b,
								       const struct moe_qact *a, size_t o,
								       size_t ostride, __m256 *ch)
{
	const int8_t *qx = a->q_x8 + o * ostride * 32;
	const float *dx = a->d_x8 + o * ostride;
	if (kind == 6)
		x86_q6_k_octet_block(blk, codes, b, qx, dx, a->s16_x8 + o * ostride, ch);
	else
		x86_q45_k_octet_block(kind == 5, blk, b, qx, dx, a->s16_x8 + o * ostride, ch);
}

/* Q4_K, Q5_K or Q6_K (kind 4, 5, 6) rows [r0, r1) for the tokens in whole octets;
 * returns the first token left. A row goes KQ_CHUNK blocks at a time through every
 * octet, its chains in registers meanwhile; Q6_K's codes are unpacked once per chunk
 * for all octets. */
static inline size_t x86_k_octets(const int kind, const struct moe_wmat *w, size_t r0, size_t r1,
				  const struct moe_qact *a, float *y, size_t ystride)
{
	if (!a->q_x8 || a->batch < MOE_QACT_X8_MIN || a->batch > MOE_MAX_BATCH) /* c holds a forward pass's */
		return 0;
	const size_t octets = a->batch / 8 + (a->batch % 8 >= KQ_OCTET_MIN(kind)), nblk = w->cols / 256;
	const size_t ostride = w->cols / 32 * 8; /* an octet's entries in d_x8 and s16_x8 (its q_x8 bytes / 32) */
	const size_t bytes = moe_block_format(w->type)->bytes;
	__m256 c[MOE_MAX_BATCH / 8][4]; /* [octet][chain] */
	_Alignas(32) uint8_t codes[KQ_CHUNK][256];
	for (size_t r = r0; r < r1; r++) {
		const uint8_t *row = (const uint8_t *)w->codes + r * nblk * bytes;
		for (size_t o = 0; o < octets; o++)
			c[o][0] = c[o][1] = c[o][2] = c[o][3] = _mm256_setzero_ps();
		for (size_t b0 = 0; b0 < nblk; b0 += KQ_CHUNK) {
			const size_t n = nblk - b0 < KQ_CHUNK ? nblk - b0 : KQ_CHUNK;
			for (size_t i = 0; kind == 6 && i < n; i++)
				x86_q6_k_unpack(row + (b0 + i) * bytes, codes[i]);
			for (size_t o = 0; o < octets; o++) {
				__m256 c0 = c[o][0], c1 = c[o][1], c2 = c[o][2], c3 = c[o][3];
				size_t i = 0; /* block b0 + i goes into chain i mod 4 (b0: a multiple of 4) */
#define KQ_BLOCK(j, ch) x86_k_octet_block(kind, row + (b0 + (j)) * bytes, codes[j], b0 + (j), a, o, ostride, &(ch))
				for (; i + 4 <= n; i += 4) {
					KQ_BLOCK(i, c0);
					KQ_BLOCK(i + 1, c1);
					KQ_BLOCK(i + 2, c2);
					KQ_BLOCK(i + 3, c3);
				}
				if (i < n)
					KQ_BLOCK(i, c0);
				if (i + 1 < n)
					KQ_BLOCK(i + 1, c1);
				if (i + 2 < n)
					KQ_BLOCK(i + 2, c2);
#undef KQ_BLOCK
				c[o][0] = c0, c[o][1] = c1, c[o][2] = c2, c[o][3] = c3;
			}
		}
		for (size_t o = 0; o < octets; o++) {
			float out[8];
			_mm256_storeu_ps(out, _mm256_add_ps(_mm256_add_ps(c[o][0], c[o][2]), _mm256_add_ps(c[o][1], c[o][3])));
			for (size_t k = 0; k < 8 && o * 8 + k < a->batch; k++)
				y[(o * 8 + k) * ystride + r] = out[k];
		}
	}
	return octets * 8 < a->batch ? octets * 8 : a->batch;
}

/* Rows [r0, r1) of a Q2_K .. Q6_K matrix; 0 if this form does not apply (the caller
 * then takes the generic path). */
static inline int x86_kquant_rows(const struct moe_wmat *w, size_t r0, size_t r1, const struct moe_qact *a, float *y,
				  size_t ystride)
{
	const struct moe_block_format *f = moe_block_format(w->type);
	if (a->group != 256 || w->type < MOE_TYPE_Q2_K || w->type > MOE_TYPE_Q6_K)
		return 0;
	/* every batch size on this path (the generic one was faster for Q2_K, Q3_K and Q5_K
	 * at batch 32, but sums in another order): a token's result is the same in any batch */
	const size_t nblk = w->cols / 256, row_bytes = nblk * f->bytes;
	const size_t first = w->type == MOE_TYPE_Q4_K   ? x86_k_octets(4, w, r0, r1, a, y, ystride)
			     : w->type == MOE_TYPE_Q5_K ? x86_k_octets(5, w, r0, r1, a, y, ystride)
			     : w->type == MOE_TYPE_Q6_K ? x86_k_octets(6, w, r0, r1, a, y, ystride)
							: 0;
	for (size_t r = r0; r < r1; r++) {
		const uint8_t *row = (const uint8_t *)w->codes + r * row_bytes;
		switch (w->type) {
		case MOE_TYPE_Q2_K: TOKEN_TILES(first, a->batch, x86_q23_k_row, 0, row, nblk, a); break;
		case MOE_TYPE_Q3_K: TOKEN_TILES(first, a->batch, x86_q23_k_row, 1, row, nblk, a); break;
		case MOE_TYPE_Q4_K: TOKEN_TILES(first, a->batch, x86_q45_k_row, 0, row, nblk, a); break;
		case MOE_TYPE_Q5_K: TOKEN_TILES(first, a->batch, x86_q45_k_row, 1, row, nblk, a); break;
		default: TOKEN_TILES(first, a->batch, X86_Q6_K_ROW, row, nblk, a); break;
		}
	}
	return 1;
}

/* The generic path: decoded block weights (blocks.h) against T tokens, 32 codes per
 * integer product (vpmaddubsw + vpmaddwd, or vpdpbusd with VNNI) whose int32 lanes 0-3
 * hold the first 16 weights' products and 4-7 the second's, so one vector of the two
 * groups' scales weights them; the biases per 16 are one dot of z with the
 * activations' sums. Signed codes (IQ4) go through the sign trick of q8. */
static inline __attribute__((always_inline)) void x86_block_dot_tile(const uint8_t *c, const float *s, const float *z,
								 const int sgn, size_t n, const struct moe_qact *a,
								 size_t col0, size_t t0, const int T, float *acc)
{
	const size_t cols = a->cols, nb = cols / 32;
	__m256 sum[4];
#pragma GCC unroll 4
	for (int k = 0; k < T; k++)
		sum[k] = _mm256_setzero_ps();
	for (size_t i = 0; i < n; i += 32) {
		const __m256i cv = _mm256_load_si256((const __m256i *)(c + i));
		const __m256i cu = sgn ? _mm256_sign_epi8(cv, cv) : cv;
		/* the two groups' scales over lanes 0-3 and 4-7 */
		const __m256 sv = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_castpd_ps(_mm_load_sd((const double *)(s + i / 16)))),
							   _mm256_set_epi32(1, 1, 1, 1, 0, 0, 0, 0));
#pragma GCC unroll 4
		for (int k = 0; k < T; k++) {
			const size_t t = t0 + (size_t)k;
			__m256i xv = _mm256_loadu_si256((const __m256i *)(a->q + t * cols + col0 + i));
			if (sgn)
				xv = _mm256_sign_epi8(xv, cv);
#if defined(X86_AVX512_VNNI)
			const __m256i p = _mm256_dpbusd_epi32(_mm256_setzero_si256(), cu, xv);
#else
			const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(cu, xv), _mm256_set1_epi16(1));
#endif
			const __m256 sx = _mm256_mul_ps(sv, _mm256_set1_ps(a->d[t * nb + (col0 + i) / 32]));
			sum[k] = _mm256_fmadd_ps(sx, _mm256_cvtepi32_ps(p), sum[k]);
		}
	}
	const size_t ng = n / 16;
#pragma GCC unroll 4
	for (int k = 0; k < T; k++) {
		const float *ds = a->ds16 + (t0 + (size_t)k) * (cols / 16) + col0 / 16;
		__m256 zc = _mm256_setzero_ps();
		size_t g = 0;
		for (; g + 8 <= ng; g += 8)
			zc = _mm256_fmadd_ps(_mm256_load_ps(z + g), _mm256_loadu_ps(ds + g), zc);
		float corr = x86_hsum_ps(zc);
		for (; g < ng; g++)
			corr += z[g] * ds[g];
		acc[k] += x86_hsum_ps(sum[k]) - corr;
	}
}

static void x86_block_dot(const uint8_t *c, const float *s, const float *z, int sgn, size_t n, const struct moe_qact *a,
		      size_t col0, size_t t0, size_t T, float *acc)
{
	switch (T * 2 + (sgn != 0)) {
	case 2: x86_block_dot_tile(c, s, z, 0, n, a, col0, t0, 1, acc); break;
	case 3: x86_block_dot_tile(c, s, z, 1, n, a, col0, t0, 1, acc); break;
	case 4: x86_block_dot_tile(c, s, z, 0, n, a, col0, t0, 2, acc); break;
	case 5: x86_block_dot_tile(c, s, z, 1, n, a, col0, t0, 2, acc); break;
	case 6: x86_block_dot_tile(c, s, z, 0, n, a, col0, t0, 3, acc); break;
	case 7: x86_block_dot_tile(c, s, z, 1, n, a, col0, t0, 3, acc); break;
	case 8: x86_block_dot_tile(c, s, z, 0, n, a, col0, t0, 4, acc); break;
	default: x86_block_dot_tile(c, s, z, 1, n, a, col0, t0, 4, acc); break;
	}
}

/* MXFP4 {e, qs[16]} (gpt-oss's experts): the codes looked up (vpshufb) as their level
 * + 12, 0..24, unsigned for vpmaddubsw against the int8 activations; 12 x sum(x) taken
 * back per block from the activations' sums. Weight j of a block is the low nibble of
 * qs[j], weight j + 16 its high nibble. Eight blocks at a time: each block's exact
 * integer sum, the eight in one vector, converted and fused-multiplied by their
 * scales 2^(e-128) x the activation scales (one chain per lane); fewer than eight
 * left go one by one into a scalar chain. */
static inline __m256i x86_mxfp4_codes(const uint8_t *blk)
{
	const __m256i table = _mm256_setr_epi8(12, 13, 14, 15, 16, 18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0, 12, 13, 14, 15, 16,
					       18, 20, 24, 12, 11, 10, 9, 8, 6, 4, 0);
	const __m128i m4 = _mm_set1_epi8(15), q = _mm_loadu_si128((const __m128i *)(blk + 1));
	return _mm256_shuffle_epi8(table, _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), m4), _mm_and_si128(q, m4)));
}

/* moe_mxfp4_scale of the 8 blocks from blk */
static inline __m256 x86_mxfp4_scales8(const uint8_t *blk)
{
	const __m256i e = _mm256_setr_epi32(blk[0], blk[17], blk[34], blk[51], blk[68], blk[85], blk[102], blk[119]);
	const __m256i normal = _mm256_slli_epi32(_mm256_sub_epi32(e, _mm256_set1_epi32(1)), 23);
	const __m256i subnormal = _mm256_sllv_epi32(_mm256_set1_epi32(0x00200000), e);
	return _mm256_castsi256_ps(_mm256_blendv_epi8(normal, subnormal, _mm256_cmpgt_epi32(_mm256_set1_epi32(2), e)));
}

static inline __attribute__((always_inline)) void x86_mxfp4_row(const uint8_t *row, size_t nblk,
								   const struct moe_qact *a, size_t t0, const int T,
								   float *out)
{
	const size_t cols = a->cols;
	const __m256i ones = _mm256_set1_epi16(1);
	__m256 acc[4], corr[4];
	float tail[4], tail_corr[4];
	for (int k = 0; k < T; k++)
		acc[k] = corr[k] = _mm256_setzero_ps(), tail[k] = tail_corr[k] = 0;
	size_t b = 0;
	for (; b + 8 <= nblk; b += 8) {
		const uint8_t *blk = row + b * 17;
		moe_prefetch_ahead(blk, 8 * 17);
		const __m256 sc = x86_mxfp4_scales8(blk);
		__m256i u[8];
#pragma GCC unroll 8
		for (int j = 0; j < 8; j++)
			u[j] = x86_mxfp4_codes(blk + 17 * j);
		for (int k = 0; k < T; k++) {
			const size_t t = t0 + (size_t)k, i = t * (cols / 32) + b;
			const int8_t *x = a->q + t * cols + b * 32;
			__m256i v[8];
#pragma GCC unroll 8
			for (int j = 0; j < 8; j++)
				v[j] = _mm256_madd_epi16(_mm256_maddubs_epi16(u[j], _mm256_loadu_si256((const __m256i *)(x + 32 * j))),
							 ones);
			acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(x86_sums8(v)), _mm256_mul_ps(sc, _mm256_loadu_ps(a->d + i)), acc[k]);
			corr[k] = _mm256_fmadd_ps(sc, _mm256_loadu_ps(a->ds + i), corr[k]);
		}
	}
	for (; b < nblk; b++) {
		const uint8_t *blk = row + b * 17;
		const float scale = moe_mxfp4_scale(blk[0]);
		const __m256i u = x86_mxfp4_codes(blk);
		for (int k = 0; k < T; k++) {
			const size_t t = t0 + (size_t)k, i = t * (cols / 32) + b;
			const __m256i x = _mm256_loadu_si256((const __m256i *)(a->q + t * cols + b * 32));
			const int n = x86_hsum_i32(_mm256_madd_epi16(_mm256_maddubs_epi16(u, x), ones));
			tail[k] = fmaf((float)n, scale * a->d[i], tail[k]);
			tail_corr[k] = fmaf(scale, a->ds[i], tail_corr[k]);
		}
	}
	for (int k = 0; k < T; k++)
		out[k] = (x86_hsum_ps(acc[k]) + tail[k]) - 12.0f * (x86_hsum_ps(corr[k]) + tail_corr[k]);
}

static void x86_mxfp4_rows(const struct moe_wmat *w, size_t r0, size_t r1, const struct moe_qact *a, float *y,
			   size_t ystride)
{
	const size_t nblk = w->cols / 32;
	for (size_t r = r0; r < r1; r++) {
		const uint8_t *row = (const uint8_t *)w->codes + r * nblk * 17;
		TOKEN_TILES(0, a->batch, x86_mxfp4_row, row, nblk, a);
	}
}

/* an implementation's `blocks`: the fused K and MXFP4 kernels where they apply, else the
 * generic path */
static void x86_blocks(const struct moe_wmat *w, size_t r0, size_t r1, const struct moe_qact *a, float *y,
		       size_t ystride)
{
	if (w->type == MOE_TYPE_MXFP4 && a->group == 32)
		x86_mxfp4_rows(w, r0, r1, a, y, ystride);
	else if (!x86_kquant_rows(w, r0, r1, a, y, ystride))
		moe_blocks_rows(x86_block_dot, x86_codes, w, r0, r1, a, y, ystride);
}


#endif
