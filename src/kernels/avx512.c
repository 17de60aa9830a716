/* avx512.c - AVX-512 (F, BW, VL) with VNNI: vpdpbusd multiplies unsigned by signed
 * bytes and accumulates into int32 without the int16 saturation of vpmaddubsw.
 * q8: two 32-weight blocks per 512-bit register, codes offset to unsigned (w ^ 0x80 =
 * w + 128) and 128 * sum(x) taken back. q4 is avx2.c's kernel: its 8 tokens per
 * 256-bit register prefilled faster than two q4 blocks per 512-bit one (134 against
 * 102 GFLOP/s per thread at batch 32) and decodes as fast (bench/RESULTS.md). */
#include "kernels/kernels.h"

#if defined(__x86_64__)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c"))), \
			     apply_to = function)
#else
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")
#endif
#include <immintrin.h>
/* no a * b + c fused unless written so: a token's sums then come out the same whichever
 * tile of a batch computed them */
#if defined(__clang__)
#pragma clang fp contract(off)
#else
#pragma GCC optimize("fp-contract=off")
#endif

#define X86_AVX512_VNNI 1 /* blocks_x86.h's VNNI kernels, for this file's target */
#include "kernels/blocks_x86.h"

static int available(void)
{
	__builtin_cpu_init();
	return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
	       __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}

static inline __m512i q8_pair(const uint8_t *p)
{
	return _mm512_xor_si512(_mm512_loadu_si512(p), _mm512_set1_epi8((char)0x80)); /* w + 128 */
}

static inline __m256i q8_one(const uint8_t *p)
{
	return _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)p), _mm256_set1_epi8((char)0x80));
}

/*
 * q8, R rows x T tokens. Codes are unsigned (w + 128) and the offset is taken back
 * inside the integer sum: the accumulator starts at -128 * sum(x) per block
 * (precomputed with the activations), so each block's int32 lanes hold exactly
 * sum(w * x). Scales and offsets are loaded 16 blocks at a time and spread
 * over a pair's lanes with one permute each.
 */
static inline __attribute__((always_inline)) void q8_tile(const struct moe_wmat *w, size_t r,
							 const int R, const struct moe_qact *a, size_t t0, const int T,
							 float *y, size_t ystride)
{
	const size_t cols = w->cols, nb = cols / 32, npair = nb / 2;
	const uint8_t *wr[4];
	const uint16_t *sr[4];
#pragma GCC unroll 4
	for (int i = 0; i < R; i++) {
		wr[i] = (const uint8_t *)w->codes + (r + (size_t)i) * cols;
		sr[i] = w->scales + (r + (size_t)i) * nb;
	}
	const int32_t *nsum = a->nsum128;
	const __m512i idx0 = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
	__m512 acc[4][TILE];
#pragma GCC unroll 4
	for (int i = 0; i < R; i++)
#pragma GCC unroll 4
		for (int k = 0; k < T; k++)
			acc[i][k] = _mm512_setzero_ps();
	for (size_t g = 0; g < npair; g += 8) {
		const size_t ng = npair - g < 8 ? npair - g : 8;
		const __mmask16 m = ng == 8 ? (__mmask16)0xffff : (__mmask16)((1u << (2 * ng)) - 1);
		__m512 dw16[4], dx16[TILE];
		__m512i ns16[TILE];
#pragma GCC unroll 4
		for (int i = 0; i < R; i++) {
			moe_prefetch_ahead(sr[i] + 2 * g, 32);
			dw16[i] = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, sr[i] + 2 * g));
		}
#pragma GCC unroll 4
		for (int k = 0; k < T; k++) {
			dx16[k] = _mm512_maskz_loadu_ps(m, a->d + (t0 + (size_t)k) * nb + 2 * g);
			ns16[k] = _mm512_maskz_loadu_epi32(m, nsum + (t0 + (size_t)k) * nb + 2 * g);
		}
		for (size_t j = 0; j < ng; j++) {
			const size_t pair = g + j;
			const __m512i idx = _mm512_add_epi32(idx0, _mm512_set1_epi32((int)(2 * j)));
			__m512i wv[4];
			__m512 dwv[4];
#pragma GCC unroll 4
			for (int i = 0; i < R; i++) {
				moe_prefetch_ahead(wr[i] + pair * 64, 64);
				wv[i] = q8_pair(wr[i] + pair * 64);
				dwv[i] = _mm512_permutexvar_ps(idx, dw16[i]);
			}
#pragma GCC unroll 4
			for (int k = 0; k < T; k++) {
				const __m512i xv = _mm512_loadu_si512(a->q + (t0 + (size_t)k) * cols + pair * 64);
				/* -off * sum(x) of each block in the first lane of its 8 */
				const __m512i bias = _mm512_maskz_permutexvar_epi32(0x0101, idx, ns16[k]);
				const __m512 dxv = _mm512_permutexvar_ps(idx, dx16[k]);
#pragma GCC unroll 4
				for (int i = 0; i < R; i++) {
					const __m512i p = _mm512_dpbusd_epi32(bias, wv[i], xv);
					acc[i][k] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(dwv[i], dxv), acc[i][k]);
				}
			}
		}
	}
	float tail[4][TILE] = {{0}};
	if (nb & 1) { /* an odd block count: the last block at 256 bits */
		const size_t b = nb - 1;
		const __m256i off1 = _mm256_set1_epi8((char)0x80);
#pragma GCC unroll 4
		for (int k = 0; k < T; k++) {
			const __m256i xv = _mm256_loadu_si256((const __m256i *)(a->q + (t0 + (size_t)k) * cols + b * 32));
			const __m256i bias = _mm256_sub_epi32(_mm256_setzero_si256(),
							      _mm256_dpbusd_epi32(_mm256_setzero_si256(), off1, xv));
#pragma GCC unroll 4
			for (int i = 0; i < R; i++) {
				const __m256i u = q8_one(wr[i] + b * 32);
				const __m256i p = _mm256_dpbusd_epi32(bias, u, xv);
				tail[i][k] = _cvtsh_ss(sr[i][b]) * a->d[(t0 + (size_t)k) * nb + b] *
					     (float)_mm512_reduce_add_epi32(_mm512_zextsi256_si512(p));
			}
		}
	}
