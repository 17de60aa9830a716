/* avx2.c - AVX2 + FMA + F16C kernels (Haswell and later, Zen). q8: |w| times
 * sign-adjusted x with vpmaddubsw; q4: nibbles (0..15) times x, minus 8 * sum(x). */
#include "kernels/kernels.h"

#if defined(__x86_64__)
#include <cpuid.h>
/* this file's functions may use these instructions (GCC and clang spell it apart) */
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC target("avx2,fma,f16c")
#endif
#include <immintrin.h>

#include "kernels/blocks_x86.h"

static int available(void)
{
	unsigned a, b, c, d; /* F16C from CPUID leaf 1: clang's __builtin_cpu_supports lacks it */
	__builtin_cpu_init();
	return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __get_cpuid(1, &a, &b, &c, &d) &&
	       (c & bit_F16C);
}

static inline float hsum(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

#define TILE 4 /* tokens sharing one pass over a weight row */

/* One row against T tokens; T is a constant in each instantiation so acc stays in registers. */
static inline __attribute__((always_inline)) void q8_row(const int8_t *wr, const uint16_t *sr, size_t nb,
							 const struct moe_qact *a, size_t t0, int T, float *out)
{
	const size_t cols = a->cols;
	const __m256i ones = _mm256_set1_epi16(1);
	__m256 acc[TILE];
#pragma GCC unroll 4
	for (int k = 0; k < T; k++)
		acc[k] = _mm256_setzero_ps();
	for (size_t b = 0; b < nb; b++) {
		const __m256i wv = _mm256_loadu_si256((const __m256i *)(wr + b * 32));
		const __m256i aw = _mm256_sign_epi8(wv, wv);
		const float dw = _cvtsh_ss(sr[b]);
#pragma GCC unroll 4
		for (int k = 0; k < T; k++) {
			const __m256i xv = _mm256_loadu_si256((const __m256i *)(a->q + (t0 + k) * cols + b * 32));
			const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(xv, wv)), ones);
			acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(dw * a->d[(t0 + k) * nb + b]), _mm256_cvtepi32_ps(p), acc[k]);
		}
	}
#pragma GCC unroll 4
	for (int k = 0; k < T; k++)
		out[k] = hsum(acc[k]);
}

static inline __attribute__((always_inline)) void q4_row(const uint8_t *wr, const uint16_t *sr, size_t nb,
							 const struct moe_qact *a, size_t t0, int T, float *out)
{
	const size_t cols = a->cols;
	const __m256i ones = _mm256_set1_epi16(1), m4 = _mm256_set1_epi8(15);
	__m256 acc[TILE];
	float corr[TILE] = {0};
#pragma GCC unroll 4
	for (int k = 0; k < T; k++)
		acc[k] = _mm256_setzero_ps();
	for (size_t b = 0; b < nb; b++) {
		const __m128i raw = _mm_loadu_si128((const __m128i *)(wr + b * 16));
		/* low lane: weights 0..15 (low nibbles), high lane: 16..31 (high nibbles) */
		const __m256i u = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), m4);
		const float dw = _cvtsh_ss(sr[b]);
#pragma GCC unroll 4
		for (int k = 0; k < T; k++) {
			const __m256i xv = _mm256_loadu_si256((const __m256i *)(a->q + (t0 + k) * cols + b * 32));
			const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(u, xv), ones);
			acc[k] = _mm256_fmadd_ps(_mm256_set1_ps(dw * a->d[(t0 + k) * nb + b]), _mm256_cvtepi32_ps(p), acc[k]);
			corr[k] += dw * a->ds[(t0 + k) * nb + b];
		}
	}
#pragma GCC unroll 4
	for (int k = 0; k < T; k++)
		out[k] = hsum(acc[k]) - 8.0f * corr[k];
}

