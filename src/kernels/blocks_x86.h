/*
 * blocks_x86.h - blocks.c's code decoders with AVX2 integer instructions, 32 codes
 * per instruction instead of one. Included by avx2.c and avx512.c after their target
 * pragmas, so each compiles them for its own instruction set; test_kernels checks
 * them against a float64 dequantization like every kernel.
 */
#ifndef MOE_KERNELS_BLOCKS_X86_H
#define MOE_KERNELS_BLOCKS_X86_H

#include <immintrin.h>
#include <string.h>

#include "kernels/blocks.h"

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

static inline __m256i x86_iq4(__m256i nib)
{
	const __m128i t = _mm_loadu_si128((const __m128i *)moe_iq4_levels);
	return _mm256_shuffle_epi8(_mm256_set_m128i(t, t), nib);
}
static void x86_codes_iq4_nl(const uint8_t *b, uint8_t *c) { x86_store(c, x86_iq4(x86_nibbles32(b + 2))); }
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

/* Q6_K: quarter k of each half takes a nibble of ql and bits 2k..2k+1 of qh, shifted to bits 4..5 */
static void x86_codes_q6_k(const uint8_t *b, uint8_t *c)
{
	const __m256i m4 = _mm256_set1_epi8(15), m30 = _mm256_set1_epi8(0x30);
	for (int h = 0; h < 2; h++) {
		const __m256i l0 = x86_load(b + 64 * h), l1 = x86_load(b + 64 * h + 32), qh = x86_load(b + 128 + 32 * h);
		const __m256i hi[4] = {
			_mm256_and_si256(_mm256_slli_epi16(qh, 4), m30), _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30),
			_mm256_and_si256(qh, m30), _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30)};
		const __m256i lo[4] = {_mm256_and_si256(l0, m4), _mm256_and_si256(l1, m4),
				       _mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
				       _mm256_and_si256(_mm256_srli_epi16(l1, 4), m4)};
		for (int k = 0; k < 4; k++)
			x86_store(c + 128 * h + 32 * k, _mm256_or_si256(lo[k], hi[k]));
	}
}

static moe_block_codes_fn *const x86_codes[MOE_TYPE_COUNT] = {
	[MOE_TYPE_Q4_1] = x86_codes_q4_1,     [MOE_TYPE_Q5_0] = x86_codes_q5_0, [MOE_TYPE_Q5_1] = x86_codes_q5_1,
	[MOE_TYPE_Q2_K] = x86_codes_q2_k,     [MOE_TYPE_Q3_K] = x86_codes_q3_k, [MOE_TYPE_Q4_K] = x86_codes_q4_k,
	[MOE_TYPE_Q5_K] = x86_codes_q5_k,     [MOE_TYPE_Q6_K] = x86_codes_q6_k, [MOE_TYPE_IQ4_NL] = x86_codes_iq4_nl,
	[MOE_TYPE_IQ4_XS] = x86_codes_iq4_xs,
};

#endif