#pragma GCC unroll 4
	for (int i = 0; i < R; i++)
#pragma GCC unroll 4
		for (int k = 0; k < T; k++)
			y[(t0 + (size_t)k) * ystride + r + (size_t)i] = _mm512_reduce_add_ps(acc[i][k]) + tail[i][k];
}

/* rows in groups of 4 (then one by one); for each group, tokens in groups of up to TILE,
 * so a group's weights are read from memory once and from cache for the other tokens */
static void q8(const struct moe_wmat *w, size_t r0, size_t r1, const struct moe_qact *a, float *y, size_t ystride)
{
#define TOKENS(R)                                                                      \
	for (size_t t0 = 0; t0 < a->batch; t0 += TILE) {                               \
		switch (a->batch - t0 < TILE ? a->batch - t0 : TILE) {                 \
		case 1: q8_tile(w, r, R, a, t0, 1, y, ystride); break;                 \
		case 2: q8_tile(w, r, R, a, t0, 2, y, ystride); break;                 \
		case 3: q8_tile(w, r, R, a, t0, 3, y, ystride); break;                 \
		default: q8_tile(w, r, R, a, t0, 4, y, ystride); break;                \
		}                                                                      \
	}
	size_t r = r0;
	if (a->batch > 1) /* one row at a time streams best when nothing is shared */
		for (; r + 4 <= r1; r += 4)
			TOKENS(4)
	for (; r < r1; r++)
		TOKENS(1)
#undef TOKENS
}

/* float weights: 16 columns at a time, the tail with masked loads */
static inline __m512 fl_load(const void *wrow, int half, size_t c, __mmask16 m)
{
	return half ? _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const uint16_t *)wrow + c))
		    : _mm512_maskz_loadu_ps(m, (const float *)wrow + c);
}

static inline __attribute__((always_inline)) void fl_row(const void *wrow, int half, size_t cols, const float *x,
							 size_t t0, int T, float *out)
{
	__m512 acc[TILE];
#pragma GCC unroll 4
	for (int k = 0; k < T; k++)
		acc[k] = _mm512_setzero_ps();
	size_t c = 0;
	for (; c + 16 <= cols; c += 16) {
		if (!half || c % 32 == 0)
			moe_prefetch_ahead((const uint8_t *)wrow + c * (half ? 2 : 4), 64);
		const __m512 wv = half ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)wrow + c)))
				       : _mm512_loadu_ps((const float *)wrow + c);
#pragma GCC unroll 4
		for (int k = 0; k < T; k++)
			acc[k] = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + (t0 + (size_t)k) * cols + c), acc[k]);
	}
	if (c < cols) {
		const __mmask16 m = (__mmask16)((1u << (cols - c)) - 1);
		const __m512 wv = fl_load(wrow, half, c, m);
#pragma GCC unroll 4
		for (int k = 0; k < T; k++)
			acc[k] = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, x + (t0 + (size_t)k) * cols + c), acc[k]);
	}
#pragma GCC unroll 4
	for (int k = 0; k < T; k++)
		out[k] = _mm512_reduce_add_ps(acc[k]);
}

static void fl(const struct moe_wmat *w, int half, size_t r0, size_t r1, const float *x, size_t batch, float *y,
	       size_t ystride)
{
	const size_t cols = w->cols;
	for (size_t r = r0; r < r1; r++) {
		const void *wrow = half ? (const void *)((const uint16_t *)w->codes + r * cols)
					: (const void *)((const float *)w->codes + r * cols);
		TOKEN_TILES(0, batch, fl_row, wrow, half, cols, x);
	}
}

static void f16(const struct moe_wmat *w, size_t r0, size_t r1, const float *x, size_t batch, float *y, size_t ystride)
{
	fl(w, 1, r0, r1, x, batch, y, ystride);
}

static void f32(const struct moe_wmat *w, size_t r0, size_t r1, const float *x, size_t batch, float *y, size_t ystride)
{
	fl(w, 0, r0, r1, x, batch, y, ystride);
}

static void halves(const uint16_t *h, size_t n, float *out)
{
	size_t i = 0;
	for (; i + 16 <= n; i += 16)
		_mm512_storeu_ps(out + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + i))));
	for (; i < n; i++)
		out[i] = _cvtsh_ss(h[i]);
}

#if defined(__clang__)
#pragma clang attribute pop
#endif
/* q4: avx2.c's (see the top); every AVX-512 VNNI CPU has AVX2, FMA and F16C */
static void q4(const struct moe_wmat *w, size_t r0, size_t r1, const struct moe_qact *a, float *y, size_t ystride)
{
	moe_kernels_avx2.q4(w, r0, r1, a, y, ystride);
}

const struct moe_kernel_impl moe_kernels_avx512 = {"avx512", available, q8, q4, x86_blocks, f16, f32, halves};
#endif