#define TOKEN_TILES(ROW, wr, sr)                                                               \
	for (size_t t0 = 0; t0 < a->batch; t0 += TILE) {                                       \
		float out[TILE];                                                               \
		const size_t T = a->batch - t0 < TILE ? a->batch - t0 : TILE;                  \
		switch (T) {                                                                   \
		case 1: ROW(wr, sr, nb, a, t0, 1, out); break;                                 \
		case 2: ROW(wr, sr, nb, a, t0, 2, out); break;                                 \
		case 3: ROW(wr, sr, nb, a, t0, 3, out); break;                                 \
		default: ROW(wr, sr, nb, a, t0, 4, out); break;                                \
		}                                                                              \
		for (size_t k = 0; k < T; k++)                                                 \
			y[(t0 + k) * ystride + r] = out[k];                                    \
	}

static void q8(const struct moe_wmat *w, size_t r0, size_t r1, const struct moe_qact *a, float *y, size_t ystride)
{
	const size_t nb = w->cols / 32;
	for (size_t r = r0; r < r1; r++) {
		const int8_t *wr = (const int8_t *)w->codes + r * w->cols;
		const uint16_t *sr = w->scales + r * nb;
		TOKEN_TILES(q8_row, wr, sr)
	}
}

static void q4(const struct moe_wmat *w, size_t r0, size_t r1, const struct moe_qact *a, float *y, size_t ystride)
{
	const size_t nb = w->cols / 32;
	for (size_t r = r0; r < r1; r++) {
		const uint8_t *wr = (const uint8_t *)w->codes + r * (w->cols / 2);
		const uint16_t *sr = w->scales + r * nb;
		TOKEN_TILES(q4_row, wr, sr)
	}
}

/* float weights: 8 columns at a time, scalar tail; TILE tokens per pass */
static inline __attribute__((always_inline)) void fl_row(const void *wrow, int half, size_t cols, const float *x,
							 size_t t0, int T, float *out)
{
	__m256 acc[TILE];
#pragma GCC unroll 4
	for (int k = 0; k < T; k++)
		acc[k] = _mm256_setzero_ps();
	size_t c = 0;
	for (; c + 8 <= cols; c += 8) {
		const __m256 wv = half ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)wrow + c)))
				       : _mm256_loadu_ps((const float *)wrow + c);
#pragma GCC unroll 4
		for (int k = 0; k < T; k++)
			acc[k] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + (t0 + k) * cols + c), acc[k]);
	}
#pragma GCC unroll 4
	for (int k = 0; k < T; k++) {
		float s = hsum(acc[k]);
		for (size_t cc = c; cc < cols; cc++)
			s += (half ? _cvtsh_ss(((const uint16_t *)wrow)[cc]) : ((const float *)wrow)[cc]) * x[(t0 + k) * cols + cc];
		out[k] = s;
	}
}

static void fl(const struct moe_wmat *w, int half, size_t r0, size_t r1, const float *x, size_t batch, float *y,
	       size_t ystride)
{
	const size_t cols = w->cols;
	for (size_t r = r0; r < r1; r++) {
		const void *wrow = half ? (const void *)((const uint16_t *)w->codes + r * cols)
					: (const void *)((const float *)w->codes + r * cols);
		for (size_t t0 = 0; t0 < batch; t0 += TILE) {
			float out[TILE];
			const size_t T = batch - t0 < TILE ? batch - t0 : TILE;
			switch (T) {
			case 1: fl_row(wrow, half, cols, x, t0, 1, out); break;
			case 2: fl_row(wrow, half, cols, x, t0, 2, out); break;
			case 3: fl_row(wrow, half, cols, x, t0, 3, out); break;
			default: fl_row(wrow, half, cols, x, t0, 4, out); break;
			}
			for (size_t k = 0; k < T; k++)
				y[(t0 + k) * ystride + r] = out[k];
		}
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

#if defined(__clang__)
#pragma clang attribute pop
#endif
const struct moe_kernel_impl moe_kernels_avx2 = {"avx2", available, q8, q4, x86_blocks, f16, f32};
#endif
